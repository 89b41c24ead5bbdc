"""Wan 2.2 A14B text-to-video: Wan 2.1's pipeline, encoders and VAE with two denoising experts.

``transformer`` (the high-noise expert) denoises the steps with ``t >= boundary_ratio * 1000``,
``transformer_2`` (low noise) the rest; ``WanPipeline`` switches between them at ``boundary_ratio``
(model_index.json: 0.875 for T2V A14B). Both are ``WanTransformer3DModel`` with patch (1, 2, 2); the
published repo's scheduler is the same UniPC flow-prediction scheduler as Wan 2.1's (wan.py).

**Training.** ``model.experts`` names the experts to fine-tune (``[high, low]``, ``[high]`` or ``[low]``);
any other stays frozen and only samples. Each trained expert learns only the noise levels it serves:
``FlowMatchingObjective(sigma_range=...)`` maps its sigmas into ``[boundary, 1)`` (high) or
``[0, boundary)`` (low). Every step, every trained expert gets its own draw on the same clips -- sigma,
then noise, from the sample generators, high expert first -- so draws are deterministic and do not
depend on how a batch is split; the loss is the mean of the experts' losses, and each expert's
gradient comes only from its own term. Training both experts on every step (rather than one chosen
per step) means every trainable weight gets a gradient on every step: DDP's all-reduce (no
``find_unused_parameters``) never waits on an idle expert, and AdamW never moves an idle expert on
stale momentum. Per expert the work per training sample is what training it alone costs; a step with
both experts is two transformer passes.

**One denoiser.** The engine prepares (DDP), checkpoints and counts one ``denoiser`` module:
``WanExperts`` holds both experts under the pipeline's component names, so trainable state-dict keys
read ``transformer.<...>`` (high) and ``transformer_2.<...>`` (low).

**Export** (``model.finetune=lora``): one standard diffusers LoRA directory per trained expert, named
after the pipeline component it loads into::

    <dir>/transformer/pytorch_lora_weights.safetensors      # high-noise expert
    <dir>/transformer_2/pytorch_lora_weights.safetensors    # low-noise expert

    pipe = WanPipeline.from_pretrained("Wan-AI/Wan2.2-T2V-A14B-Diffusers", torch_dtype=torch.bfloat16)
    pipe.load_lora_weights("<dir>/transformer")
    pipe.load_lora_weights("<dir>/transformer_2", load_into_transformer_2=True)

A directory per expert keeps each file the plain ``transformer.``-prefixed format the loader expects, and
no ``load_lora_weights(<dir>)`` can silently load one expert's LoRA into the other. ``load_pipeline``
does the above. ``model.finetune=full`` writes ``<dir>/transformer/`` and/or ``<dir>/transformer_2/`` with
``save_pretrained`` instead.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..errors import ConfigError
from . import comfyui, common, wan
from .lora import load_lora_state_dict, lora_settings, lora_state_dict
from .spec import FamilySpec

log = logging.getLogger(__name__)

FAMILY = "wan22"
SUBFOLDERS = ["transformer/*", "transformer_2/*", *wan.PIPELINE_PARTS]
#: model.experts name -> pipeline component, in the order the pipeline uses them (high noise first).
EXPERTS = {"high": "transformer", "low": "transformer_2"}
#: ComfyUI file name suffix per expert (its Wan 2.2 workflows load a high- and a low-noise LoRA).
COMFYUI_SUFFIX = {"transformer": "high_noise", "transformer_2": "low_noise"}
LORA_FILE = "pytorch_lora_weights.safetensors"  # what WanPipeline.save_lora_weights writes
#: The T2V A14B split (diffusers' convert_wan_to_diffusers.py; Wan2.2's t2v_A14B config).
PUBLISHED_BOUNDARY_RATIO = 0.875


@dataclass
class Config(wan.Config):
    """model.* for wan22: Wan 2.1's schema plus the experts and their split."""

    family: str = FAMILY
    experts: list[str] = field(default_factory=lambda: ["high", "low"])  # which experts to fine-tune
    boundary_ratio: float | None = None  # null: the checkpoint's model_index.json (0.875 for T2V A14B)
    guidance_scale_2: float | None = None  # CFG of the low-noise expert; null: guidance_scale


