"""Sampling shared by validation (during training) and evaluation: prompts + seeds -> videos -> mp4s.

Both paths generate and write videos the same way, so a validation sample and an evaluation
video of the same prompt and seed are the same file content.
"""

from __future__ import annotations

import re
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm


def slug(text: str, limit: int = 40) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")[:limit] or "empty"


def to_uint8_frames(video: torch.Tensor) -> torch.Tensor:
    """[F, C, H, W] in [0, 1] -> [F, H, W, 3] uint8."""
    return (video.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def generate_videos(model, prompts: list[str], *, seed: int = 0, num_inference_steps: int, guidance_scale: float,
                    autocast=nullcontext, seeds: list[int] | None = None) -> torch.Tensor:
    """Video i from ``seeds[i]`` (default ``seed + i``): the same prompt gets the same noise whatever
    the model or batch."""
    seeds = list(seeds) if seeds is not None else [seed + i for i in range(len(prompts))]
    videos = []
    denoiser = model.denoiser
    was_training = denoiser.training
    denoiser.eval()
    try:
        for prompt, video_seed in tqdm(list(zip(prompts, seeds, strict=True)), desc="generate", unit="video"):
            generator = torch.Generator().manual_seed(video_seed)
            with autocast():
                video = model.generate([prompt], num_inference_steps=num_inference_steps,
                                       guidance_scale=guidance_scale, generator=generator)[0]
            videos.append(video)
    finally:
        denoiser.train(was_training)
    return torch.stack(videos)  # [N, F, C, H, W] in [0, 1]


def write_videos(videos01: torch.Tensor, prompts: list[str], out_dir: Path, fps: int,
                 seeds: list[int] | None = None) -> list[str]:
    """Files named ``<index>_<prompt slug>[_seed<seed>].mp4``; the index is zero-padded so the
    sorted file order is the generation order."""
    # deferred: av (PyAV) via data.video_io; train --help imports this module
    from ..data.video_io import write_video

    out_dir.mkdir(parents=True, exist_ok=True)
    width = max(3, len(str(len(prompts) - 1)))
    names = []
    for i, (video, prompt) in enumerate(zip(videos01, prompts, strict=True)):
        name = f"{i:0{width}d}_{slug(prompt)}" + (f"_seed{seeds[i]}" if seeds is not None else "") + ".mp4"
        write_video(out_dir / name, to_uint8_frames(video).numpy(), fps=fps)
        names.append(name)
    return names


STRIP_MIN_HEIGHT = 128  # pixels; smaller frames are repeated (nearest neighbour) up to at least this


def frame_strip(video: torch.Tensor, count: int):
    """[F, C, H, W] in [0, 1] -> uint8 RGB image of ``count`` evenly spaced frames side by side."""
    frames = to_uint8_frames(video).numpy()
    picks = np.linspace(0, len(frames) - 1, num=min(count, len(frames))).round().astype(int)
    strip = np.concatenate([frames[i] for i in picks], axis=1)
    scale = max(1, STRIP_MIN_HEIGHT // strip.shape[0])  # tiny 32-pixel frames, enlarged to be seen
    return strip.repeat(scale, axis=0).repeat(scale, axis=1)


def decoded_frames(path: Path) -> torch.Tensor:
    """Every frame of a video file, [F, C, H, W] in [0, 1] (PyAV)."""
    import av  # deferred: av (PyAV); train --help imports this module

    with av.open(str(path)) as container:
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    return torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).float() / 255
