"""CLIP score: text-video alignment as the cosine between frame and prompt embeddings.

Per frame, cos(image embedding, prompt embedding); averaged over frames, then over videos.
Two forms are reported: the raw cosine `clip_sim` (the "CLIPSIM" of T2V papers, ~0.29-0.31 for
ModelScope-class models on MSR-VTT with ViT-B/32) and `clip_score` = 100 * max(cos, 0) taken
per frame before averaging (torchmetrics' convention).

Model files are never downloaded. A model name such as "ViT-B/32" resolves to the file clip
itself would have downloaded into `cache_dir` (e.g. ViT-B-32.pt), whose sha256 is checked
against the one in clip's URL; anything else is taken as a path to a local checkpoint.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from .detectors import (
    MissingWeightsError,
    as_float_videos,
    center_crop,
    gray_to_rgb,
    quantize_like_uint8,
    sha256_file,
    short_side_size,
    weight_file_record,
)

# clip's own preprocessing constants (torchvision Normalize in clip._transform).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class ClipScoreSettings:
    model: str = "ViT-B/32"  # a clip model name (looked up in cache_dir) or a checkpoint path
    cache_dir: str = os.path.join("~", ".cache", "clip")  # clip's download_root; must already hold the file
    device: str = "cpu"
    batch_size: int = 64  # frames per image-encoder call
    quantize_uint8: bool = True  # score frames as their saved uint8 version would be


def import_clip():
    # clip-anytorch imports pkg_resources at import time, which warns (or is missing) with
    # recent setuptools; the warning is noise for users, a missing module is not.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            import clip  # deferred: clip-anytorch (~1.5 s, torchvision); only when CLIP score runs
        except ModuleNotFoundError as error:
            raise ModuleNotFoundError(
                f"clip-anytorch could not be imported ({error}); install it with setuptools<81 "
                "(it needs pkg_resources)"
            ) from error
    return clip


def resolve_clip_file(model: str, cache_dir: str) -> tuple[Path, str | None]:
    """Local file for a clip model name or path, plus the official sha256 when known.

    Raises MissingWeightsError naming the setting to change when the file is not on disk.
    """
    known_urls = import_clip().clip._MODELS
    if model in known_urls:
        url = known_urls[model]
        path = Path(os.path.expanduser(cache_dir)) / os.path.basename(url)
        official_sha256 = url.split("/")[-2]
        if not path.is_file():
            raise MissingWeightsError(
                path, "metric_settings.clip_score.cache_dir", f"CLIP {model}",
                fix=f"put {path.name} in {cache_dir} (or point +metric_settings.clip_score.cache_dir=DIR at the "
                    "folder that has it), or set +metric_settings.clip_score.model=/path/to/checkpoint.pt")
        return path, official_sha256
    path = Path(os.path.expanduser(model))
    if not path.is_file():
        raise MissingWeightsError(path, "metric_settings.clip_score.model", "CLIP")
    return path, None


def load_clip(settings: ClipScoreSettings):
    """(model, record) from a local file via clip.load(path, jit=False); never downloads."""
    path, official_sha256 = resolve_clip_file(settings.model, settings.cache_dir)
    record = weight_file_record(path, f"CLIP {settings.model}" if official_sha256 else "CLIP (local checkpoint)")
    if official_sha256 and sha256_file(path) != official_sha256:
        # clip.load would silently re-download here; we refuse, since the number would be
        # labelled with a model it did not come from.
        raise ValueError(
            f"{path} has sha256 {record['detector_sha256']}, not the official {official_sha256} for "
            f"{settings.model}; replace the file, or set +metric_settings.clip_score.model={path} to use it as a custom checkpoint"
        )
    clip = import_clip()
    # A path (not a name) goes to clip.load, so its download branch can never run.
    model, _ = clip.load(str(path), device=settings.device, jit=False, download_root=os.path.expanduser(settings.cache_dir))
    return model.float().eval(), record


def frames_for_clip(frames: torch.Tensor, size: int) -> torch.Tensor:
    """[B, C, H, W] in [-1, 1] -> CLIP input: bicubic short-side resize, center crop, normalise.

    Mirrors clip's PIL transform on tensors; clamping after the bicubic resize stands in for
    PIL's clipping to the 0..255 range.
    """
    frames = gray_to_rgb((frames + 1.0) / 2.0, channel_dim=1)
    resized_size = short_side_size(*frames.shape[-2:], size)
    frames = F.interpolate(frames, size=resized_size, mode="bicubic", align_corners=False, antialias=True)
    frames = center_crop(frames.clamp(0, 1), size)
    mean = torch.tensor(CLIP_MEAN, dtype=frames.dtype).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, dtype=frames.dtype).view(1, 3, 1, 1)
    return (frames - mean) / std


@torch.no_grad()
def frame_prompt_cosines(videos: torch.Tensor, prompts: list[str], model, settings: ClipScoreSettings) -> torch.Tensor:
    """Cosine between every frame and its video's prompt, float64 [N, F]."""
    clip = import_clip()
    count, frames_per_video = videos.shape[:2]
    tokens = clip.tokenize(list(prompts), context_length=model.context_length, truncate=True)
    text = F.normalize(model.encode_text(tokens.to(settings.device)).double(), dim=-1).cpu()
    frames = videos.flatten(0, 1)
    if settings.quantize_uint8:
        frames = quantize_like_uint8(frames)
    size = int(model.visual.input_resolution)
    image_chunks = []
    for start in range(0, frames.shape[0], settings.batch_size):
        batch = frames_for_clip(frames[start : start + settings.batch_size], size)
        image_chunks.append(F.normalize(model.encode_image(batch.to(settings.device)).double(), dim=-1).cpu())
    images = torch.cat(image_chunks).view(count, frames_per_video, -1)
    return torch.einsum("nfd,nd->nf", images, text)


def clip_score(videos: Any, prompts: list[str], settings: ClipScoreSettings | None = None, model=None) -> dict[str, Any]:
    """CLIP similarity of each video to its prompt. Pass `model` to reuse a loaded network."""
    settings = settings or ClipScoreSettings()
    videos = as_float_videos(videos)
    if len(prompts) != videos.shape[0]:
        raise ValueError(f"need one prompt per video: {len(prompts)} prompts for {videos.shape[0]} videos")
    if model is None:
        model, record = load_clip(settings)
    else:
        record = {"detector": "CLIP (caller-supplied model)", "detector_file": None, "detector_sha256": None}
    cosines = frame_prompt_cosines(videos, prompts, model, settings)
    similarity = cosines.mean(dim=1)
    score = (100.0 * cosines.clamp(min=0)).mean(dim=1)
    return {
        "clip_sim": float(similarity.mean()),
        "clip_score": float(score.mean()),
        "per_video": {"clip_sim": similarity.tolist(), "clip_score": score.tolist()},
        "protocol": {
            "num_videos": int(videos.shape[0]),
            "frames_per_video": int(videos.shape[1]),
            "source_resolution": [int(videos.shape[3]), int(videos.shape[4])],
            "detector_resolution": [int(model.visual.input_resolution)] * 2,
            "resize_mode": "short_side_center_crop (bicubic, antialias)",
            "quantize_uint8": settings.quantize_uint8,
            "aggregation": "per-frame cosine -> mean over frames -> mean over videos; clip_score clamps per frame",
            "text_truncation": True,
            **record,
        },
    }
