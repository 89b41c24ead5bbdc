"""Shapes oracle: does a generated video show the colour and motion its prompt asked for?

Only meaningful for the synthetic shapes data (t2v_exp/data/shapes.py), where the background is
a known flat colour and each clip holds one shape of one palette colour moving along one axis.
Per frame, the shape is the set of pixels far from the background colour; its colour is the
palette entry nearest to the median foreground colour (the median ignores the half-blended edge
pixels that chroma subsampling smears around the shape); its direction is the dominant axis of
the centroid displacement from the first to the last frame where a shape was found. A video
with no detectable shape, or with a prompt naming no colour/direction, counts as wrong.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

import torch

from ..data.shapes import BACKGROUND, DIRECTIONS, PALETTE
from .detectors import as_float_videos


@dataclass
class ShapesOracleSettings:
    # Euclidean RGB distance (0-255 scale) above which a pixel is foreground. Every palette colour
    # is > 190 away from the background, codec noise on the flat background is < 20.
    foreground_distance: float = 60.0
    # Fewer foreground pixels than this fraction of the frame: no shape in that frame.
    min_foreground_fraction: float = 0.004
    # More than this: the background is not there (a shape covers ~10% of a frame), so no shape.
    max_foreground_fraction: float = 0.5
    # Centroid travel (fraction of the short side) below which the motion is "none" (wrong).
    min_displacement_fraction: float = 0.02


_WORD = re.compile(r"[a-z]+")
# axis_ok: the motion without its sign. A model can learn to move shapes vertically before it learns
# which of "up" / "down" the prompt says (AnimateDiff's motion LoRA never sees the prompt at all).
AXES = {"left": "horizontal", "right": "horizontal", "up": "vertical", "down": "vertical"}


def parse_prompt(prompt: str) -> tuple[str | None, str | None]:
    """Expected (colour, direction) named in the prompt, or None where it names none."""
    words = _WORD.findall(prompt.lower())
    color = next((w for w in words if w in PALETTE), None)
    direction = next((w for w in words if w in DIRECTIONS), None)
    return color, direction


def _frame_detections(video: torch.Tensor, settings: ShapesOracleSettings):
    """video: float [F, C, H, W] in [-1, 1] -> (centroids [(x, y) or None], median colour or None)."""
    pixels = (video.clamp(-1, 1) + 1) * 127.5  # [F, 3, H, W] on the 0-255 scale
    background = torch.tensor(BACKGROUND, dtype=pixels.dtype).view(1, 3, 1, 1)
    distance = (pixels - background).pow(2).sum(dim=1).sqrt()  # [F, H, W]
    mask = distance > settings.foreground_distance
    _, height, width = mask.shape
    min_pixels = max(3, int(settings.min_foreground_fraction * height * width))
    ys, xs = torch.meshgrid(torch.arange(height, dtype=torch.float32), torch.arange(width, dtype=torch.float32),
                            indexing="ij")
    centroids = []
    colours = []
    for frame_pixels, frame_mask in zip(pixels, mask, strict=True):
        count = int(frame_mask.sum())
        if count < min_pixels or count > settings.max_foreground_fraction * height * width:
            centroids.append(None)
            continue
        centroids.append((float(xs[frame_mask].mean()), float(ys[frame_mask].mean())))
        colours.append(frame_pixels[:, frame_mask])  # [3, count]
    if not colours:
        return centroids, None
    median_colour = torch.cat(colours, dim=1).median(dim=1).values
    return centroids, median_colour


def _nearest_palette_colour(colour: torch.Tensor) -> str:
    names = list(PALETTE)
    palette = torch.tensor([PALETTE[n] for n in names], dtype=torch.float32)
    return names[int((palette - colour.float()).pow(2).sum(dim=1).argmin())]


def _direction(centroids, min_travel: float) -> str | None:
    found = [c for c in centroids if c is not None]
    if len(found) < 2:
        return None
    dx, dy = found[-1][0] - found[0][0], found[-1][1] - found[0][1]
    if max(abs(dx), abs(dy)) < min_travel:
        return None
    if abs(dx) >= abs(dy):
        return "right" if dx > 0 else "left"
    return "down" if dy > 0 else "up"  # image y grows downwards


def shapes_oracle_scores(videos, prompts, settings: ShapesOracleSettings | None = None) -> dict[str, Any]:
    """Colour and direction accuracy of ``videos`` against what ``prompts`` ask for.

    videos: float [N, F, C, H, W] in [-1, 1] or uint8 [N, F, H, W, 3]; prompts: N strings such
    as "a red circle moving left quickly".
    """
    settings = settings or ShapesOracleSettings()
    videos = as_float_videos(videos)
    prompts = list(prompts)
    if len(prompts) != videos.shape[0]:
        raise ValueError(f"shapes oracle: {videos.shape[0]} videos but {len(prompts)} prompts")
    if videos.shape[2] != 3:
        raise ValueError(f"shapes oracle needs RGB videos, got {videos.shape[2]} channel(s)")
    min_travel = settings.min_displacement_fraction * min(videos.shape[-2:])
    per_video: dict[str, list] = {key: [] for key in (
        "color_ok", "direction_ok", "axis_ok", "detected_color", "detected_direction", "expected_color",
        "expected_direction", "frames_with_shape")}
    for video, prompt in zip(videos, prompts, strict=True):
        expected_color, expected_direction = parse_prompt(prompt)
        centroids, colour = _frame_detections(video, settings)
        detected_color = _nearest_palette_colour(colour) if colour is not None else None
        detected_direction = _direction(centroids, min_travel)
        per_video["color_ok"].append(detected_color is not None and detected_color == expected_color)
        per_video["direction_ok"].append(detected_direction is not None and detected_direction == expected_direction)
        per_video["axis_ok"].append(detected_direction is not None and expected_direction is not None
                                    and AXES[detected_direction] == AXES[expected_direction])
        per_video["detected_color"].append(detected_color)
        per_video["detected_direction"].append(detected_direction)
        per_video["expected_color"].append(expected_color)
        per_video["expected_direction"].append(expected_direction)
        per_video["frames_with_shape"].append(sum(c is not None for c in centroids))
    count = max(1, len(prompts))
    return {
        "color_acc": sum(per_video["color_ok"]) / count,
        "direction_acc": sum(per_video["direction_ok"]) / count,
        "per_video": per_video,
        "protocol": {
            "name": "shapes_oracle",
            "num_videos": len(prompts),
            "background": list(BACKGROUND),
            "palette": {name: list(rgb) for name, rgb in PALETTE.items()},
            "color_rule": "nearest palette entry to the median foreground RGB over all frames",
            "direction_rule": "dominant axis of the centroid displacement, first to last frame with a shape",
            "axis_rule": "the detected direction lies on the prompt's axis (left/right horizontal, up/down vertical)",
            "undetected_counts_as": "wrong",
            "unparsed_prompts": sum(c is None or d is None for c, d in
                                    zip(per_video["expected_color"], per_video["expected_direction"], strict=True)),
            **asdict(settings),
        },
    }
