"""IS (torchvision Inception-v3): a frame-level Inception Score, Inception-v3 applied to every frame.

Named "IS (torchvision Inception-v3)" wherever it is shown or recorded, because it is comparable
with nothing published:
- The Inception Score of the literature (Salimans et al. 2016, and torch-fidelity) runs the 2015
  TensorFlow Inception graph (1008 classes, TF1 resize, (x - 128) / 128); torchvision's 1000-class
  Inception-v3 is another network and gives other numbers.
- It is NOT the "video IS" of the video-GAN literature (C3D trained on UCF-101, applied to whole
  clips) either.

Protocol: frames resized to 299x299, p = softmax(logits); samples shuffled with a fixed seed
and cut into `splits` parts; each part scores exp(mean_i KL(p_i || mean p)); we report the
mean and (population) std over parts, as the original implementation did. No interval: a
bootstrap over videos duplicates frames, which lowers a set statistic like IS, so its interval
sat below its own estimate; the std over splits is the spread there is.

A split of n samples cannot score above n (IS is exp of the mutual information between sample
and label, and the sample index carries at most log n), and well before that it is biased low:
with confident predictions the score of a split is ~10% under its large-sample value once the
split holds fewer than ~5x the score's samples, ~25% under at 2x and ~45% at 1x (a multinomial
simulation, tests/test_metrics_inception.py). Frames of one video are near duplicates, so the samples that count are the
distinct videos in a split. The entry warns when a split has fewer than SAMPLES_PER_SCORE x the
score of them: the score then measures the split size as much as the model.

Only torchvision's Inception-v3 (1000 ImageNet classes) is accepted. The FID Inception of
pytorch-fid / torch-fidelity (TensorFlow's 2015-12-05 graph, 1008 classes) has the same key
names but different blocks, so loading it into torchvision's network would run a hybrid of the
two; `classify_inception_state_dict` recognises it (and other look-alikes) and the load is refused.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
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

METRIC_NAME = "IS (torchvision Inception-v3)"
DETECTOR_NAME = METRIC_NAME  # what the protocol records as the detector: the name says which network
NOT_COMPARABLE = ("not comparable with published Inception Scores (2015 TF Inception graph, 1008 classes) nor with "
                  "the C3D video IS")
# A split's score is ~10% under its large-sample value once the split holds fewer than ~5x the
# score's samples (confident predictions, multinomial simulation): warn below that.
SAMPLES_PER_SCORE = 5
INPUT_SIZE = 299
IMAGENET_CLASSES = 1000
# TensorFlow's inception-2015-12-05 graph (the FID Inception) has 1008 outputs: 1000 ImageNet
# classes plus 8 unused ones.
FID_INCEPTION_CLASSES = 1008
WEIGHTS_SETTING = "metric_settings.inception_score.weights_path"


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


# ----------------------------------------------------------------------------- weight layouts

# BatchNorm's batch counter has no effect in eval mode and files ported from TensorFlow may
# lack it (torch-fidelity's converter writes none); a strict load of a plain dict fills it in,
# so its absence is not a layout difference.
BATCH_COUNTER_SUFFIX = ".num_batches_tracked"
CLASSIFIER_KEYS = ("fc.weight", "fc.bias", "AuxLogits.fc.weight", "AuxLogits.fc.bias")
# pytorch-fid's InceptionV3 wrapper regroups the FID Inception's modules into four pooling
# blocks (nn.ModuleList "blocks", pools interleaved at parameter-free positions) and drops fc.
PYTORCH_FID_BLOCKS = (
    ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3"),
    ("Conv2d_3b_1x1", "Conv2d_4a_3x3"),
    ("Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e"),
    ("Mixed_7a", "Mixed_7b", "Mixed_7c"),
)
SHOWN_KEYS = 5


@dataclass(frozen=True)
class InceptionLayout:
    """What a state dict looks like; only kind == "torchvision" may be loaded."""

    kind: str  # torchvision | fid_inception | pytorch_fid_wrapper | wrong_classes | wrong_shapes | not_inception
    description: str
    aux_logits: bool = False


@functools.lru_cache(maxsize=2)
def torchvision_shapes(aux_logits: bool) -> dict[str, tuple[int, ...]]:
    """Key -> shape of torchvision's 1000-class inception_v3 state dict (built on the meta device: no memory)."""
    # deferred: torchvision (~1 s); train --help imports this module
    from torchvision.models import inception_v3

    with torch.device("meta"):
        model = inception_v3(weights=None, aux_logits=aux_logits, init_weights=False, num_classes=IMAGENET_CLASSES)
    return {key: tuple(value.shape) for key, value in model.state_dict().items()}


def _shape(value: Any) -> tuple[int, ...] | None:
    return tuple(value.shape) if isinstance(value, torch.Tensor) else None


def _examples(keys) -> str:
    keys = sorted(keys)
    shown = ", ".join(repr(key) for key in keys[:SHOWN_KEYS])
    return shown + (f", ... ({len(keys) - SHOWN_KEYS} more)" if len(keys) > SHOWN_KEYS else "")


