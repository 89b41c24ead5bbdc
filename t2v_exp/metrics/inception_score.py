"""Frame-level Inception Score: Inception-v3 applied to every frame as if it were an image.

This is NOT the "video IS" of the video-GAN literature (C3D trained on UCF-101, applied to
whole clips); numbers from the two are not comparable, hence the explicit name.

Protocol: frames resized to 299x299, p = softmax(logits); samples shuffled with a fixed seed
and cut into `splits` parts; each part scores exp(mean_i KL(p_i || mean p)); we report the
mean and (population) std over parts, as the original implementation did.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from .detectors import (
    as_float_videos,
    gray_to_rgb,
    load_state_dict_file,
    quantize_like_uint8,
    require_weight_file,
    weight_file_record,
)

DETECTOR_NAME = "torchvision inception_v3 (frame-level IS)"
INPUT_SIZE = 299


@dataclass
class InceptionScoreSettings:
    weights_path: str = os.path.join("~", ".cache", "t2v_exp", "inception_v3.pth")  # a torchvision state dict
    expected_sha256: str | None = None  # checked before loading when set
    splits: int = 10
    seed: int = 0  # seeds the shuffle before splitting
    batch_size: int = 32
    device: str = "cpu"
    antialias: bool = True  # bilinear resize to 299 with antialiasing (matters when downscaling)
    quantize_uint8: bool = True  # score frames as their saved uint8 version would be


def split_permutation(count: int, seed: int) -> torch.Tensor:
    """The fixed shuffle applied before splitting (torch.randperm on a seeded CPU generator)."""
    return torch.randperm(count, generator=torch.Generator().manual_seed(seed))


def inception_score_from_probs(probs: torch.Tensor, splits: int = 10, seed: int = 0) -> tuple[float, float]:
    """Mean and std over splits of exp(mean KL(p_i || p_split)) for class probabilities [N, K].

    Split boundaries are floor(i * N / splits), as in the original implementation, so every
    sample is used even when N is not a multiple of `splits`. Computed in float64; 0 log 0 = 0.
    """
    if probs.ndim != 2:
        raise ValueError(f"probs must be [N, K], got shape {tuple(probs.shape)}")
    count = probs.shape[0]
    if count < splits:
        raise ValueError(f"need at least splits={splits} samples, got {count}")
    probs = probs.double()[split_permutation(count, seed)]
    scores = []
    for index in range(splits):
        part = probs[index * count // splits : (index + 1) * count // splits]
        marginal = part.mean(dim=0, keepdim=True)
        kl = (torch.special.xlogy(part, part) - torch.special.xlogy(part, marginal)).sum(dim=1)
        scores.append(kl.mean().exp())
    scores = torch.stack(scores)
    return float(scores.mean()), float(scores.std(unbiased=False))


def build_inception(weights_path: str, device: str = "cpu", expected_sha256: str | None = None):
    """torchvision's Inception-v3 with weights from a local state dict; returns (model, record)."""
    from torchvision.models import inception_v3

    path = require_weight_file(
        os.path.expanduser(weights_path), "metric_settings.inception_score.weights_path", "Inception-v3", expected_sha256
    )
    state_dict = load_state_dict_file(path)
    if "fc.weight" not in state_dict:
        raise ValueError(f"'{path}' is not a torchvision inception_v3 state dict (no 'fc.weight')")
    # torchvision's published weights carry the auxiliary head; it is unused in eval mode.
    has_aux = any(key.startswith("AuxLogits.") for key in state_dict)
    model = inception_v3(
        weights=None,
        aux_logits=has_aux,
        init_weights=False,
        num_classes=state_dict["fc.weight"].shape[0],
        # Frames arrive in [-1, 1], which is exactly what transform_input=True would produce
        # from ImageNet-normalised input, so the conversion is skipped rather than done twice.
        transform_input=False,
    )
    model.load_state_dict(state_dict, strict=True)
    return model.eval().to(device), weight_file_record(path, DETECTOR_NAME)


def frames_for_inception(frames: torch.Tensor, antialias: bool) -> torch.Tensor:
    """[B, C, H, W] in [-1, 1] -> [B, 3, 299, 299] in [-1, 1]."""
    frames = gray_to_rgb(frames, channel_dim=1)
    return F.interpolate(frames, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False, antialias=antialias)


@torch.no_grad()
def inception_probs(videos: torch.Tensor, model: torch.nn.Module, settings: InceptionScoreSettings) -> torch.Tensor:
    frames = as_float_videos(videos).flatten(0, 1)
    if settings.quantize_uint8:
        frames = quantize_like_uint8(frames)
    chunks = []
    for start in range(0, frames.shape[0], settings.batch_size):
        batch = frames_for_inception(frames[start : start + settings.batch_size], settings.antialias)
        logits = model(batch.to(settings.device))
        chunks.append(torch.softmax(logits.double(), dim=1).cpu())
    return torch.cat(chunks)


def inception_score(videos: Any, settings: InceptionScoreSettings | None = None, model=None) -> dict[str, Any]:
    """Frame-level IS of a batch of videos. Pass `model` to reuse a loaded network."""
    settings = settings or InceptionScoreSettings()
    videos = as_float_videos(videos)
    if model is None:
        model, record = build_inception(settings.weights_path, settings.device, settings.expected_sha256)
    else:
        record = {"detector": DETECTOR_NAME, "detector_file": None, "detector_sha256": None}
    probs = inception_probs(videos, model, settings)
    mean, std = inception_score_from_probs(probs, settings.splits, settings.seed)
    return {
        "inception_score_frame": mean,
        "inception_score_frame_std": std,
        "protocol": {
            "num_videos": int(videos.shape[0]),
            "frames_per_video": int(videos.shape[1]),
            "num_frames_scored": int(probs.shape[0]),
            "source_resolution": [int(videos.shape[3]), int(videos.shape[4])],
            "detector_resolution": [INPUT_SIZE, INPUT_SIZE],
            "resize_mode": f"direct bilinear (antialias={settings.antialias})",
            "quantize_uint8": settings.quantize_uint8,
            "splits": settings.splits,
            "split_seed": settings.seed,
            "std": "population std over splits",
            "num_classes": int(probs.shape[1]),
            **record,
        },
    }
