"""Typed schemas for every config group, registered in Hydra's ConfigStore.

Types are enforced by OmegaConf when Hydra composes, so ``train.max_steps=abc`` or an unknown
key fails at startup naming the key. Checks that need more than a type (ranges, combinations,
hardware) live in :func:`validate`, which runs before any model weights are loaded.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import MISSING, DictConfig, OmegaConf, open_dict

from .errors import ConfigError
from .help import CONF_DIR, help_text


class Finetune(str, Enum):
    lora = "lora"
    full = "full"


class LatentSampling(str, Enum):
    mode = "mode"  # the VAE posterior's mean: deterministic latents
    sample = "sample"  # a fresh draw from the posterior every step, as the reference trainers do


class MixedPrecision(str, Enum):
    no = "no"
    fp16 = "fp16"
    bf16 = "bf16"


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class LrSchedule(str, Enum):
    constant = "constant"
    linear = "linear"
    cosine = "cosine"


class NonFinitePolicy(str, Enum):
    skip = "skip"  # skip the update, count it, stop after max_nonfinite_in_a_row in a row
    stop = "stop"  # stop at the first non-finite step


class WandbMode(str, Enum):
    auto = "auto"  # online when logged in, else offline
    online = "online"
    offline = "offline"
    disabled = "disabled"


@dataclass
class LoraConfig:
    rank: int = 16
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0"])
    scope: str | None = None


@dataclass
class OptimizerDefaults:
    """What one fine-tune mode of a family trains at unless ``optimizer.lr`` / ``weight_decay`` say otherwise."""

    lr: float = MISSING
    weight_decay: float = MISSING


@dataclass
class OptimizerDefaultsByMode:
    """The family's reference trainers' settings per ``model.finetune`` (each family YAML cites its source)."""

    lora: OptimizerDefaults = field(default_factory=OptimizerDefaults)
    full: OptimizerDefaults = field(default_factory=OptimizerDefaults)


@dataclass
class ModelConfig:
    _target_: str = MISSING
    name: str = MISSING
    family: str = MISSING
    pretrained: str = MISSING
    finetune: Finetune = Finetune.lora
    lora: LoraConfig = field(default_factory=LoraConfig)
    num_frames: int = 16
    height: int = 256
    width: int = 256
    fps: int = 8
    caption_dropout: float = 0.0
    num_inference_steps: int = 25
    guidance_scale: float = 7.5
    # final/ always holds the diffusers export; "comfyui" adds final/comfyui/*.safetensors (LoRA only,
    # families whose module lists it in EXPORT_FORMATS: Wan, Wan 2.2, AnimateDiff)
    export_formats: list[str] = field(default_factory=lambda: ["diffusers"])
    # mode: train on the VAE posterior's mean (the latent cache then equals on-the-fly encoding exactly);
    # sample: draw from the posterior every step (the latent cache stores mean and std)
    latent_sampling: LatentSampling = LatentSampling.mode
    # conf/optimizer/*.yaml take optimizer.lr / weight_decay from here for the chosen finetune mode
    optimizer_defaults: OptimizerDefaultsByMode = field(default_factory=OptimizerDefaultsByMode)


@dataclass
class OptimizerConfig:
    _target_: str = MISSING
    lr: float = MISSING  # conf/optimizer/*.yaml: the family's default for the finetune mode
    weight_decay: float = MISSING
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8


@dataclass
class PrecisionConfig:
    mixed_precision: MixedPrecision = MixedPrecision.no
    allow_tf32: bool = True


@dataclass
class GpuConfig:
    name: str = "cpu"
    device: Device = Device.auto
    batch_size: int = 1
    gradient_accumulation_steps: int = 1
    gradient_checkpointing: bool = False
    vae_slicing: bool = False
    vae_tiling: bool = False
    cpu_offload: bool = False  # keep the text encoder and VAE on the CPU between uses
    memory_gb: float | None = None  # the card's memory (python -m t2v_exp.preflight gives a fits / does not fit verdict)
    num_workers: int = 0
    pin_memory: bool = False


@dataclass
class LoggerConfig:
    backend: str = "wandb"  # wandb | none
    mode: WandbMode = WandbMode.auto
    project: str = "t2v_exp"
    entity: str | None = None
    group: str | None = None
    tags: list[str] = field(default_factory=list)
    name: str | None = None


@dataclass
class TrainLoopConfig:
    max_steps: int = 100
    lr_schedule: LrSchedule = LrSchedule.cosine
    warmup_steps: int = 0
    max_grad_norm: float = 1.0
    log_every: int = 1
    checkpoint_every: int = 0  # 0: only at the end
    keep_last: int = 2
    validate_every: int = 0  # 0: only at the end
    evaluate_at_end: bool = False
    evaluate_base: bool = False  # score the untouched base model into eval_base/ before step 1
    # What the entrypoint returns (e.g. for the Optuna sweeper): "final_loss" or
    # "<metric>/<score>" from the end-of-training evaluation, e.g. "temporal/temporal_ssim".
    objective: str = "final_loss"
    # Stop this invocation after N steps (checkpoint saved; LR schedule still spans max_steps),
    # e.g. to fit a cluster time slot; continue later with resume=latest. 0: run to max_steps.
    stop_after_steps: int = 0
    nonfinite: NonFinitePolicy = NonFinitePolicy.skip
    max_nonfinite_in_a_row: int = 5


@dataclass
class ValidationConfig:
    prompts: list[str] = field(default_factory=list)  # empty: the first dataset captions
    num_videos: int = 2
    num_inference_steps: int = 25
    guidance_scale: float = 6.0
    seed: int = 1234
    enabled: bool = True


@dataclass
class EvalSettings:
    """What to generate and how to score it (``evaluation.*`` in train.yaml, top level in evaluate.yaml)."""

    # [auto]: temporal, FVD when the videos have its 16 frames (detector fetched by `make install`),
    # shapes_oracle for shapes prompts; weight-file metrics are opt-in (t2v_exp.scoring.evaluation.resolve_metrics).
    metrics: list[str] = field(default_factory=lambda: ["auto"])
    num_videos: int = 16  # videos in all (N of FVD): num_videos / seeds_per_prompt prompts
    # 1: the prompt is the unit of every interval, so a video budget buys most precision as prompts.
    seeds_per_prompt: int = 1  # video i: prompt i // seeds_per_prompt, seed + i; same list across models
    seed: int = 0
    num_inference_steps: int = 25
    guidance_scale: float = 6.0
    split: str = "validation"  # dataset split for prompts and reference clips
    prompts: str | None = None  # a .txt (one prompt per line) or .jsonl ({"prompt": ...}) file
    metric_settings: dict[str, Any] = field(default_factory=dict)  # metric_settings.<metric>.<field>
    # The one score the comparison makes a claim about (metric/score), declared before the run; every
    # other score is exploratory. auto: shapes_oracle/direction_ok, else clip_score/clip_sim, else fvd/fvd.
    primary: str = "auto"


@dataclass
class PathsConfig:
    cache_dir: str = "${oc.env:T2V_EXP_CACHE,${oc.env:HOME}/.cache/t2v_exp}"
    # None only where Hydra has no run dir: `--cfg job --resolve` prints the config without starting a job
    output_dir: str | None = "${hydra:runtime.output_dir}"


@dataclass
class TrainConfig:
    model: ModelConfig = MISSING
    dataset: Any = MISSING
    optimizer: OptimizerConfig = MISSING
    precision: PrecisionConfig = MISSING
    gpu: GpuConfig = MISSING
    logger: LoggerConfig = MISSING
    train: TrainLoopConfig = field(default_factory=TrainLoopConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    evaluation: EvalSettings = field(default_factory=EvalSettings)
    seed: int = 42
    resume: str | None = None  # "auto", "latest", or a checkpoint / run directory (see conf/train.yaml)
    sweep_resume: bool = True  # a rerun multirun skips completed jobs and resumes interrupted ones
    push_to_hub: bool = False  # upload final/ (weights + model card) to hub_repo_id at the end
    hub_repo_id: str | None = None


@dataclass
class EvaluateConfig(EvalSettings):
    model: ModelConfig = MISSING
    dataset: Any = MISSING
    precision: PrecisionConfig = MISSING
    gpu: GpuConfig = MISSING
    logger: LoggerConfig = MISSING
    paths: PathsConfig = field(default_factory=PathsConfig)
    run_dir: str | None = None  # evaluate this training run (its model, weights and dataset)
    checkpoint: str | None = None  # a specific checkpoint dir of run_dir (default: the newest)
    videos: str | None = None  # score the mp4/webm files of this folder instead of generating
    reference: str | None = None  # folder of reference videos (FVD) for videos=...
    baseline: str | None = None  # an earlier eval dir: paired deltas with CIs; refused when not comparable
    allow_skipped: bool = False  # exit 0 even when a requested metric was skipped or failed


@dataclass
class GenerateConfig:
    """``python -m t2v_exp.generate``: a run (run_dir=) or a base model (model=), prompts, seeds, sampler."""

    model: ModelConfig = MISSING
    dataset: Any = None  # replaced by the run's with run_dir=; generation itself reads no data
    precision: PrecisionConfig = MISSING
    gpu: GpuConfig = MISSING
    paths: PathsConfig = field(default_factory=PathsConfig)
    run_dir: str | None = None  # generate from this training run (its model and newest checkpoint)
    checkpoint: str | None = None  # a specific checkpoint dir of run_dir
    prompt: str | None = None  # one prompt
    prompts: str | None = None  # or a .txt / .jsonl file of prompts
    seed: int = 0  # video j of prompt i uses seed + i * seeds_per_prompt + j
    seeds_per_prompt: int = 1
    num_inference_steps: int = 25
    guidance_scale: float = 6.0
    num_frames: int | None = None  # within the family's rules (e.g. CogVideoX: 4k+1)
    height: int | None = None
    width: int | None = None
    strip_frames: int = 4  # frames side by side in each video's PNG strip


def subject_name(run_dir: str | None, model_name: str, dataset_name: str) -> str:
    """What an evaluation or generation is of, for its directory and W&B run name: the training run
    it was given (``run_dir=``), else the model and dataset."""
    return Path(str(run_dir)).name if run_dir else f"{model_name}_{dataset_name}"


def register_configs() -> None:

    OmegaConf.register_new_resolver("t2v_subject", subject_name, replace=True)
    OmegaConf.register_new_resolver("t2v_help", help_text, replace=True)
    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainConfig)
    cs.store(name="evaluate_schema", node=EvaluateConfig)
    cs.store(name="generate_schema", node=GenerateConfig)
    # deferred: the model registry imports every family (torch, diffusers), and the data package's
    from .models.registry import register_model_schemas  # import PyAV: reading a config must not pay for them

    register_model_schemas(cs)
    from .data.schemas import register_dataset_schemas  # deferred: as above (t2v_exp.data loads torch)

    register_dataset_schemas(cs)



def compose_job_config(overrides=(), run_dir=None, config_name: str = "train") -> DictConfig:
    """Compose ``conf/<config_name>.yaml`` in-process the way ``@hydra.main`` hands it to a job:
    HydraConfig set (so ``${hydra:...}`` resolves, with ``run_dir`` as the output dir), the
    ``hydra`` node removed. For notebooks, tests and benchmarks."""
    register_configs()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose(config_name=config_name, overrides=list(overrides), return_hydra_config=True)
    finally:
        GlobalHydra.instance().clear()
    if run_dir is not None:
        with open_dict(cfg):
            cfg.hydra.runtime.output_dir = str(run_dir)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


def _positive(key: str, value, example) -> None:
    if value is None or not value > 0 or value == float("inf"):  # NaN fails `> 0` too
        raise ConfigError(f"{key}={value} must be a finite number > 0, e.g. {key}={example}")


SEED_RANGE = (0, 2**32 - 1)  # numpy's seeding range: the data order and the shapes data derive from the seed
# Sanity bounds, far above what any family's checkpoints train at: a typo such as model.num_frames=100000 fails here instead of allocating for minutes. Each
# family module checks its own multiples and lower bounds.
MAX_FRAMES, MAX_SIDE = 1024, 4096
# Schema-less sections where any key is accepted (they are handed to a metric/dataset as is).
FREE_FORM_KEYS = ("evaluation.metric_settings",)


def _at_least(key: str, value, low: int, example, meaning: str = "") -> None:
    if value is None or not value >= low:  # NaN fails `>=` too
        note = f" ({meaning})" if meaning else ""
        raise ConfigError(f"{key}={value} must be >= {low}{note}, e.g. {key}={example}")


def _finite_at_least(key: str, value, low: float, example, meaning: str = "") -> None:
    if value is None or not low <= value < float("inf"):
        note = f" ({meaning})" if meaning else ""
        raise ConfigError(f"{key}={value} must be a finite number >= {low}{note}, e.g. {key}={example}")


def _fraction(key: str, value, example, *, include_one: bool) -> None:
    inside = value is not None and (0.0 <= value <= 1.0 if include_one else 0.0 <= value < 1.0)
    if not inside:  # NaN is outside every interval
        raise ConfigError(f"{key}={value} must be in [0, 1{']' if include_one else ')'}, e.g. {key}={example}")


def validate_optimizer(optimizer) -> None:
    """Settings every optimizer here takes (AdamW, AdamW8bit), checked before the model loads."""
    _positive("optimizer.lr", optimizer.lr, 1e-4)
    _finite_at_least("optimizer.weight_decay", optimizer.weight_decay, 0.0, 0.01)
    _positive("optimizer.eps", optimizer.eps, 1e-8)
    betas = list(optimizer.betas)
    if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
        raise ConfigError(f"optimizer.betas={betas} must be two numbers in [0, 1), e.g. optimizer.betas='[0.9,0.999]'")


EXPORT_FORMATS = ("diffusers", "comfyui")


# A full fine-tune above this multiple of its family's full-mode learning rate is running at a
# LoRA-sized rate: LoRA's low-rank update tolerates ~10x the rate that full weights do.
LORA_SIZED_LR_FACTOR = 10.0


def full_finetune_lr_warning(cfg: DictConfig) -> str | None:
    """A warning when ``model.finetune=full`` trains at a LoRA-sized learning rate, else None."""
    if cfg.model.finetune != Finetune.full:
        return None
    reference = float(cfg.model.optimizer_defaults.full.lr)
    lr = float(cfg.optimizer.lr)
    if lr <= LORA_SIZED_LR_FACTOR * reference:
        return None
    return (f"model.finetune=full at optimizer.lr={lr:g}, {lr / reference:.0f}x the {cfg.model.name} full "
            f"fine-tune default ({reference:g}, model.optimizer_defaults.full.lr): a LoRA-sized rate on every "
            f"weight of the base tends to wipe out what it knew. Unless that is the intent, drop the "
            f"optimizer.lr override (the default then applies) or set optimizer.lr={reference:g}")


def validate_export_formats(model) -> None:
    """What final/ holds besides the diffusers export, which evaluation and the model card read."""
    formats = list(model.get("export_formats") or [])
    example = "model.export_formats='[diffusers,comfyui]'"
    unknown = [f for f in formats if f not in EXPORT_FORMATS]
    if unknown:
        raise ConfigError(f"model.export_formats={formats}: unknown {unknown}; valid: {list(EXPORT_FORMATS)}, "
                          f"e.g. {example}")
    if "diffusers" not in formats:
        raise ConfigError(f"model.export_formats={formats} must include diffusers (evaluation, resume and the "
                          f"model card read final/ in that format), e.g. {example}")
    if "comfyui" in formats and enum_value(model.finetune) != Finetune.lora.value:
        raise ConfigError(f"model.export_formats has comfyui, a LoRA layout, but model.finetune={enum_value(model.finetune)}; "
                          f"use model.finetune=lora or model.export_formats='[diffusers]'")


def mixed_precision_dtype(mixed_precision: str):
    """The torch dtype of frozen weights and autocast for precision.mixed_precision (no | fp16 | bf16)."""
    import torch  # deferred: reading and checking a config must not cost a torch import

    return {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[mixed_precision]


def enum_value(value):
    """A structured config's enum field as its plain string (other values unchanged)."""
    return getattr(value, "value", value)


