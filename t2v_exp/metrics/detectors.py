"""Shared plumbing for the metrics: video input conversion, local weight files, checksums.

Nothing here ever downloads. A detector is a file on disk whose path is a setting; when the
file is missing we raise `MissingWeightsError`, which carries the setting to change so the
suite can report the metric as skipped with a concrete fix instead of crashing or scoring 0.
"""

from __future__ import annotations

import hashlib
import inspect
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch


class MissingWeightsError(FileNotFoundError):
    """A detector weight file is not on disk; `setting` is the config key that points to it."""

    def __init__(self, path: str | os.PathLike | None, setting: str, what: str, fix: str | None = None):
        self.path = None if path is None else str(path)
        self.setting = setting
        shown = "<unset>" if path is None else f"'{path}'"
        self.reason = f"{what} weights not found at {shown} (no downloads are attempted)"
        # `+` because metric_settings is an open dict in the Hydra config: a new key needs it.
        self.fix = fix or f"set +{setting}=/path/to/the/file"
        super().__init__(f"{self.reason}; {self.fix}")


# ----------------------------------------------------------------------------- videos


def as_float_videos(videos: Any) -> torch.Tensor:
    """Return videos as float32 [N, F, C, H, W] in [-1, 1].

    Accepts the project convention (float [N, F, C, H, W] in [-1, 1], returned as float32) or
    decoded uint8 frames [N, F, H, W, C] (mapped with 2x/255 - 1, the FVD protocol's scaling).
    A single video (4-D) is not accepted: a silent unsqueeze would turn a batch-size bug into a
    wrong score.
    """
    if not isinstance(videos, torch.Tensor):
        videos = torch.as_tensor(videos)
    if videos.ndim != 5:
        raise ValueError(
            f"videos must be 5-D ([N, F, C, H, W] float or [N, F, H, W, C] uint8), got shape {tuple(videos.shape)}"
        )
    if videos.dtype == torch.uint8:
        if videos.shape[-1] not in (1, 3):
            raise ValueError(f"uint8 videos must be [N, F, H, W, C] with C in (1, 3), got {tuple(videos.shape)}")
        return videos.permute(0, 1, 4, 2, 3).float() * (2.0 / 255.0) - 1.0
    if not videos.is_floating_point():
        raise ValueError(f"videos must be float in [-1, 1] or uint8, got dtype {videos.dtype}")
    if videos.shape[2] not in (1, 3):
        raise ValueError(f"float videos must be [N, F, C, H, W] with C in (1, 3), got {tuple(videos.shape)}")
    return videos.float()


def quantize_like_uint8(videos: torch.Tensor) -> torch.Tensor:
    """Round [-1, 1] videos to the 256 levels a saved uint8 video would have.

    Published FVD/IS numbers are computed from decoded uint8 frames; rounding generated float
    frames the same way keeps our numbers comparable to theirs.
    """
    levels = torch.round((videos.clamp(-1.0, 1.0) + 1.0) * 127.5)
    return levels / 127.5 - 1.0


def gray_to_rgb(frames: torch.Tensor, channel_dim: int) -> torch.Tensor:
    """Repeat a single channel three times; the detectors are RGB networks."""
    if frames.shape[channel_dim] == 3:
        return frames
    repeats = [1] * frames.ndim
    repeats[channel_dim] = 3
    return frames.repeat(*repeats)


def short_side_size(height: int, width: int, target: int) -> tuple[int, int]:
    """Size after resizing the short side to `target`, rounding the long side like torchvision's Resize."""
    if height <= width:
        return target, max(target, int(target * width / height))
    return max(target, int(target * height / width)), target


def center_crop(frames: torch.Tensor, size: int) -> torch.Tensor:
    """Central size x size window of [..., H, W], offsets rounded like torchvision's CenterCrop."""
    height, width = frames.shape[-2:]
    top = int(round((height - size) / 2.0))
    left = int(round((width - size) / 2.0))
    return frames[..., top : top + size, left : left + size]


