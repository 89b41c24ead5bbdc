"""The contract between the generic engine and one model family: everything the engine reads.

A family is one module declaring ``SPEC = FamilySpec(...)`` (spec.py) around an adapter class that
satisfies this protocol, plus a ``load_pipeline(pretrained, lora_dir=None, ...)`` returning the
family's stock diffusers pipeline. Everything that differs between families (components, latent
layout, scheduler, objective, pipeline, what is trainable, geometry rules) lives behind this protocol.

This protocol is what every adapter **must** implement: no member is optional, so the engine reads
each one directly and never asks an adapter whether it has a name. What a family **may** declare
(extra export formats, a precision check, tiny twins, published architectures, how its objective is
labelled) is a field of its ``FamilySpec`` with a default.

Construction is two-phase so a bad config fails before any weights load:
``roots = cls.resolve(cfg, cache_dir)`` finds (or builds, for tiny twins) the checkpoint,
``cls.validate(cfg, roots)`` checks geometry from its JSON configs, then ``cls(cfg, roots)``.
A family's ``FamilySpec.check_precision(cfg, roots, mixed_precision)`` (also JSON only) may refuse a
precision its checkpoint cannot run in (CogVideoX-5B in fp16).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn


@runtime_checkable
class VideoModel(Protocol):
    #: The family's name, as in its ``SPEC.name`` and the config's model.family (spec.spec_for reads it).
    family: str
    #: A substring every trainable parameter name contains (e.g. "motion_modules"), or None.
    trainable_scope: str | None
    #: The model config this adapter was built from (the family's Config schema).
    cfg: Any
    #: The network that is fine-tuned. The engine replaces it with the module returned by
    #: ``accelerator.prepare`` so the family's loss runs through DDP/autocast wrappers.
    denoiser: nn.Module
    #: Frozen components the engine places, offloads and fingerprints (latent/text caches).
    vae: nn.Module
    text_encoder: nn.Module
    tokenizer: Any
    #: The LoRA settings (config.LoraConfig) when fine-tuning with LoRA, else None.
    lora: Any
    #: The text encoder's LoRA settings when it trains too (``model.text_encoder_lora=true``, offered
    #: where ``FamilySpec.supports_text_encoder_lora``), else None (a class-level default).
    text_encoder_lora: Any
    #: The text length prompts are cut and padded to when the adapter sets it itself (it keys the
    #: latent cache's text entries); None where the tokenizer's own length applies.
    max_text_tokens: int | None
    #: What ``resolve`` returned and the adapter was built from: the checkpoint directory, or a
    #: tuple of them (AnimateDiff: SD1.5 base, motion adapter).
    roots: Any

    @staticmethod
    def resolve(cfg: Any, cache_dir: str | None) -> Any:
        """Local checkpoint location(s) for ``cfg`` (hub id, directory or ``tiny:<name>``)."""

    @staticmethod
    def validate(cfg: Any, roots: Any) -> None:
        """Geometry and compatibility checks from the checkpoint's JSON configs only; raises ConfigError."""

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
        """Pixel videos ``[B, F, C, H, W]`` in [-1, 1] -> scaled latents in the family's layout
        (the VAE posterior's mean)."""

    def encode_video_posteriors(self, videos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The same videos -> (mean, std) of the posterior in that latent space
        (``model.latent_sampling=sample`` draws from them); mean == ``encode_videos``."""

    def training_loss(
        self, latents: torch.Tensor, prompt_embeds: torch.Tensor, generators: list[torch.Generator]
    ) -> torch.Tensor:
        """Diffusion loss on one batch; sample i's timestep and noise come from ``generators[i]``."""

    def prompt_kwargs(self, embeds: torch.Tensor, negative: torch.Tensor | None) -> dict[str, Any]:
        """The stock pipeline's keywords for precomputed text states (``negative``: the empty prompt's,
        with classifier-free guidance); most families: common.prompt_embeds_kwargs."""

    def generation_kwargs(self) -> dict[str, Any]:
        """The geometry (and text-length) keyword arguments of the stock pipeline's call."""

    def stock_pipeline(self, lora_dir: str | None = None):
        """The family's stock diffusers pipeline from the same base weights (``load_pipeline``),
        with an exported LoRA loaded when ``lora_dir`` is given."""

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
