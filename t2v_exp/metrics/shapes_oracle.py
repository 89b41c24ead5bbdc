"""Shapes oracle: does a generated video show the colour and motion its prompt asked for?

Only meaningful for the synthetic shapes data (t2v_exp/data/shapes.py): each clip holds one shape of
one palette colour moving along one axis on a flat background. A generated video is a noisy, blurred,
tinted version of that, so each step reads what the frames show, not what the generator would draw:

- Background, per frame: the most common colour of the frame's border pixels, the mode of a coarse
  colour histogram (bins of 32 levels, each counted with its neighbours within two bins, so noise
  spreading the background over several bins cannot hand the mode to a flat patch), refined by the
  per-channel median of the border pixels near it. A shape touches the border along a short
  stretch at most. (A fixed background constant read a background 36 levels darker as all
  foreground: every score 0.) A frame with more than half its pixels far from its background has
  no background, hence no shape.
- Colour: a majority vote. Anti-aliasing, blur and chroma subsampling mix the shape with the
  background, so a pixel lies near the blend line from the background to its palette colour (and a
  half red, half background pixel is nearer to yellow than to red). Each pixel votes for the
  palette colour of the nearest such line, if it lies more than half-way along it (closer to that
  colour than to the background) and near it; pixels closer to the background do not vote. Only the
  frame's largest connected group of voters counts, so noise speckles and a smaller distractor blob
  do not vote. (The median colour of everything far from the background, noise included, got the
  colour right in half the clips under noise of sigma 30.)
- Position, per frame: the centroid of the winning colour's pixels in that group; a group smaller
  than min_foreground_fraction of the frame is no shape.
- Direction: the least-squares slope of the centroid's x and y over the frame index (all frames
  with a shape), times (frames - 1): the fitted travel. Its larger axis is the direction if the
  travel reaches half the slowest travel the dataset generates at this geometry (data/shapes.py's
  slowest speed, capped by the room in the frame as render_clip caps it: 3.4 px for 8 frames of
  32x32, the same fraction of the frame for the same number of frames at any size). Below that, "no direction", scored wrong: a
  static or jittering shape never scores chance. (First-to-last-frame displacement against a
  0.64 px threshold read one-pixel jitter as a random direction.) With very few frames the
  slowest travel is itself about a pixel, and motion cannot be told from jitter.

A video with no detectable shape, or with a prompt naming no colour/direction, counts as wrong.
bench/bench_oracle.py measures accuracy against the generator's ground truth, clean and perturbed.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from ..data.shapes import DIRECTIONS, PALETTE, SPEEDS
from .detectors import as_float_videos


@dataclass
class ShapesOracleSettings:
    # Euclidean RGB distance (0-255 scale) from the background above which a pixel is "not
    # background"; only used to tell whether a frame has a background at all.
    foreground_distance: float = 60.0
    # Fewer pixels than this fraction of the frame in the shape's group: no shape in that frame.
    min_foreground_fraction: float = 0.004
    # More "not background" pixels than this: the background is not there (a shape covers ~10%
    # of a frame; noise of sigma 30 puts 10-26% of the background beyond foreground_distance).
    max_foreground_fraction: float = 0.5
    # Farthest (0-255 scale) a voting pixel may lie from its background-to-palette blend line. Each
    # palette colour is >= 117 from every other colour's line; noise of sigma 30 puts ~1% of a
    # shape's pixels beyond 90.
    max_line_distance: float = 90.0
    # Coarse border histogram: bins of this many levels per channel; border pixels within
    # background_window levels (every channel) of the modal bin's centre give the median (80: the
    # two neighbouring bins each side that the mode counted).
    background_bin: int = 32
    background_window: float = 80.0
    # Fitted travel below this fraction of the slowest travel the dataset generates: no direction.
    min_travel_fraction_of_slowest: float = 0.5


_WORD = re.compile(r"[a-z]+")
# axis_ok: the motion without its sign. A model can learn to move shapes vertically before it learns
# which of "up" / "down" the prompt says (AnimateDiff's motion LoRA never sees the prompt at all).
AXES = {"left": "horizontal", "right": "horizontal", "up": "vertical", "down": "vertical"}
_NAMES = list(PALETTE)
_PALETTE = torch.tensor([PALETTE[n] for n in _NAMES], dtype=torch.float32)  # [P, 3]
_EIGHT = np.ones((3, 3), dtype=bool)  # a pixel connects to its 8 neighbours


def parse_prompt(prompt: str) -> tuple[str | None, str | None]:
    """Expected (colour, direction) named in the prompt, or None where it names none."""
    words = _WORD.findall(prompt.lower())
    color = next((w for w in words if w in PALETTE), None)
    direction = next((w for w in words if w in DIRECTIONS), None)
    return color, direction


def slowest_travel(num_frames: int, height: int, width: int) -> float:
    """Pixels the slowest clip of data/shapes.py travels over ``num_frames`` frames at this size
    (render_clip's step: the slowest speed times the short side, capped so the path fits)."""
    short = min(height, width)
    room = short - 2 * max(2.0, short / 6)  # the shape's radius; the short axis has the least room
    steps = max(1, num_frames - 1)
    return min(min(SPEEDS.values()) * short, room / steps) * steps


def estimate_background(pixels: torch.Tensor, settings: ShapesOracleSettings) -> torch.Tensor:
    """[F, 3, H, W] on the 0-255 scale -> [F, 3]: each frame's border mode (see the module doc)."""
    border = torch.cat([pixels[:, :, 0, :], pixels[:, :, -1, :], pixels[:, :, 1:-1, 0], pixels[:, :, 1:-1, -1]],
                       dim=2)  # [F, 3, B]
    frames, bins = border.shape[0], 256 // settings.background_bin
    index = (border / settings.background_bin).long().clamp(0, bins - 1)  # [F, 3, B]
    flat = (index[:, 0] * bins + index[:, 1]) * bins + index[:, 2]  # [F, B]
    counts = torch.zeros(frames, bins**3).scatter_add_(1, flat, torch.ones_like(flat, dtype=torch.float32))
    # Each bin with its neighbours within 2 bins: noise spreads a flat colour over several bins, and a
    # mode of single bins would then go to any noise-free patch on the border.
    kernel = torch.ones(1, 1, 5, 5, 5)
    smoothed = F.conv3d(counts.view(frames, 1, bins, bins, bins), kernel, padding=2).view(frames, -1)
    mode = smoothed.argmax(dim=1)
    centre = torch.stack([mode // bins**2, (mode // bins) % bins, mode % bins], dim=1).float()
    centre = (centre + 0.5) * settings.background_bin  # [F, 3]
    near = (border - centre[:, :, None]).abs().amax(dim=1, keepdim=True) <= settings.background_window
    near = near | ~near.any(dim=2, keepdim=True)  # never empty (the mode counted pixels within 80): a guard
    return torch.where(near, border, torch.nan).nanmedian(dim=2).values


def palette_votes(pixels: torch.Tensor, background: torch.Tensor, settings: ShapesOracleSettings) -> torch.Tensor:
    """[F, 3, H, W] and [F, 3] -> long [F, H, W]: the palette index each pixel votes for, -1 for none."""
    votes = []
    for start in range(0, pixels.shape[0], 8):  # 8 frames at a time: 4 palette planes of 480x720x49 are 270 MB
        offset = (pixels[start : start + 8] - background[start : start + 8, :, None, None]).permute(0, 2, 3, 1)
        lines = _PALETTE[None] - background[start : start + 8, None]  # [f, P, 3]: background -> palette colour
        length2 = lines.pow(2).sum(dim=2).clamp_min(1.0)[:, None, None]  # [f, 1, 1, P]
        along = torch.einsum("fhwc,fpc->fhwp", offset, lines) / length2  # 0 at the background, 1 at the colour
        across = (offset.pow(2).sum(dim=3, keepdim=True) - along.pow(2) * length2).clamp_min(0)  # squared
        eligible = (along > 0.5) & (across < settings.max_line_distance**2)
        nearest = across.masked_fill(~eligible, torch.inf).argmin(dim=3)  # [f, H, W]
        votes.append(torch.where(eligible.any(dim=3), nearest, -1))
    return torch.cat(votes)


def largest_groups(voters: np.ndarray) -> np.ndarray:
    """bool [F, H, W] -> bool [F, H, W]: each frame's largest 8-connected group of voters."""
    largest = np.zeros_like(voters)
    for frame, mask in enumerate(voters):
        labels, count = ndimage.label(mask, structure=_EIGHT)
        if count:
            sizes = np.bincount(labels.ravel())
            sizes[0] = 0
            largest[frame] = labels == sizes.argmax()
    return largest


def _frame_detections(video: torch.Tensor, settings: ShapesOracleSettings):
    """video: float [F, C, H, W] in [-1, 1] -> (centroids [(x, y) or None], winning palette name or None)."""
    pixels = (video.clamp(-1, 1) + 1) * 127.5  # [F, 3, H, W] on the 0-255 scale
    frames, _, height, width = pixels.shape
    background = estimate_background(pixels, settings)
    far = (pixels - background[:, :, None, None]).pow(2).sum(dim=1).sqrt() > settings.foreground_distance
    has_background = far.flatten(1).float().mean(dim=1) <= settings.max_foreground_fraction  # [F]
    votes = palette_votes(pixels, background, settings).numpy()
    votes[~has_background.numpy()] = -1
    group = largest_groups(votes >= 0)
    min_pixels = max(3, int(settings.min_foreground_fraction * height * width))
    present = group.reshape(frames, -1).sum(axis=1) >= min_pixels  # [F]
    counted = votes[group & present[:, None, None]]
    if counted.size == 0:
        return [None] * frames, None
    winner = int(np.bincount(counted, minlength=len(_NAMES)).argmax())
    ys, xs = np.mgrid[0:height, 0:width]
    centroids = []
    for mask in group & (votes == winner) & present[:, None, None]:
        centroids.append((float(xs[mask].mean()), float(ys[mask].mean())) if mask.any() else None)
    return centroids, _NAMES[winner]


def fitted_travel(centroids) -> tuple[float, float] | None:
    """(x, y) travel in pixels over the clip: least-squares slope over the frame index times (frames - 1)."""
    found = [(t, c) for t, c in enumerate(centroids) if c is not None]
    if len(found) < 2:
        return None
    t = np.array([i for i, _ in found], dtype=np.float64)
    xy = np.array([c for _, c in found], dtype=np.float64)  # [n, 2]
    centred = t - t.mean()
    slope = centred @ (xy - xy.mean(axis=0)) / (centred @ centred)  # [2]
    travel = slope * (len(centroids) - 1)
    return float(travel[0]), float(travel[1])


def _direction(centroids, min_travel: float) -> str | None:
    travel = fitted_travel(centroids)
    if travel is None:
        return None
    dx, dy = travel
    if max(abs(dx), abs(dy)) < min_travel:
        return None
    if abs(dx) >= abs(dy):
        return "right" if dx > 0 else "left"
    return "down" if dy > 0 else "up"  # image y grows downwards


def _protocol(settings: ShapesOracleSettings, per_video: dict, num_videos: int, min_travel: float) -> dict:
    return {
        "name": "shapes_oracle",
        "version": 2,
        "num_videos": num_videos,
        "background": "per frame: mode of the border pixels (coarse histogram, refined by their median)",
        "palette": {name: list(rgb) for name, rgb in PALETTE.items()},
        "color_rule": "majority vote over the largest connected group of palette-like pixels per frame; each "
                      "votes for the palette colour whose background-to-colour blend line it lies nearest, "
                      "when more than half-way along it",
        "direction_rule": "dominant axis of the least-squares centroid travel over all frames with a shape; "
                          "below min_travel_px: no direction (wrong)",
        "min_travel_px": round(min_travel, 3),
        "axis_rule": "the detected direction lies on the prompt's axis (left/right horizontal, up/down vertical)",
        "undetected_counts_as": "wrong",
        "unparsed_prompts": sum(c is None or d is None for c, d in
                                zip(per_video["expected_color"], per_video["expected_direction"], strict=True)),
        **asdict(settings),
    }


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
    min_travel = settings.min_travel_fraction_of_slowest * slowest_travel(videos.shape[1], *videos.shape[-2:])
    per_video: dict[str, list] = {key: [] for key in (
        "color_ok", "direction_ok", "axis_ok", "detected_color", "detected_direction", "expected_color",
        "expected_direction", "frames_with_shape")}
    for video, prompt in zip(videos, prompts, strict=True):
        expected_color, expected_direction = parse_prompt(prompt)
        centroids, detected_color = _frame_detections(video.cpu(), settings)
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
        "protocol": _protocol(settings, per_video, len(prompts), min_travel),
    }
