"""Two VBench dimensions that need no extra detector: temporal flickering, background consistency.

Both follow VBench's own code (github.com/Vchitect/VBench, vbench/temporal_flickering.py,
vbench/background_consistency.py and vbench/utils.py's clip_transform), applied to our tensors.

temporal_flickering (no weights): frames as uint8 levels 0..255; per consecutive pair, the
mean absolute difference over all pixels and channels; per video, the mean over pairs, scored
(255 - mean) / 255; the dimension is the mean over videos. 1 is a frozen video.

background_consistency (CLIP image features, the file metric_settings.clip_score points to;
VBench uses ViT-B/32): every frame through VBench's tensor preprocessing (bicubic short-side
resize without antialiasing and without clamping the overshoot, center crop, /255, CLIP
normalisation); cosines between frame features; for each frame i > 0 the mean of max(0, cos(f_i,
f_{i-1})) and max(0, cos(f_i, f_0)); per video the mean over those F - 1 frames.

Where this differs from a VBench run (also written into each protocol record):
- VBench scores its own prompt suites; temporal_flickering only on static-scene prompts whose
  videos pass its RAFT-based static filter (static_filter.py). Here every video is scored, so
  intended motion counts as flicker: read it beside temporal.motion.
- VBench decodes saved mp4s (codec artefacts included); here the frames given are quantized
  to uint8 levels as a saved video would be, without a codec.
- VBench runs CLIP in fp16 on CUDA (clip.load keeps fp16 weights there); the project's loader
  runs float32, and cosines are taken in float64. VBench averages flicker in float32.
- The leaderboard's total min-max normalises each dimension (scripts/constant.py); these are
  the raw per-dimension scores.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from .clip_score import CLIP_MEAN, CLIP_STD, ClipScoreSettings, load_clip
from .detectors import as_float_videos, center_crop, gray_to_rgb, quantize_like_uint8, short_side_size

SOURCE = "VBench (github.com/Vchitect/VBench)"
VBENCH_CLIP_MODEL = "ViT-B/32"
MAX_LEVEL = 255.0


@dataclass
class VBenchSettings:
    """Settings of the VBench dimensions; the CLIP file and device come from metric_settings.clip_score."""

    batch_size: int = 64  # frames per CLIP image-encoder call (background_consistency)


def uint8_levels(videos: Any) -> torch.Tensor:
    """Videos as float64 [N, F, C, H, W] holding the integer levels 0..255 of decoded frames.

    The rounding is quantize_like_uint8's (the one every metric here uses); it returns
    level / 127.5 - 1, so the scaling is undone and float error rounded off.
    """
    quantized = quantize_like_uint8(as_float_videos(videos))
    return torch.round((quantized.double() + 1.0) * (MAX_LEVEL / 2.0))


def _require_frames(videos: torch.Tensor, what: str) -> None:
    if videos.shape[1] < 2:
        raise ValueError(f"{what} compares consecutive frames; got {videos.shape[1]} frame(s) per video")


def _common_protocol(videos: torch.Tensor) -> dict[str, Any]:
    return {
        "source": SOURCE,
        "num_videos": int(videos.shape[0]),
        "frames_per_video": int(videos.shape[1]),
        "frame_sampling": "every frame given (VBench reads every frame of the saved video)",
        "source_resolution": [int(videos.shape[3]), int(videos.shape[4])],
        "quantize_uint8": True,
        "prompt_scope": "all videos (VBench: its own prompt suite for the dimension)",
    }


# ----------------------------------------------------------------------------- temporal flickering


def mean_abs_frame_difference(levels: torch.Tensor) -> torch.Tensor:
    """[N, F, C, H, W] levels -> [N]: mean over consecutive pairs of each pair's mean |difference|."""
    pair_means = (levels[:, 1:] - levels[:, :-1]).abs().flatten(2).mean(dim=2)
    return pair_means.mean(dim=1)


def temporal_flickering(videos: Any) -> dict[str, Any]:
    """VBench temporal flickering of each video and their mean (1 = no change between frames)."""
    levels = uint8_levels(videos)
    _require_frames(levels, "temporal_flickering")
    # One video at a time: the float64 differences of a whole batch would double its memory.
    mad = torch.cat([mean_abs_frame_difference(video[None]) for video in levels])
    scores = (MAX_LEVEL - mad) / MAX_LEVEL
    return {
        "temporal_flickering": float(scores.mean()),
        "mean_abs_frame_difference": float(mad.mean()),
        "per_video": {"temporal_flickering": scores.tolist()},
        "protocol": {
            **_common_protocol(levels),
            "formula": "per video: (255 - mean over consecutive pairs of mean |f_t+1 - f_t|) / 255 on uint8 levels; "
            "mean over videos",
            "detector": None,
            "detector_resolution": [int(levels.shape[3]), int(levels.shape[4])],
            "resize_mode": "none (native resolution, as VBench)",
            "vbench_differences": [
                "VBench scores only static-scene prompts whose videos pass its RAFT static filter; "
                "here every video is scored, so intended motion lowers the score",
                "VBench reads frames from saved mp4s (codec included); here frames are quantized without a codec",
                "float64 averages (VBench: float32)",
            ],
        },
    }