# ----------------------------------------------------------------------------- files


_SHA256_CACHE: dict[tuple[str, int, int], str] = {}


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, cached by (path, size, mtime): detector files are hundreds of MB."""
    resolved = Path(path).resolve()
    stat = resolved.stat()
    key = (str(resolved), stat.st_size, stat.st_mtime_ns)
    if key not in _SHA256_CACHE:
        digest = hashlib.sha256()
        with open(resolved, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        _SHA256_CACHE[key] = digest.hexdigest()
    return _SHA256_CACHE[key]


def require_weight_file(
    path: str | os.PathLike | None, setting: str, what: str, expected_sha256: str | None = None
) -> Path:
    """Check a weight file exists (and optionally matches a checksum) before any heavy work."""
    if path is None or str(path) == "" or not Path(path).expanduser().is_file():
        raise MissingWeightsError(path, setting, what)
    resolved = Path(path).expanduser()
    if expected_sha256:
        actual = sha256_file(resolved)
        if actual.lower() != expected_sha256.lower():
            raise ValueError(
                f"{what} weights at '{resolved}' have sha256 {actual}, expected {expected_sha256}; "
                f"point {setting} at the right file or clear the expected checksum"
            )
    return resolved


def weight_file_record(path: Path, name: str) -> dict[str, Any]:
    """Protocol fields identifying a detector file, written next to every score."""
    return {"detector": name, "detector_file": str(path), "detector_sha256": sha256_file(path)}


def load_state_dict_file(path: Path) -> dict[str, torch.Tensor]:
    """Load a state dict saved by torch.save, unwrapping common containers.

    Checkpoints in the wild nest the tensors under "state_dict" or "model", and DataParallel
    runs prefix every key with "module."; both are undone so a strict load can succeed.
    `weights_only=True` because a weight file must never be able to run code.
    """
    loaded = torch.load(path, map_location="cpu", weights_only=True)
    for container in ("state_dict", "model"):
        if isinstance(loaded, Mapping) and isinstance(loaded.get(container), Mapping):
            loaded = loaded[container]
    if not isinstance(loaded, Mapping):
        raise ValueError(f"'{path}' does not hold a state dict (got {type(loaded).__name__})")
    if loaded and all(key.startswith("module.") for key in loaded):
        loaded = {key[len("module."):]: value for key, value in loaded.items()}
    return dict(loaded)


def load_torchscript(path: Path, device: str | torch.device = "cpu") -> torch.jit.ScriptModule:
    try:
        module = torch.jit.load(str(path), map_location=device)
    except RuntimeError as error:
        raise ValueError(f"'{path}' is not a TorchScript archive ({error.__class__.__name__}: {error})") from error
    return module.eval()


# ----------------------------------------------------------------------------- calling


def forward_argument_names(module: torch.nn.Module) -> list[str] | None:
    """Names of a module's forward arguments (TorchScript schema or Python signature).

    None when they cannot be read, in which case callers pass their keyword arguments as is.
    """
    forward = getattr(module, "forward", None)
    schema = getattr(forward, "schema", None)
    if schema is not None:
        return [argument.name for argument in schema.arguments if argument.name != "self"]
    try:
        parameters = inspect.signature(forward).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(parameter.kind is inspect.Parameter.VAR_KEYWORD for parameter in parameters):
        return None
    return [parameter.name for parameter in parameters]


def supported_kwargs(module: torch.nn.Module, wanted: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Split `wanted` keyword arguments into those the module accepts and those it does not.

    Different ports of the same detector expose different switches; passing an unknown keyword
    to a TorchScript module is a hard error, so the unsupported ones are dropped and reported.
    """
    names = forward_argument_names(module)
    if names is None:
        return dict(wanted), []
    accepted = {key: value for key, value in wanted.items() if key in names}
    dropped = [key for key in wanted if key not in names]
    return accepted, dropped
