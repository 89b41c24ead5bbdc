"""Before the loop: check the run, then build (and on resume, restore) the parts the Trainer takes.

``validate_run`` is every check that reads only configs and JSON (no weights): the config
schema, the family's geometry and precision rules, export formats, buckets and what
text-encoder LoRA cannot be combined with. ``build_parts`` then loads data and model, builds the
optimizer, restores a checkpoint when resuming, and starts tracking.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from .. import config as config_schema
from ..config import LatentSampling, mixed_precision_dtype
from ..data.buckets import parse_buckets
from ..errors import ConfigError
from ..models import resolve_and_validate
from ..models.protocol import VideoModel
from .batches import BatchStream, DataPosition, instantiate_dataset
from .checkpoint import TrainState, fingerprint, flat_settings
from .latent_cache import CachedLatents, LatentCache, cached_prompts
from .optim import build_lr_scheduler
from .resume import Restored, bring_base_evaluation, choose_checkpoints, resume
from .tracking import Tracker, redact

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CheckedRun:
    """What ``validate_run`` found: the family's adapter class, its checkpoint roots, the precision."""

    model_cls: type
    roots: Any
    mixed_precision: str


@dataclass
class TrainingParts:
    """Everything the loop works on, ready-built. Tests and benchmarks build their own."""

    accelerator: Any
    model: VideoModel
    dataset: Any
    optimizer: torch.optim.Optimizer
    lr_scheduler: Any
    batches: Any  # an iterable of batches with a ``position`` (BatchStream)
    tracker: Any  # Tracker, or anything with log / log_videos / summary / finish
    weight_dtype: torch.dtype
    fingerprint: dict
    flat_settings: dict
    restored: Restored
    cache: Any = None  # the LatentCache when training from cached latents
    trains_text_encoder: bool = False
    param_counts: dict | None = None

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process


def validate_run(cfg: DictConfig, num_processes: int | None = None) -> CheckedRun:
    """Every check that needs no weights, in one place, before anything heavy loads."""
    config_schema.validate(cfg)
    lr_warning = config_schema.full_finetune_lr_warning(cfg)
    if lr_warning:
        log.warning("%s", lr_warning)
    mixed = str(config_schema.enum_value(cfg.precision.mixed_precision))
    model_cls, roots = resolve_and_validate(cfg.model, cfg.paths.cache_dir, mixed)  # geometry, precision, exports
    validate_buckets(cfg, model_cls, roots)
    if cfg.model.get("text_encoder_lora"):
        refuse_with_text_encoder_lora(cfg, num_processes or int(os.environ.get("WORLD_SIZE", "1")))
    return CheckedRun(model_cls, roots, mixed)


def validate_buckets(cfg: DictConfig, model_cls, roots) -> None:
    """Every ``dataset.buckets`` shape must be one the model takes, checked like model.num_frames/height/width."""
    buckets = cfg.dataset.get("buckets")
    if buckets is None:
        return
    try:
        parsed = parse_buckets(OmegaConf.to_container(buckets))
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    for i, (frames, height, width) in enumerate(parsed):
        shaped = OmegaConf.merge(cfg.model, {"num_frames": frames, "height": height, "width": width})
        try:
            model_cls.validate(shaped, roots)
        except ConfigError as exc:
            raise ConfigError(f"dataset.buckets[{i}]=[{frames}, {height}, {width}] does not suit {cfg.model.name}: "
                              f"{exc}") from None


def refuse_with_text_encoder_lora(cfg: DictConfig, num_processes: int) -> None:
    """What model.text_encoder_lora cannot be combined with (yet), before anything is encoded."""
    if str(cfg.dataset.get("cache", "none")) == "latents":
        raise ConfigError("model.text_encoder_lora=true trains the text encoder, so prompt embeddings cannot be "
                          "cached: use dataset.cache=none (or model.text_encoder_lora=false)")
    if num_processes > 1:
        raise ConfigError("model.text_encoder_lora=true runs in one process only: the text encoder is not wrapped "
                          "for gradient averaging across processes; drop it or train on one GPU")


