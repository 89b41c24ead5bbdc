"""The contract between the generic training engine and one model family.

The engine only ever talks to this protocol; everything that differs between ModelScope,
CogVideoX and AnimateDiff (components, latent layout, scheduler, objective, pipeline, what is
trainable) lives behind it in that family's module.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable

import torch
from torch import nn


@runtime_checkable
class VideoModel(Protocol):
    #: "modelscope" | "cogvideox" | "animatediff"
    family: str
    #: The network that is fine-tuned. The engine replaces it with the module returned by
    #: ``accelerator.prepare`` so the family's loss runs through DDP/autocast wrappers.
    denoiser: nn.Module

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Parameters the optimizer updates (LoRA adapters or the full denoiser/motion modules)."""

    def parameter_counts(self) -> dict[str, int]:
        """``{"trainable": n, "total": n}`` over every component (text encoder and VAE included)."""

    def place(self, device: torch.device, weight_dtype: torch.dtype, frozen_device=None) -> None:
        """Move components to ``device``; frozen weights in ``weight_dtype``, trainable ones in fp32.
        ``frozen_device`` keeps the text encoder and VAE elsewhere (CPU offload)."""

    def enable_memory_savers(self, *, gradient_checkpointing: bool, vae_slicing: bool, vae_tiling: bool) -> None:
        """Turn on the memory knobs of the ``gpu`` config group."""

    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        """Text-encoder hidden states for the denoiser's cross-attention, ``[B, L, D]``."""

    def encode_videos(self, videos: torch.Tensor) -> torch.Tensor:
        """Pixel videos ``[B, F, C, H, W]`` in [-1, 1] -> scaled latents in the family's layout."""

    def training_loss(
        self, latents: torch.Tensor, prompt_embeds: torch.Tensor, generators: list[torch.Generator]
    ) -> torch.Tensor:
        """Diffusion loss on one batch; sample i's timestep and noise come from ``generators[i]``."""

    def generate(
        self,
        prompts: list[str],
        *,
        num_inference_steps: int,
        guidance_scale: float,
        generator: torch.Generator,
    ) -> torch.Tensor:
        """Sample videos with the family's diffusers pipeline: ``[B, F, C, H, W]`` floats in [0, 1]."""

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Exactly the trainable weights (what a checkpoint must restore)."""

    def load_trainable_state_dict(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Inverse of :meth:`trainable_state_dict`; raises on missing or unexpected keys."""

    def export(self, out_dir: Path) -> None:
        """Write final weights in diffusers format (LoRA for ``load_lora_weights``, else ``save_pretrained``)."""