def validate_geometry(family: str, frames: int, height: int, width: int, where: str) -> None:
    """Upper bounds of the family's clip shape (the family module checks multiples and lower bounds)."""
    if frames > MAX_FRAMES:
        raise ConfigError(f"{where}num_frames={frames} is more than {family} takes here (at most {MAX_FRAMES}), "
                          f"e.g. model.num_frames=16")
    for side, value in (("height", height), ("width", width)):
        if value > MAX_SIDE:
            raise ConfigError(f"{where}{side}={value} is more than {family} takes here (at most {MAX_SIDE} "
                              f"pixels), e.g. model.{side}=256")


def validate_dataset_settings(dataset) -> None:
    """Sampling settings of the dataset group that would otherwise train silently on wrong data."""
    stride = dataset.get("frame_stride")
    if stride is not None and stride < 1:  # -2 used to repeat one frame, 0 to crash in the decoder
        raise ConfigError(f"dataset.frame_stride={stride} must be >= 1 (every k-th source frame) or null "
                          f"(sample at dataset.fps), e.g. dataset.frame_stride=2")
    if "max_bad_fraction" in dataset:
        _fraction("dataset.max_bad_fraction", dataset.max_bad_fraction, 0.2, include_one=True)


def unknown_keys(node: DictConfig, prefix: str = "") -> list[tuple[str, list[str]]]:
    """Keys added with ``+`` that no schema declares: (dotted key, the section's valid keys).

    Hydra's ``+key=value`` adds keys even to typed sections, where they would be ignored
    silently (``+foo=1``) or crash a constructor after the model loaded (``+optimizer.foo=1``).
    Sections typed as plain dicts (``evaluation.metric_settings``) stay free-form.
    """
    kind = OmegaConf.get_type(node)
    declared = [f.name for f in dataclasses.fields(kind)] if dataclasses.is_dataclass(kind) else None
    found = []
    for key, child in node.items_ex(resolve=False):
        path = f"{prefix}{key}"
        if declared is not None and key not in declared:
            found.append((path, declared))
        elif isinstance(child, DictConfig):
            found += unknown_keys(child, f"{path}.")
    return found