def _key_differences(keys: set[str], aux_logits: bool) -> tuple[list[str], list[str]]:
    """(missing, unexpected) keys against torchvision's layout; batch counters are optional."""
    expected = torchvision_shapes(aux_logits)
    missing = [key for key in expected.keys() - keys if not key.endswith(BATCH_COUNTER_SUFFIX)]
    return sorted(missing), sorted(keys - expected.keys())


def _pytorch_fid_wrapper_layout(keys: set[str]) -> InceptionLayout | None:
    """pytorch-fid's InceptionV3 feature extractor saved whole: keys blocks.<i>.<j>.<rest>."""
    if not keys or not all(key.startswith("blocks.") for key in keys):
        return None
    expected = torchvision_shapes(False)
    for key in keys:
        parts = key.split(".", 3)
        if len(parts) != 4 or not parts[1].isdigit() or not parts[2].isdigit():
            return None
        _, block, position, rest = parts
        names = PYTORCH_FID_BLOCKS[int(block)] if int(block) < len(PYTORCH_FID_BLOCKS) else ()
        if int(position) >= len(names) or f"{names[int(position)]}.{rest}" not in expected:
            return None
    return InceptionLayout(
        "pytorch_fid_wrapper",
        "looks like pytorch-fid's InceptionV3 feature extractor (keys blocks.<i>.<j>.*: Inception-v3 modules, "
        "normally the FID Inception's, regrouped into pooling blocks); it has no classifier, so there are no "
        "class probabilities to score",
    )


def _common_prefix_hint(keys: set[str]) -> str:
    """' (every key starts with 'net.'; ...)' when stripping one prefix would give torchvision's keys."""
    first = next(iter(keys), "")
    for cut in range(first.count(".")):
        prefix = ".".join(first.split(".")[: cut + 1]) + "."
        if all(key.startswith(prefix) for key in keys):
            stripped = {key[len(prefix):] for key in keys}
            aux = any(key.startswith("AuxLogits.") for key in stripped)
            if _key_differences(stripped, aux) == ([], []):
                return f" (every key starts with '{prefix}'; without it they would be torchvision's)"
    return ""


def _fid_inception_layout(keys: set[str]) -> InceptionLayout:
    counters = any(key.endswith(BATCH_COUNTER_SUFFIX) for key in keys)
    provenance = (
        "BatchNorm num_batches_tracked counters are present, as in a state_dict() of a pytorch-fid or "
        "torch-fidelity module"
        if counters
        else "BatchNorm num_batches_tracked counters are absent, as in the converted release file "
        "(torch-fidelity's util_convert_inception_weights.py writes none)"
    )
    return InceptionLayout(
        "fid_inception",
        f"looks like the FID Inception: TensorFlow's inception-2015-12-05 graph ported to PyTorch "
        f"(fc 2048->{FID_INCEPTION_CLASSES}, no auxiliary head), as shipped by pytorch-fid "
        "(pt_inception-2015-12-05-6726825d.pth) and torch-fidelity (weights-inception-2015-12-05-6726825d.pth, "
        "FeatureExtractorInceptionV3); its key names match torchvision's but its blocks do not (average pools "
        "that ignore padding, a max pool in Mixed_7c), so torchvision's inception_v3 would run a hybrid of the "
        f"two networks; {provenance}",
    )


def _classifier_classes(shapes: Mapping[str, tuple[int, ...] | None], aux_logits: bool) -> int | None:
    """Class count K when the heads are consistent K-class heads on torchvision's features, else None."""
    fc_shape = shapes.get("fc.weight")
    if not fc_shape:
        return None
    classes = fc_shape[0]
    wanted = {"fc.weight": (classes, 2048), "fc.bias": (classes,)}
    if aux_logits:
        wanted.update({"AuxLogits.fc.weight": (classes, 768), "AuxLogits.fc.bias": (classes,)})
    return classes if all(shapes.get(key) == shape for key, shape in wanted.items()) else None


def classify_inception_state_dict(state_dict: Mapping[str, Any]) -> InceptionLayout:
    """Say which Inception-v3 layout a state dict has, from its key set and tensor shapes."""
    keys = set(state_dict)
    wrapper = _pytorch_fid_wrapper_layout(keys)
    if wrapper is not None:
        return wrapper
    aux_logits = any(key.startswith("AuxLogits.") for key in keys)
    missing, unexpected = _key_differences(keys, aux_logits)
    if missing or unexpected:
        parts = [f"{len(missing)} expected key(s) missing ({_examples(missing)})"] if missing else []
        parts += [f"{len(unexpected)} unexpected key(s) ({_examples(unexpected)})"] if unexpected else []
        return InceptionLayout(
            "not_inception",
            f"is not an Inception-v3 in torchvision's layout: {'; '.join(parts)}{_common_prefix_hint(keys)}",
        )
    expected = torchvision_shapes(aux_logits)
    shapes = {key: _shape(value) for key, value in state_dict.items()}
    wrong = {key: shape for key, shape in shapes.items() if shape != expected[key]}
    body_wrong = sorted(set(wrong) - set(CLASSIFIER_KEYS))
    classes = _classifier_classes(shapes, aux_logits)
    if body_wrong or classes is None:
        shown = sorted(body_wrong or wrong)[:SHOWN_KEYS]
        detail = ", ".join(f"{key} {wrong[key]} (expected {expected[key]})" for key in shown)
        return InceptionLayout(
            "wrong_shapes",
            f"has torchvision inception_v3's key names but {len(wrong)} tensor(s) of other shapes: {detail}",
        )
    if classes == IMAGENET_CLASSES:
        aux = "with" if aux_logits else "without"
        return InceptionLayout(
            "torchvision", f"torchvision inception_v3, {IMAGENET_CLASSES} classes, {aux} auxiliary head", aux_logits
        )
    if classes == FID_INCEPTION_CLASSES and not aux_logits:
        return _fid_inception_layout(keys)
    return InceptionLayout(
        "wrong_classes",
        f"is an Inception-v3 classifier with {classes} classes, not torchvision's {IMAGENET_CLASSES} ImageNet "
        "classes; an IS over another label set is not the score this protocol names",
    )


