"""Synthetic "shapes" videos: a seeded, fully known data set for offline runs and oracle metrics.

Each clip shows one shape (circle, square, triangle) of one colour moving in one direction at
one speed on a plain background; the caption says exactly that ("a red circle moving left
quickly") and a sidecar records the truth, including the centre position in every frame.
Domains are disjoint slices (colours x directions), so fine-tuning from one domain to another
is a real, measurable experiment.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from ..quiet import progress
from .video_io import write_video

BACKGROUND = (235, 235, 235)
PALETTE = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (225, 195, 30)}
SHAPES = ("circle", "square", "triangle")
DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
# Fraction of the frame's short side per frame. Large enough that an 8-frame, 32-pixel clip moves the
# shape by 2-3 latent cells of a 4x-compressing VAE: slower motion is below what the tiny models (and
# the eye) can tell from jitter. Longer clips are slowed down just enough to keep the path in frame.
SPEEDS = {"slowly": 0.03, "quickly": 0.06}
DOMAINS = {
    "horizontal": {"colors": ("red", "green"), "directions": ("left", "right")},
    "vertical": {"colors": ("blue", "yellow"), "directions": ("up", "down")},
    "all": {"colors": tuple(PALETTE), "directions": tuple(DIRECTIONS)},
    # The default fine-tuning experiment: the tiny pretrained bases know horizontal motion in every
    # colour (domain A); fine-tuning teaches them vertical motion (domain B), which they never saw.
    "horizontal_motion": {"colors": tuple(PALETTE), "directions": ("left", "right")},
    "vertical_motion": {"colors": tuple(PALETTE), "directions": ("up", "down")},
}
# Part of the cache key: bumped when the bytes of the clips change, so older sets are regenerated
# (2: single-threaded x264, byte-identical on any machine and CPU count).
GENERATOR_VERSION = "3"  # 3: twice the speeds (tiny models could not see the old motion)


def caption(shape: str, color: str, direction: str, speed: str) -> str:
    return f"a {color} {shape} moving {direction} {speed}"


def shape_mask(shape: str, height: int, width: int, cx: float, cy: float, radius: float) -> np.ndarray:
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32) + 0.5
    dx, dy = xs - cx, ys - cy
    if shape == "circle":
        return dx**2 + dy**2 <= radius**2
    if shape == "square":
        return (np.abs(dx) <= radius * 0.85) & (np.abs(dy) <= radius * 0.85)
    # upward triangle: inside when below the two slanted edges and above the base
    return (dy <= radius * 0.8) & (dy >= -radius) & (np.abs(dx) <= (dy + radius) * 0.6)


def render_clip(shape: str, color: str, direction: str, speed: str, *, num_frames: int, height: int, width: int,
                rng: np.random.Generator) -> tuple[np.ndarray, list[list[float]]]:
    radius = max(2.0, min(height, width) / 6)
    vx, vy = DIRECTIONS[direction]
    room = (width if vx else height) - 2 * radius  # the longest path that stays inside the frame
    step = min(SPEEDS[speed] * min(height, width), room / max(1, num_frames - 1))
    travel = step * (num_frames - 1)
    # Start where the whole path stays inside the frame.
    x_lo = radius + max(0.0, -vx * travel)
    x_hi = width - radius - max(0.0, vx * travel)
    y_lo = radius + max(0.0, -vy * travel)
    y_hi = height - radius - max(0.0, vy * travel)
    x0 = rng.uniform(x_lo, max(x_lo, x_hi))
    y0 = rng.uniform(y_lo, max(y_lo, y_hi))
    frames = np.empty((num_frames, height, width, 3), dtype=np.uint8)
    positions = []
    for t in range(num_frames):
        cx, cy = x0 + vx * step * t, y0 + vy * step * t
        frame = np.empty((height, width, 3), dtype=np.uint8)
        frame[:] = BACKGROUND
        frame[shape_mask(shape, height, width, cx, cy, radius)] = PALETTE[color]
        frames[t] = frame
        positions.append([round(cx, 3), round(cy, 3)])
    return frames, positions


def dataset_dir(root: str | os.PathLike, **params) -> Path:
    key = json.dumps({"version": GENERATOR_VERSION, **params}, sort_keys=True)
    return Path(root) / f"{params['domain']}-{hashlib.sha1(key.encode()).hexdigest()[:10]}"


def generate_shapes(root: str | os.PathLike, *, num_videos: int, num_frames: int, height: int, width: int,
                    fps: int, domain: str, seed: int) -> Path:
    """Write the clips + ``metadata.jsonl`` once per parameter set; reuse a complete earlier copy.

    Generated in a temporary directory and renamed, so an interrupted run never leaves a partial
    set that a later run would trust.
    """
    if domain not in DOMAINS:
        raise ValueError(f"dataset.domain={domain!r}; valid: {sorted(DOMAINS)}")
    params = dict(num_videos=num_videos, num_frames=num_frames, height=height, width=width, fps=fps,
                  domain=domain, seed=seed)
    target = dataset_dir(root, **params)
    if (target / "metadata.jsonl").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".shapes-", dir=target.parent))
    try:
        rng = np.random.default_rng(seed)
        spec = DOMAINS[domain]
        combos = [(s, c, d, v) for s in SHAPES for c in spec["colors"] for d in spec["directions"] for v in SPEEDS]
        order = rng.permutation(len(combos))
        (staging / "videos").mkdir()
        lines = []
        for i in progress(range(num_videos), desc="generate shapes clips (once)", unit="clip", leave=False):
            shape, color, direction, speed = combos[order[i % len(combos)]]
            frames, positions = render_clip(shape, color, direction, speed, num_frames=num_frames,
                                            height=height, width=width, rng=rng)
            name = f"videos/{i:05d}.mp4"
            write_video(staging / name, frames, fps=fps)
            lines.append(json.dumps({
                "file": name, "caption": caption(shape, color, direction, speed), "shape": shape, "color": color,
                "direction": direction, "speed": speed, "fps": fps, "positions": positions,
            }))
        # metadata.jsonl is the completion marker: written last, and only then is the folder renamed.
        (staging / "metadata.jsonl").write_text("\n".join(lines) + "\n")
        if target.exists() and not (target / "metadata.jsonl").is_file():
            # A folder without the marker is debris (a copy cut short, an older layout): replace it
            # rather than fail forever on a rename over a non-empty directory.
            debris = target.with_name(f".{target.name}.stale{os.getpid()}")
            try:
                target.rename(debris)
            except OSError:
                pass  # another process moved it away first
            else:
                shutil.rmtree(debris, ignore_errors=True)
        try:
            staging.rename(target)
        except OSError:
            # Another process (another rank) finished the same set first: use theirs.
            if not (target / "metadata.jsonl").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def read_metadata(directory: str | os.PathLike) -> list[dict]:
    path = Path(directory) / "metadata.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