def validate_known_keys(cfg: DictConfig) -> None:
    found = unknown_keys(cfg)
    if not found:
        return
    key, valid = found[0]
    section, _, leaf = key.rpartition(".")
    close = difflib.get_close_matches(leaf, valid, n=1)
    hint = f"did you mean {section + '.' if section else ''}{close[0]}? " if close else ""
    value = OmegaConf.select(cfg, key, throw_on_resolution_failure=False)
    raise ConfigError(
        f"Unknown key {key}={value} (added with '+'; no schema declares it): {hint}"
        f"valid keys of {section or 'the top level'}: {', '.join(valid)}. Free-form settings go under "
        f"{', '.join(FREE_FORM_KEYS)}, e.g. +evaluation.metric_settings.clip_score.model=/models/ViT-B-32.pt"
    )


def validate(cfg: DictConfig, *, cuda_available: bool | None = None) -> None:
    """Range and combination checks that types cannot express; cheap, runs before any load."""
    import torch  # deferred: checking a config must not import torch

    if cuda_available is None:
        cuda_available = torch.cuda.is_available()
    validate_known_keys(cfg)
    if cfg.get("push_to_hub") and not cfg.get("hub_repo_id"):
        raise ConfigError("push_to_hub=true needs hub_repo_id=<user or org>/<repo name>, e.g. hub_repo_id=me/my-lora")
    validate_optimizer(cfg.optimizer)
    _positive("train.max_steps", cfg.train.max_steps, 100)
    _positive("gpu.batch_size", cfg.gpu.batch_size, 1)
    _positive("gpu.gradient_accumulation_steps", cfg.gpu.gradient_accumulation_steps, 1)
    _positive("model.num_frames", cfg.model.num_frames, 16)
    _positive("model.height", cfg.model.height, 256)
    _positive("model.width", cfg.model.width, 256)
    _positive("model.fps", cfg.model.fps, 8)
    _positive("validation.num_inference_steps", cfg.validation.num_inference_steps, 25)
    if cfg.model.finetune == Finetune.lora:
        _positive("model.lora.rank", cfg.model.lora.rank, 16)
        _positive("model.lora.alpha", cfg.model.lora.alpha, 16)
        if not cfg.model.lora.target_modules:
            raise ConfigError("model.lora.target_modules is empty; e.g. [to_q,to_k,to_v,to_out.0]")
        _fraction("model.lora.dropout", cfg.model.lora.dropout, 0.05, include_one=False)
    validate_export_formats(cfg.model)
    if not 0.0 <= cfg.model.caption_dropout < 1.0:  # also rejects NaN
        raise ConfigError(f"model.caption_dropout={cfg.model.caption_dropout} must be in [0, 1), e.g. 0.1")
    if cfg.train.warmup_steps < 0:
        raise ConfigError(f"train.warmup_steps={cfg.train.warmup_steps} must be >= 0")
    if cfg.train.keep_last < 1:
        raise ConfigError(f"train.keep_last={cfg.train.keep_last} must be >= 1 (checkpoints to keep)")
    _at_least("train.log_every", cfg.train.log_every, 1, 10, "log every N steps")
    _at_least("train.checkpoint_every", cfg.train.checkpoint_every, 0, 500, "0: only at the end")
    _at_least("train.validate_every", cfg.train.validate_every, 0, 500, "0: only at the end")
    _at_least("train.stop_after_steps", cfg.train.stop_after_steps, 0, 1000, "0: run to train.max_steps")
    _at_least("train.max_nonfinite_in_a_row", cfg.train.max_nonfinite_in_a_row, 1, 5)
    _finite_at_least("train.max_grad_norm", cfg.train.max_grad_norm, 0.0, 1.0, "0 disables clipping")
    _at_least("validation.num_videos", cfg.validation.num_videos, 0, 2, "0: no validation videos")
    validate_primary("evaluation.primary", cfg.evaluation.primary)
    if not SEED_RANGE[0] <= cfg.seed <= SEED_RANGE[1]:
        raise ConfigError(f"seed={cfg.seed} must be in [{SEED_RANGE[0]}, {SEED_RANGE[1]}] (numpy's seed range), "
                          f"e.g. seed=42")
    validate_geometry(cfg.model.family, cfg.model.num_frames, cfg.model.height, cfg.model.width, "model.")
    for i, shape in enumerate(cfg.dataset.get("buckets") or []):
        if len(shape) == 3:  # the bucket parser names malformed entries itself
            validate_geometry(cfg.model.family, *shape, f"dataset.buckets[{i}]={list(shape)}: ")
    validate_dataset_settings(cfg.dataset)
    if int(cfg.dataset.get("cache_variants", 1)) < 1:
        raise ConfigError(f"dataset.cache_variants={cfg.dataset.cache_variants} must be >= 1 (cached samples per clip)")
    if cfg.gpu.num_workers < 0:
        raise ConfigError(f"gpu.num_workers={cfg.gpu.num_workers} must be >= 0")
    if cfg.logger.backend not in ("wandb", "none"):
        raise ConfigError(f"logger.backend={cfg.logger.backend} must be wandb or none")
    device = resolve_device(cfg.gpu.device, cuda_available)
    if device == "cuda" and not cuda_available:
        raise ConfigError("gpu.device=cuda but no CUDA device is visible; use gpu=cpu (or gpu.device=cpu)")
    if device == "cpu" and cfg.precision.mixed_precision == MixedPrecision.fp16:
        raise ConfigError("precision=fp16 needs a CUDA GPU; on the CPU use precision=fp32 or precision=bf16")