def require_writable(run_dir: Path) -> None:
    """Fail in the first second, not at the first checkpoint an hour later."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / f".write-test-{os.getpid()}"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"The run directory {run_dir} is not writable ({exc.strerror}); "
                          f"choose another with hydra.run.dir=/path/with/space") from exc


def build_parts(cfg: DictConfig, run_dir: Path, checked: CheckedRun) -> TrainingParts:
    """Accelerator, data, model, optimizer; the checkpoint to continue restored into them; tracking."""
    from accelerate.utils import set_seed  # deferred: accelerate; train --help imports this module

    accelerator = make_accelerator(cfg, run_dir, checked.mixed_precision)
    set_seed(cfg.seed)
    run_fingerprint = fingerprint(cfg, accelerator.num_processes)
    # Which checkpoint to continue, chosen from state.json files before any weights load.
    candidates = choose_checkpoints(cfg.resume, run_dir, f"_{cfg.model.name}_{cfg.dataset.name}", run_fingerprint)
    dataset = instantiate_dataset(cfg.dataset, split="train", report_dir=str(run_dir))
    model = checked.model_cls(cfg.model, checked.roots)
    model.enable_memory_savers(gradient_checkpointing=cfg.gpu.gradient_checkpointing,
                               vae_slicing=cfg.gpu.vae_slicing, vae_tiling=cfg.gpu.vae_tiling)
    weight_dtype = mixed_precision_dtype(checked.mixed_precision)
    model.place(accelerator.device, weight_dtype, "cpu" if cfg.gpu.cpu_offload else None)
    cache = None
    if str(cfg.dataset.get("cache", "none")) == "latents":
        dataset, cache = use_latent_cache(cfg, model, dataset, accelerator)
    counts = model.parameter_counts()
    param_counts = {**counts, "trainable_pct": 100.0 * counts["trainable"] / max(1, counts["total"])}
    log.info("Parameters: %s trainable of %s total (%.3f%%)", f"{counts['trainable']:,}",
             f"{counts['total']:,}", param_counts["trainable_pct"])
    optimizer = instantiate(cfg.optimizer, params=model.trainable_parameters(), _convert_="all")
    lr_scheduler = build_lr_scheduler(optimizer, schedule=str(config_schema.enum_value(cfg.train.lr_schedule)),
                                      warmup_steps=cfg.train.warmup_steps, max_steps=cfg.train.max_steps)
    model.denoiser, optimizer = accelerator.prepare(model.denoiser, optimizer)
    settings = flat_settings(cfg)
    restored = Restored()
    if candidates:
        restored = resume(candidates, explicit=str(cfg.resume) not in ("latest", "auto"), model=model,
                          optimizer=optimizer, lr_scheduler=lr_scheduler, scaler=accelerator.scaler,
                          optimizer_cfg=cfg.optimizer, flat_settings=settings)
        if accelerator.is_main_process and cfg.train.evaluate_base and restored.resumed_from:
            bring_base_evaluation(Path(restored.resumed_from).parent.parent, run_dir)
    state = restored.state
    batches = BatchStream(dataset, batch_size=cfg.gpu.batch_size, seed=cfg.seed, rank=accelerator.process_index,
                          world_size=accelerator.num_processes, num_workers=cfg.gpu.num_workers,
                          pin_memory=cfg.gpu.pin_memory, start=DataPosition(state.epoch, state.batch_in_epoch))
    tracker = start_tracking(cfg, run_dir, accelerator.is_main_process, restored)
    tracker.summary({"params/" + k: v for k, v in param_counts.items()})
    return TrainingParts(accelerator=accelerator, model=model, dataset=dataset, optimizer=optimizer,
                         lr_scheduler=lr_scheduler, batches=batches, tracker=tracker, weight_dtype=weight_dtype,
                         fingerprint=run_fingerprint, flat_settings=settings, restored=restored, cache=cache,
                         trains_text_encoder=bool(cfg.model.get("text_encoder_lora")), param_counts=param_counts)


def make_accelerator(cfg: DictConfig, run_dir: Path, mixed_precision: str):
    from accelerate import Accelerator  # deferred: accelerate; train --help imports this module

    device = config_schema.resolve_device(cfg.gpu.device, torch.cuda.is_available())
    reset_single_process_accelerate_state()
    accelerator = Accelerator(mixed_precision=mixed_precision,
                              gradient_accumulation_steps=cfg.gpu.gradient_accumulation_steps,
                              cpu=device == "cpu", project_dir=str(run_dir))
    if device == "cuda" and cfg.precision.allow_tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return accelerator


def use_latent_cache(cfg: DictConfig, model, dataset, accelerator):
    """Encode (or reuse) every clip and prompt once; training then reads the cache, with the VAE
    and text encoder off the accelerator. Returns (the cached dataset, the cache)."""
    root = Path(cfg.paths.cache_dir) / "latent_cache"
    dataset_cfg = OmegaConf.to_container(cfg.dataset, resolve=True)
    sampled = LatentSampling(config_schema.enum_value(cfg.model.latent_sampling)) == LatentSampling.sample
    cache = LatentCache(root, model, dataset_cfg, posteriors=sampled)
    if accelerator.is_main_process:
        cache.build(dataset, cached_prompts(dataset), device=accelerator.device)
    accelerator.wait_for_everyone()
    if not accelerator.is_main_process:  # other ranks read what rank 0 wrote
        cache.build(dataset, cached_prompts(dataset), device=accelerator.device)
    cached = CachedLatents(dataset, cache, cfg.seed)
    if not cfg.gpu.cpu_offload:
        _move_frozen(model, torch.device("cpu"))
    return cached, cache


@contextlib.contextmanager
def frozen_on_accelerator(cfg: DictConfig, parts: TrainingParts):
    """VAE and text encoder back on the accelerator for a block that samples (a cached run keeps
    them on the CPU while training), all ranks waiting at both ends."""
    accelerator = parts.accelerator
    accelerator.wait_for_everyone()
    moved = parts.cache is not None and not cfg.gpu.cpu_offload
    if moved:
        _move_frozen(parts.model, accelerator.device)
    try:
        yield
    finally:
        if moved:
            _move_frozen(parts.model, torch.device("cpu"))
        accelerator.wait_for_everyone()


def _move_frozen(model, target: torch.device) -> None:
    for module in (model.vae, model.text_encoder):
        module.to(target)
    if target.type == "cpu" and torch.cuda.is_available():
        torch.cuda.empty_cache()


def start_tracking(cfg: DictConfig, run_dir: Path, is_main: bool, restored: Restored) -> Tracker:
    """Write the resolved config (``evaluate run_dir=`` reads it back) and start W&B, continuing
    the resumed run's W&B run."""
    container = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    if is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(redact(container)))
    return Tracker(run_dir, logger_cfg=cfg.logger, config=container, enabled=is_main,
                   extra_tags=[cfg.model.name, cfg.dataset.name], run_id=restored.wandb_run_id)


def reset_single_process_accelerate_state() -> None:
    """Let a second job in the same process choose its own precision.

    accelerate keeps one AcceleratorState per process and refuses a different mixed precision
    later (in-process sweeps, notebooks, tests). Outside a distributed launch nothing else
    depends on that state, so it is safe to drop; under ``accelerate launch`` it is left alone.
    """
    # deferred: accelerate; train --help imports this module
    from accelerate.state import AcceleratorState, GradientState, PartialState

    if PartialState._shared_state and PartialState().num_processes == 1:
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()


__all__ = ["CheckedRun", "TrainState", "TrainingParts", "build_parts", "frozen_on_accelerator", "validate_run"]
