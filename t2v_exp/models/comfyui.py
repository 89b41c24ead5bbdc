"""LoRA files in the layouts ComfyUI reads, written beside the diffusers export (``model.export_formats``).

peft names an adapter by its module in the diffusers model (``blocks.0.attn1.to_q.lora_A.weight``).
ComfyUI's loaders name modules as the original, non-diffusers checkpoints do, in two layouts:

* **ComfyUI's own LoRA loader** (Wan): ``diffusion_model.<original module>.lora_down.weight`` (A),
  ``.lora_up.weight`` (B) and a scalar ``.alpha``; the loader adds ``alpha / rank * B @ A`` to the
  module's weight, exactly peft's scaling, so A and B are written as trained.
* **AnimateDiff motion LoRAs** (the original AnimateDiff trainer's files, which
  ComfyUI-AnimateDiff-Evolved loads): ``<original motion module path>.processor.<proj>_lora.down.weight``
  and ``.up.weight``, no alpha: that loader adds ``up @ down`` unscaled, so ``alpha / rank`` is folded
  into ``up`` here.

A family supplies its renaming as ``(regex, replacement)`` rules that must match a whole diffusers
module name; a module no rule covers is an error before training starts (``check_names``), since
a LoRA file with an unmappable layer would be loaded only in part, silently.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from ..errors import ConfigError

DIRECTORY = "comfyui"  # final/comfyui/<file>.safetensors
Rules = Sequence[tuple[str, str]]


def lora_pairs(state_dict: dict[str, torch.Tensor]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{diffusers module name: (A [rank, in], B [out, rank])} from peft's ``<module>.lora_A/B.weight`` keys."""
    pairs = {}
    for key, down in state_dict.items():
        if key.endswith(".lora_A.weight"):
            module = key[: -len(".lora_A.weight")]
            up = state_dict.get(f"{module}.lora_B.weight")
            if up is None:
                raise KeyError(f"LoRA weights have {key} but no {module}.lora_B.weight")
            if down.ndim != 2:  # conv adapters have no equivalent in either layout
                raise ValueError(f"{module}: only Linear LoRA layers export to ComfyUI (got A of shape {tuple(down.shape)})")
            pairs[module] = (down, up)
    if not pairs:
        raise ValueError("no LoRA layers to export")
    return pairs


def original_name(module: str, rules: Rules) -> str | None:
    """The module's name in the original checkpoint, by the first rule matching all of it; None if none does."""
    for pattern, replacement in rules:
        if re.fullmatch(pattern, module):
            return re.sub(pattern, replacement, module)
    return None


def check_names(model: nn.Module, rules: Rules, what: str) -> None:
    """Every LoRA-adapted module of ``model`` must have an original name, else a ConfigError saying which."""
    adapted = sorted({name.rsplit(".lora_A", 1)[0] for name, _ in model.named_parameters() if ".lora_A." in name})
    unmapped = [name for name in adapted if original_name(name, rules) is None]
    if unmapped:
        raise ConfigError(
            f"model.export_formats has comfyui, but {len(unmapped)} LoRA layer(s) have no name in {what}'s "
            f"ComfyUI layout, e.g. {unmapped[0]}; narrow model.lora.target_modules (e.g. "
            f"model.lora.target_modules='[to_q,to_k,to_v,to_out.0]') or export diffusers only "
            f"(model.export_formats='[diffusers]')"
        )


def _renamed_pairs(state_dict, rules: Rules) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """[(original module name, A, B)] for every LoRA layer; a layer no rule names is an error."""
    renamed = []
    for module, (down, up) in lora_pairs(state_dict).items():
        name = original_name(module, rules)
        if name is None:
            raise ValueError(f"{module} has no name in the ComfyUI layout")
        renamed.append((name, down, up))
    return renamed


def _save(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().float().contiguous().cpu() for k, v in sorted(tensors.items())}, str(path),
              metadata={"format": "pt", **metadata})
    return path


def save_comfyui_lora(path: Path, state_dict: dict[str, torch.Tensor], rules: Rules, *, alpha: float,
                      prefix: str = "diffusion_model.") -> Path:
    """ComfyUI's own layout: ``<prefix><original>.lora_down.weight / .lora_up.weight / .alpha``."""
    tensors = {}
    for name, down, up in _renamed_pairs(state_dict, rules):
        tensors[f"{prefix}{name}.lora_down.weight"] = down
        tensors[f"{prefix}{name}.lora_up.weight"] = up
        tensors[f"{prefix}{name}.alpha"] = torch.tensor(float(alpha))
    return _save(Path(path), tensors, {"t2v_exp.layout": "comfyui", "t2v_exp.alpha": str(float(alpha))})


def save_motion_lora(path: Path, state_dict: dict[str, torch.Tensor], rules: Rules, *, alpha: float) -> Path:
    """The AnimateDiff motion-LoRA layout: ``<original path>.processor.<proj>_lora.down/up.weight``;
    the rules map a module to ``<original path>.processor.<proj>``; up carries alpha / rank."""
    tensors = {}
    for name, down, up in _renamed_pairs(state_dict, rules):
        tensors[f"{name}_lora.down.weight"] = down
        tensors[f"{name}_lora.up.weight"] = up * (float(alpha) / down.shape[0])
    return _save(Path(path), tensors, {"t2v_exp.layout": "animatediff_motion_lora"})