def validate_primary(key: str, value: str) -> None:
    """``evaluation.primary``: auto or metric/score of a known metric. A typo would otherwise leave the
    comparison without a primary and every score merely exploratory, silently."""
    from .metrics.suite import METRIC_NAMES  # deferred: the metrics package imports torch

    metric, _, score = str(value).partition("/")
    if value != "auto" and (metric not in METRIC_NAMES or not score):
        raise ConfigError(f"{key}={value} must be auto or <metric>/<score> with a metric of {list(METRIC_NAMES)}, "
                          f"e.g. {key}=shapes_oracle/direction_ok or {key}=clip_score/clip_sim")


def validate_eval(cfg: DictConfig, *, cuda_available: bool | None = None) -> None:
    """The subset of :func:`validate` that applies to generation-only evaluation."""
    import torch  # deferred: checking a config must not import torch

    if cuda_available is None:
        cuda_available = torch.cuda.is_available()
    _positive("num_videos", cfg.num_videos, 8)
    _positive("num_inference_steps", cfg.num_inference_steps, 25)
    validate_primary("primary", cfg.primary)
    from .metrics.suite import METRIC_NAMES  # deferred: the metrics package imports torch

    unknown = [m for m in cfg.metrics if m not in METRIC_NAMES]
    if unknown:
        raise ConfigError(f"metrics has unknown {unknown}; valid: {list(METRIC_NAMES)}")
    device = resolve_device(cfg.gpu.device, cuda_available)
    if device == "cuda" and not cuda_available:
        raise ConfigError("gpu.device=cuda but no CUDA device is visible; use gpu=cpu (or gpu.device=cpu)")
    if device == "cpu" and cfg.precision.mixed_precision == MixedPrecision.fp16:
        raise ConfigError("precision=fp16 needs a CUDA GPU; on the CPU use precision=fp32 or precision=bf16")


def resolve_device(device: Device | str, cuda_available: bool) -> str:
    device = str(enum_value(device))
    if device == "auto":
        return "cuda" if cuda_available else "cpu"
    return device
