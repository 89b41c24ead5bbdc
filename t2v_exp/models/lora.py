"""LoRA on top of peft, the same way for every family."""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from ..config import LoraConfig, enum_value
from ..errors import ConfigError

# The attention projections of a CLIP text encoder (transformers' CLIPAttention), as ExponentialML's
# and diffusers' text-encoder LoRA training target them.
TEXT_ENCODER_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]


@dataclass
class TextEncoderLoraSettings:
    """``model.*`` key of the CLIP families (ModelScope, AnimateDiff): LoRA on the text encoder too."""

    text_encoder_lora: bool = False  # model.text_encoder_lora=true (same rank/alpha as model.lora)


def text_encoder_lora_settings(denoiser_settings: LoraConfig) -> LoraConfig:
    return replace(denoiser_settings, target_modules=list(TEXT_ENCODER_TARGETS), scope=None)


def validate_text_encoder_lora(cfg) -> None:
    if cfg.text_encoder_lora and str(enum_value(cfg.finetune)) != "lora":
        raise ConfigError("model.text_encoder_lora=true adds LoRA beside the denoiser's: it needs model.finetune=lora")


def lora_settings(node) -> LoraConfig:
    """Plain ``model.lora`` settings (the config schema's dataclass) from a DictConfig or dict."""
    values = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node)
    return LoraConfig(**values)


def target_pattern(settings: LoraConfig) -> str | list[str]:
    """peft ``target_modules``: a plain list, or a full-match regex when a scope narrows it."""
    if not settings.scope:
        return list(settings.target_modules)
    leaves = "|".join(re.escape(name) for name in settings.target_modules)
    return rf".*{re.escape(settings.scope)}.*\.({leaves})"


def peft_config(settings: LoraConfig):
    import peft  # deferred: peft (~2.8 s); train --help imports this module

    return peft.LoraConfig(
        r=settings.rank,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        init_lora_weights=True,
        target_modules=target_pattern(settings),
    )


def add_lora(model: nn.Module, settings: LoraConfig) -> None:
    """Freeze ``model`` and attach LoRA adapters (only they require grad afterwards)."""
    model.requires_grad_(False)
    model.add_adapter(peft_config(settings))
    adapted = [n for n, p in model.named_parameters() if p.requires_grad]
    if not adapted:
        raise ValueError(
            f"model.lora.target_modules={settings.target_modules} (scope={settings.scope!r}) matched no "
            f"module of {type(model).__name__}; valid examples: to_q, to_k, to_v, to_out.0"
        )


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter weights under diffusers' key names (what ``load_lora_weights`` expects)."""
    # deferred: peft (~2.8 s); train --help imports this module
    from peft.utils import get_peft_model_state_dict

    return {k: v.detach().clone().contiguous() for k, v in get_peft_model_state_dict(model).items()}


def load_lora_state_dict(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> None:
    # deferred: peft (~2.8 s); train --help imports this module
    from peft.utils import set_peft_model_state_dict

    result = set_peft_model_state_dict(model, state_dict)
    unexpected = getattr(result, "unexpected_keys", None) or []
    if unexpected:
        raise KeyError(f"LoRA weights with unexpected keys, e.g. {unexpected[:3]}")
    missing_lora = [k for k in (getattr(result, "missing_keys", None) or []) if "lora_" in k]
    if missing_lora:
        raise KeyError(f"LoRA weights missing keys, e.g. {missing_lora[:3]}")


def lora_metadata(settings: LoraConfig) -> dict:
    """The peft LoraConfig fields diffusers stores beside exported weights so loading needs no guessing."""
    cfg = peft_config(settings)
    return {
        "r": cfg.r,
        "lora_alpha": cfg.lora_alpha,
        "target_modules": sorted(cfg.target_modules) if isinstance(cfg.target_modules, set) else cfg.target_modules,
        "lora_dropout": cfg.lora_dropout,
    }