# ----------------------------------------------------------------------------- background consistency


def frames_for_vbench_clip(levels: torch.Tensor, size: int) -> torch.Tensor:
    """[B, C, H, W] levels 0..255 -> CLIP input, as VBench's clip_transform does on float frames.

    Unlike clip's PIL preprocessing (clip_score.frames_for_clip), VBench resizes a float tensor:
    bicubic without antialiasing, and the overshoot past 0..255 is kept, not clamped.
    """
    frames = gray_to_rgb(levels.float(), channel_dim=1)
    resized_size = short_side_size(*frames.shape[-2:], size)
    if tuple(frames.shape[-2:]) != resized_size:
        frames = F.interpolate(frames, size=resized_size, mode="bicubic", align_corners=False, antialias=False)
    frames = center_crop(frames, size) / MAX_LEVEL
    mean = torch.tensor(CLIP_MEAN, dtype=frames.dtype).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, dtype=frames.dtype).view(1, 3, 1, 1)
    return (frames - mean) / std


@torch.no_grad()
def clip_frame_features(levels: torch.Tensor, model, batch_size: int, device: str) -> torch.Tensor:
    """CLIP image features of every frame, float64 [N, F, D] (not normalised: see frame_cosines)."""
    count, frames_per_video = levels.shape[:2]
    frames = levels.flatten(0, 1)
    size = int(model.visual.input_resolution)
    chunks = []
    for start in range(0, frames.shape[0], batch_size):
        batch = frames_for_vbench_clip(frames[start : start + batch_size], size)
        chunks.append(model.encode_image(batch.to(device)).double().cpu())
    return torch.cat(chunks).view(count, frames_per_video, -1)


def frame_cosines(features: torch.Tensor, others: torch.Tensor) -> torch.Tensor:
    """Cosine along the last axis, as a.b / sqrt(|a|^2 |b|^2).

    Equal to VBench's cosine of L2-normalised features, but identical features give exactly 1
    (sqrt of a rounded square returns the number), not 1 - 1e-15. Identical frames get
    identical features only up to float32 noise when batched (a GEMM's tail rows round
    differently), so a frozen video scores 1 to ~1e-7, and exactly 1 with batch_size=1.
    """
    dot = (features * others).sum(dim=-1)
    return dot / torch.sqrt((features * features).sum(dim=-1) * (others * others).sum(dim=-1))


def background_consistency_from_features(features: torch.Tensor) -> torch.Tensor:
    """[N, F, D] features -> [N]: mean over frames i > 0 of (max(0, cos prev) + max(0, cos first)) / 2."""
    current = features[:, 1:]
    to_previous = frame_cosines(current, features[:, :-1]).clamp(min=0)
    to_first = frame_cosines(current, features[:, :1].expand_as(current)).clamp(min=0)
    return ((to_previous + to_first) / 2).mean(dim=1)


def background_consistency(
    videos: Any,
    settings: VBenchSettings | None = None,
    clip_settings: ClipScoreSettings | None = None,
    model=None,
) -> dict[str, Any]:
    """VBench background consistency of each video and their mean. Pass `model` to reuse a loaded CLIP."""
    settings = settings or VBenchSettings()
    clip_settings = clip_settings or ClipScoreSettings()
    levels = uint8_levels(videos)
    _require_frames(levels, "background_consistency")
    warnings = []
    if model is None:
        model, record = load_clip(clip_settings)  # MissingWeightsError -> the suite reports a skip with a fix
        if clip_settings.model != VBENCH_CLIP_MODEL:
            warnings.append(f"CLIP model '{clip_settings.model}' is not VBench's {VBENCH_CLIP_MODEL}")
    else:
        record = {"detector": "CLIP (caller-supplied model)", "detector_file": None, "detector_sha256": None}
    features = clip_frame_features(levels, model, settings.batch_size, clip_settings.device)
    scores = background_consistency_from_features(features)
    size = int(model.visual.input_resolution)
    result = {
        "background_consistency": float(scores.mean()),
        "per_video": {"background_consistency": scores.tolist()},
        "protocol": {
            **_common_protocol(levels),
            "formula": "per frame i>0: (max(0, cos(f_i, f_i-1)) + max(0, cos(f_i, f_0))) / 2 on CLIP image "
            "features; per video: mean over its F-1 frames; mean over videos (VBench's sum/count over all "
            "frames, equal for equal-length videos)",
            "detector_resolution": [size, size],
            "resize_mode": "short side bicubic (antialias=False, overshoot not clamped) + center crop, as VBench",
            "vbench_detector": f"CLIP {VBENCH_CLIP_MODEL}",
            "vbench_differences": [
                "VBench scores its own prompt suite; here every video given is scored",
                "VBench reads frames from saved mp4s (codec included); here frames are quantized without a codec",
                "VBench runs CLIP in fp16 on CUDA; here float32 CLIP, float64 cosines",
            ],
            **record,
        },
    }
    if warnings:
        result["warnings"] = warnings
    return result
