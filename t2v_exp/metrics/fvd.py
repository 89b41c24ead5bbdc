"""Fréchet Video Distance with an I3D (Kinetics-400) detector loaded from a local TorchScript file.

The commonly used PyTorch detector is the TorchScript port `i3d_torchscript.pt`, called as
`detector(videos, rescale=False, resize=False, return_features=True)` on [N, C, T, H, W] float
frames already resized to 224 and scaled to [-1, 1]; with return_features=True it returns the
400 pre-softmax logits averaged over time, the FVD embedding. We do the resizing and scaling
ourselves (so the resize mode is ours to choose and record) and pass only the keyword
arguments the loaded module's forward actually declares, so other ports with fewer switches
still load.

The distance is `frechet.frechet_distance` in float64; N, ddof, resize mode, frames per clip,
detector name and file sha256 are recorded with every score.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from .detectors import (
    as_float_videos,
    center_crop,
    gray_to_rgb,
    load_torchscript,
    quantize_like_uint8,
    require_weight_file,
    short_side_size,
    supported_kwargs,
    weight_file_record,
)
from .frechet import COVARIANCE_DDOF, frechet_distance_from_features

DETECTOR_NAME = "I3D Kinetics-400 logits (TorchScript)"
RESIZE_MODES = ("direct", "short_side_center_crop")


def _default_call_kwargs() -> dict[str, bool]:
    return {"rescale": False, "resize": False, "return_features": True}


@dataclass
class FVDSettings:
    detector_path: str = os.path.join("~", ".cache", "t2v_exp", "i3d_torchscript.pt")
    expected_sha256: str | None = None  # checked before loading when set
    num_frames: int = 16  # frames per clip fed to I3D: the first num_frames of each video
    resolution: int = 224
    resize_mode: str = "direct"  # "direct" (squash to 224x224) or "short_side_center_crop"
    antialias: bool = False  # plain bilinear, like the TorchScript port's own resize=True path
    quantize_uint8: bool = True  # score frames as their saved uint8 version would be
    call_kwargs: dict[str, bool] = field(default_factory=_default_call_kwargs)
    batch_size: int = 8
    device: str = "cpu"
    ddof: int = COVARIANCE_DDOF


def load_i3d(settings: FVDSettings):
    """(detector, record) from the local TorchScript file named by settings.detector_path."""
    path = require_weight_file(
        os.path.expanduser(settings.detector_path), "metric_settings.fvd.detector_path", "I3D", settings.expected_sha256
    )
    return load_torchscript(path, settings.device), weight_file_record(path, DETECTOR_NAME)


def resize_frames(frames: torch.Tensor, resolution: int, mode: str, antialias: bool) -> torch.Tensor:
    """[B, C, H, W] -> [B, C, resolution, resolution] by direct resize or short-side resize + center crop."""
    if mode == "direct":
        size = (resolution, resolution)
    elif mode == "short_side_center_crop":
        size = short_side_size(*frames.shape[-2:], resolution)
    else:
        raise ValueError(f"metric_settings.fvd.resize_mode must be one of {RESIZE_MODES}, got '{mode}'")
    frames = F.interpolate(frames, size=size, mode="bilinear", align_corners=False, antialias=antialias)
    return center_crop(frames, resolution)


def clips_for_i3d(videos: torch.Tensor, settings: FVDSettings) -> torch.Tensor:
    """[N, F, C, H, W] in [-1, 1] -> I3D input [N, 3, T, R, R] in [-1, 1]."""
    frames = videos.shape[1]
    if frames < settings.num_frames:
        raise ValueError(
            f"FVD clips need {settings.num_frames} frames, videos have {frames}; generate longer videos "
            f"or set metric_settings.fvd.num_frames={frames} (scores are then not comparable with 16-frame FVD)"
        )
    clips = videos[:, : settings.num_frames]
    if settings.quantize_uint8:
        clips = quantize_like_uint8(clips)
    count = clips.shape[0]
    resized = resize_frames(clips.flatten(0, 1), settings.resolution, settings.resize_mode, settings.antialias)
    resized = gray_to_rgb(resized, channel_dim=1).clamp(-1.0, 1.0)
    return resized.view(count, settings.num_frames, 3, settings.resolution, settings.resolution).permute(0, 2, 1, 3, 4)


@torch.no_grad()
def i3d_features(videos: Any, detector: torch.nn.Module, settings: FVDSettings) -> tuple[torch.Tensor, list[str]]:
    """Detector embeddings [N, D] (float64, CPU) and the configured keyword arguments it lacked."""
    videos = as_float_videos(videos)
    call_kwargs, dropped = supported_kwargs(detector, settings.call_kwargs)
    chunks = []
    for start in range(0, videos.shape[0], settings.batch_size):
        clips = clips_for_i3d(videos[start : start + settings.batch_size], settings)
        features = detector(clips.contiguous().to(settings.device), **call_kwargs)
        if features.ndim != 2 or features.shape[0] != clips.shape[0]:
            raise ValueError(
                f"the detector returned shape {tuple(features.shape)} for {clips.shape[0]} clips; expected "
                "[N, D] features (check metric_settings.fvd.call_kwargs, e.g. return_features=True)"
            )
        chunks.append(features.double().cpu())
    return torch.cat(chunks), dropped


def fvd(
    videos: Any,
    reference_videos: Any,
    settings: FVDSettings | None = None,
    detector: torch.nn.Module | None = None,
) -> dict[str, Any]:
    """FVD between generated and reference videos. Pass `detector` to reuse a loaded one."""
    settings = settings or FVDSettings()
    videos = as_float_videos(videos)
    reference_videos = as_float_videos(reference_videos)
    if detector is None:
        detector, record = load_i3d(settings)
    else:
        record = {"detector": "caller-supplied detector", "detector_file": None, "detector_sha256": None}
    features, dropped = i3d_features(videos, detector, settings)
    reference_features, _ = i3d_features(reference_videos, detector, settings)
    distance = frechet_distance_from_features(features, reference_features, settings.ddof)
    passed = {key: value for key, value in settings.call_kwargs.items() if key not in dropped}
    notes = list(distance["warnings"])
    if dropped:
        notes.append(f"detector forward does not accept {dropped}; called without them")
    return {
        "fvd": distance["distance"],
        "protocol": {
            "num_videos": distance["num_samples"],
            "num_reference_videos": distance["num_reference_samples"],
            "frames_per_clip": settings.num_frames,
            "source_resolution": [int(videos.shape[3]), int(videos.shape[4])],
            "detector_resolution": [settings.resolution, settings.resolution],
            "resize_mode": settings.resize_mode,
            "interpolation": f"bilinear (antialias={settings.antialias})",
            "input_range": "[-1, 1]",
            "quantize_uint8": settings.quantize_uint8,
            "detector_call_kwargs": passed,
            "feature_dim": distance["feature_dim"],
            "ddof": distance["ddof"],
            **record,
        },
        "warnings": notes,
    }