def build_inception(weights_path: str, device: str = "cpu", expected_sha256: str | None = None):
    """torchvision's Inception-v3 with weights from a local state dict; returns (model, record).

    The state dict's layout is classified first and anything but torchvision's 1000-class
    inception_v3 is refused with a ValueError saying what the file looks like.
    """
    # deferred: torchvision (~1 s); train --help imports this module
    from torchvision.models import inception_v3

    path = require_weight_file(os.path.expanduser(weights_path), WEIGHTS_SETTING, "Inception-v3", expected_sha256)
    state_dict = load_state_dict_file(path)
    layout = classify_inception_state_dict(state_dict)
    if layout.kind != "torchvision":
        raise ValueError(
            f"'{path}' {layout.description}. {WEIGHTS_SETTING} must point to torchvision's ImageNet inception_v3 "
            "state dict (inception_v3_google-*.pth, 1000 classes)"
        )
    model = inception_v3(
        weights=None,
        # torchvision's published weights carry the auxiliary head; it is unused in eval mode.
        aux_logits=layout.aux_logits,
        init_weights=False,
        num_classes=IMAGENET_CLASSES,
        # Frames arrive in [-1, 1], which is exactly what transform_input=True would produce
        # from ImageNet-normalised input, so the conversion is skipped rather than done twice.
        transform_input=False,
    )
    model.load_state_dict(state_dict, strict=True)
    record = {**weight_file_record(path, DETECTOR_NAME), "detector_layout": layout.description}
    return model.eval().to(device), record


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


def split_sizes(num_videos: int, frames_per_video: int, splits: int, seed: int) -> tuple[int, int]:
    """(fewest frames, fewest distinct videos) in a split, for the shuffle inception_score_from_probs uses."""
    count = num_videos * frames_per_video
    order = split_permutation(count, seed)
    parts = [order[index * count // splits : (index + 1) * count // splits] for index in range(splits)]
    return min(len(part) for part in parts), min(len(set((part // frames_per_video).tolist())) for part in parts)


def split_warning(score: float, frames_per_split: int, videos_per_split: int) -> str | None:
    """A warning when the splits are too small for the score to tell models apart (module doc)."""
    if videos_per_split >= SAMPLES_PER_SCORE * score:
        return None
    return (f"{METRIC_NAME} {score:.3g} from splits of {frames_per_split} frames of at least {videos_per_split} "
            f"distinct videos: a split of n samples scores at most n and is biased low once n < "
            f"{SAMPLES_PER_SCORE}x the score, so this number reflects the split size as much as the model; "
            f"score more videos (>= {int(SAMPLES_PER_SCORE * score + 1)} distinct videos per split) "
            f"or fewer metric_settings.inception_score.splits")


def inception_score(videos: Any, settings: InceptionScoreSettings | None = None, model=None) -> dict[str, Any]:
    """IS (torchvision Inception-v3) of a batch of videos, frame level. Pass `model` to reuse a loaded network."""
    settings = settings or InceptionScoreSettings()
    videos = as_float_videos(videos)
    if model is None:
        model, record = build_inception(settings.weights_path, settings.device, settings.expected_sha256)
    else:
        record = {"detector": DETECTOR_NAME, "detector_file": None, "detector_sha256": None}
    probs = inception_probs(videos, model, settings)
    mean, std = inception_score_from_probs(probs, settings.splits, settings.seed)
    count, frames = int(videos.shape[0]), int(videos.shape[1])
    frames_per_split, videos_per_split = split_sizes(count, frames, settings.splits, settings.seed)
    warning = split_warning(mean, frames_per_split, videos_per_split)
    return {
        "inception_score_frame": mean,
        "inception_score_frame_std": std,
        "protocol": {
            "metric": METRIC_NAME,
            "comparable_to": NOT_COMPARABLE,
            "num_videos": count,
            "frames_per_video": frames,
            "num_frames_scored": int(probs.shape[0]),
            "frames_per_split": frames_per_split,
            "videos_per_split": videos_per_split,
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
        "warnings": [warning] if warning else [],
    }
