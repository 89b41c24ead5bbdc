"""Validation sampling: the family's diffusers pipeline -> mp4 files in the run dir -> W&B."""

from __future__ import annotations

import logging
from pathlib import Path

from ..scoring.sampling import generate_videos, write_videos

log = logging.getLogger(__name__)


def validation_prompts(configured: list[str], captions: list[str], count: int) -> list[str]:
    if configured:
        return list(configured)[:count] if count else list(configured)
    unique = list(dict.fromkeys(captions))
    if not unique:
        raise ValueError("No validation prompts: set validation.prompts='[a prompt]' (the dataset has no captions)")
    return unique[:count]


def generate_samples(model, prompts: list[str], out_dir: Path, *, num_inference_steps: int, guidance_scale: float,
                     seed: int, fps: int, autocast) -> list[tuple[str, Path]]:
    """Validation videos, generated and written exactly as evaluation does (prompt i from seed + i):
    (prompt, file) in prompt order."""
    videos = generate_videos(model, prompts, seed=seed, num_inference_steps=num_inference_steps,
                             guidance_scale=guidance_scale, autocast=autocast)
    names = write_videos(videos, prompts, out_dir, fps)
    return [(prompt, out_dir / name) for prompt, name in zip(prompts, names, strict=True)]
