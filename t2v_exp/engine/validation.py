"""Validation sampling: the family's diffusers pipeline -> mp4 files in the run dir -> W&B."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import torch

log = logging.getLogger(__name__)


def slug(text: str, limit: int = 40) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")[:limit] or "empty"


def validation_prompts(configured: list[str], captions: list[str], count: int) -> list[str]:
    if configured:
        return list(configured)[:count] if count else list(configured)
    unique = list(dict.fromkeys(captions))
    if not unique:
        raise ValueError("No validation prompts: set validation.prompts='[a prompt]' (the dataset has no captions)")
    return unique[:count]


def to_uint8_frames(video: torch.Tensor) -> torch.Tensor:
    """[F, C, H, W] in [0, 1] -> [F, H, W, 3] uint8."""
    return (video.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def generate_samples(model, prompts: list[str], out_dir: Path, *, num_inference_steps: int, guidance_scale: float,
                     seed: int, fps: int, autocast) -> dict[str, Path]:
    """Validation videos, generated and written exactly as evaluation does (prompt i from seed + i)."""
    from ..evaluation import generate_videos, write_videos

    videos = generate_videos(model, prompts, seed=seed, num_inference_steps=num_inference_steps,
                             guidance_scale=guidance_scale, autocast=autocast)
    names = write_videos(videos, prompts, out_dir, fps)
    return {Path(name).stem: out_dir / name for name in names}