class WanExperts(nn.Module):
    """Both experts as the one module the engine prepares; attribute names are the pipeline's."""

    _supports_gradient_checkpointing = True  # read by common.adapter_enable_memory_savers

    def __init__(self, transformer: nn.Module, transformer_2: nn.Module):
        super().__init__()
        self.transformer = transformer
        self.transformer_2 = transformer_2

    def forward(self, inputs: dict[str, dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """``{expert: transformer kwargs}`` -> ``{expert: prediction}``: one call for all experts of a
        step, so DDP sees one forward per backward."""
        return {name: getattr(self, name)(**kwargs, return_dict=False)[0] for name, kwargs in inputs.items()}

    def enable_gradient_checkpointing(self) -> None:
        self.transformer.enable_gradient_checkpointing()
        self.transformer_2.enable_gradient_checkpointing()


# -- settings, from the config and the JSON files only -----------------------------------------


def trained_experts(cfg) -> list[str]:
    """Pipeline component names of ``model.experts``, in pipeline order."""
    chosen = list(cfg.experts)
    unknown = [e for e in chosen if e not in EXPERTS]
    if not chosen or unknown or len(set(chosen)) != len(chosen):
        raise ConfigError(f"model.experts={chosen} must name distinct experts out of {list(EXPERTS)} "
                          f"(high: t >= boundary, low: below), e.g. model.experts='[high,low]' or model.experts='[low]'")
    return [component for expert, component in EXPERTS.items() if expert in chosen]


def boundary_ratio(cfg, root: str) -> float:
    value = cfg.boundary_ratio
    if value is None:
        value = wan.read_json(root, "model_index.json").get("boundary_ratio")
        if value is None:
            raise ConfigError(f"model.pretrained={cfg.pretrained} declares no boundary_ratio in model_index.json; "
                              f"set it, e.g. model.boundary_ratio={PUBLISHED_BOUNDARY_RATIO}")
    if not 0 < value < 1:
        raise ConfigError(f"model.boundary_ratio={value} must be in (0, 1) (the share of the timestep range "
                          f"above which the high-noise expert denoises), e.g. model.boundary_ratio=0.875")
    return float(value)


def validate_settings(cfg) -> None:
    wan.validate_settings(cfg)
    trained_experts(cfg)
    if cfg.guidance_scale_2 is not None and not 0 <= cfg.guidance_scale_2 < float("inf"):
        raise ConfigError(f"model.guidance_scale_2={cfg.guidance_scale_2} must be a finite number >= 0 or null "
                          f"(= guidance_scale), e.g. model.guidance_scale_2=3.0")


# -- the tiny twin and the stock pipeline --------------------------------------------------------


def build_tiny(out_dir: Path) -> None:
    """A tiny random two-expert WanPipeline (2.2 A14B layout); the experts differ (seeds 0 and 1), so a
    test can tell which one ran."""
    # deferred: diffusers (~1.5 s); reading the family's spec (train --help) must not load it
    from diffusers import WanPipeline

    parts = wan.tiny_pipeline_parts(out_dir)
    torch.manual_seed(0)
    high = wan.tiny_transformer()
    torch.manual_seed(1)
    low = wan.tiny_transformer()
    WanPipeline(**parts, transformer=high, transformer_2=low, boundary_ratio=PUBLISHED_BOUNDARY_RATIO).save_pretrained(
        out_dir, safe_serialization=True)


def resolve_checkpoint(pretrained: str, cache_dir: str | None) -> str:
    return wan.resolve_checkpoint(pretrained, cache_dir, what="Wan 2.2", allow_patterns=SUBFOLDERS,
                                  builders=SPEC.tiny_builders)


def load_pipeline(pretrained: str, lora_dir: str | None = None, torch_dtype=torch.float32,
                  boundary_ratio: float | None = None):
    """The stock two-expert WanPipeline of a checkpoint (hub id, directory or tiny:wan22) with our export
    applied: ``<lora_dir>/transformer[_2]/`` LoRAs through ``load_lora_weights`` (the low-noise one with
    ``load_into_transformer_2=True``), or full fine-tuned experts swapped in. ``boundary_ratio``
    overrides the checkpoint's split (pass what model.boundary_ratio trained with)."""
    # deferred: diffusers (~1.5 s); reading the family's spec (train --help) must not load it
    from diffusers import WanPipeline, WanTransformer3DModel

    root = resolve_checkpoint(pretrained, None)
    export = Path(lora_dir) if lora_dir else None
    extra = {} if boundary_ratio is None else {"boundary_ratio": boundary_ratio}
    loras = []
    for component in EXPERTS.values():
        if export and (export / component / "config.json").is_file():
            extra[component] = WanTransformer3DModel.from_pretrained(export / component, torch_dtype=torch_dtype)
        elif export and (export / component / LORA_FILE).is_file():
            loras.append(component)
    if export and not loras and not set(EXPERTS.values()) & set(extra):
        raise FileNotFoundError(f"{export} holds no Wan 2.2 export: expected transformer/ and/or transformer_2/, "
                                f"each with {LORA_FILE} (LoRA) or config.json (full fine-tune)")
    pipe = WanPipeline.from_pretrained(root, torch_dtype=torch_dtype, **extra)
    for component in loras:
        pipe.load_lora_weights(str(export / component), load_into_transformer_2=component == "transformer_2")
    return pipe


# -- the adapter --------------------------------------------------------------------------------


class Wan22Model(wan.WanModel):
    """Wan 2.1's adapter with two experts: what differs is the denoiser, the loss, the weights and export."""

    family = FAMILY

    @staticmethod
    def resolve(cfg, cache_dir: str | None) -> str:
        (root,) = common.resolve_all(cfg, [lambda: resolve_checkpoint(cfg.pretrained, cache_dir)])
        return root

    @staticmethod
    def validate(cfg, root: str) -> None:
        validate_settings(cfg)
        wan.validate_scheduler(root)
        missing = [c for c in EXPERTS.values() if c not in wan.experts_in(root)]
        if missing:
            raise ConfigError(f"model.pretrained={cfg.pretrained} has no {' or '.join(missing)} (Wan 2.2 A14B has "
                              f"two experts); a one-transformer Wan checkpoint trains with model=wan")
        boundary_ratio(cfg, root)
        for component in EXPERTS.values():
            wan.validate_geometry(cfg, root, component)

    def __init__(self, cfg, root: str):
        self.cfg = cfg
        self.root = root
        dtype = common.LOAD_DTYPES[cfg.load_dtype]
        self.load_shared_parts(root, dtype)
        self.boundary_ratio = boundary_ratio(cfg, root)
        self.denoiser = WanExperts(*(wan.load_transformer(root, c, dtype) for c in EXPERTS.values()))
        common.freeze(self.denoiser)
        self.lora = lora_settings(cfg.lora) if cfg.finetune == "lora" else None
        self.trained = trained_experts(cfg)
        for component in self.trained:
            wan.make_trainable(getattr(self.denoiser, component), self.lora, cfg.export_formats)
        self.denoiser.train()
        b = self.boundary_ratio
        ranges = {"transformer": (b, 1.0), "transformer_2": (0.0, b)}
        self.objectives = {c: wan.flow_objective(cfg, self.scheduler, ranges[c]) for c in EXPERTS.values()}

    def experts(self) -> dict[str, nn.Module]:
        container = common.unwrap(self.denoiser)
        return {component: getattr(container, component) for component in EXPERTS.values()}

    def training_loss(self, latents, prompt_embeds, generators, experts: list[str] | None = None):
        """Mean over the trained experts (or ``experts``, component names) of each one's flow-matching
        loss on its own noise range."""
        names = [c for c in EXPERTS.values() if c in (experts or self.trained)]
        draws = {c: self.objectives[c].draw(latents, generators) for c in names}
        predictions = self.denoiser({
            c: dict(hidden_states=d.noisy, timestep=d.timesteps, encoder_hidden_states=prompt_embeds)
            for c, d in draws.items()
        })
        return torch.stack([self.objectives[c].loss(predictions[c], d) for c, d in draws.items()]).mean()

    def pipeline(self):
        pipe = super().pipeline()
        pipe.register_to_config(boundary_ratio=self.boundary_ratio)
        return pipe

    def generation_kwargs(self) -> dict:
        extra = {} if self.cfg.guidance_scale_2 is None else {"guidance_scale_2": self.cfg.guidance_scale_2}
        return {**super().generation_kwargs(), **extra}

    def stock_pipeline(self, lora_dir: str | None = None):
        return load_pipeline(self.root, lora_dir, boundary_ratio=self.boundary_ratio)

    def trainable_state_dict(self):
        if not self.lora:
            return common.full_state_dict(common.unwrap(self.denoiser))
        experts = self.experts()
        return {f"{c}.{key}": value for c in self.trained for key, value in lora_state_dict(experts[c]).items()}

    def load_trainable_state_dict(self, state_dict):
        if not self.lora:
            common.load_full_state_dict(common.unwrap(self.denoiser), state_dict)
            return
        parts: dict[str, dict] = {c: {} for c in self.trained}
        for key, value in state_dict.items():
            component, _, rest = key.partition(".")
            if component not in parts:
                raise KeyError(f"LoRA weights for an expert this model does not train: {key} "
                               f"(model.experts={list(self.cfg.experts)})")
            parts[component][rest] = value
        experts = self.experts()
        for component, part in parts.items():
            load_lora_state_dict(experts[component], part)

    def export(self, out_dir: Path):
        experts = self.experts()
        for component in self.trained:
            wan.export_expert(experts[component], self.lora, Path(out_dir) / component, Path(out_dir) / component)
            if self.lora and "comfyui" in self.cfg.export_formats:  # ComfyUI loads one file per noise level
                name = f"{self.cfg.name}_{COMFYUI_SUFFIX[component]}.safetensors"
                wan.export_comfyui(experts[component], self.lora, Path(out_dir) / comfyui.DIRECTORY / name)


def objective_label(model: Wan22Model) -> str:
    """One flow-matching objective per expert, each on its own noise range: labelled once, with the count."""
    labels = sorted({objective.label for objective in model.objectives.values()})
    return f"{', '.join(labels)} ({len(model.objectives)} experts)"


SPEC = FamilySpec(
    name=FAMILY, config=Config, adapter=Wan22Model,
    objective_label=objective_label,
    export_formats=wan.SPEC.export_formats,
    base_license="apache-2.0",  # the model card's license when the checkpoint's own card does not say
    tiny_builders={"wan22": build_tiny},
    tiny_version=wan.SPEC.tiny_version,  # the twins share Wan 2.1's parts (wan.resolve_checkpoint builds with it)
    fitted_vaes={"wan_vae": wan.build_tiny_vae},
)
