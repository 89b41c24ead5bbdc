"""Video files in and out with PyAV.

Reading seeks to the keyframe before the wanted start and decodes forward only until the last
wanted frame, so sampling a 2-second clip from a 10-minute video costs about 2 seconds of
decoding, not 10 minutes. Frames are chosen by presentation time, which keeps variable-frame-rate
files correct.
"""

from __future__ import annotations

import math
import os
import random
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import torch
import torch.nn.functional as F


class VideoDecodeError(RuntimeError):
    def __init__(self, path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


class ShortClipError(VideoDecodeError):
    """The file is shorter than the requested clip and the policy is ``skip``."""


@dataclass
class VideoInfo:
    path: str
    num_frames: int
    fps: float
    width: int
    height: int
    duration: float
    decodable: bool = True
    error: str | None = None


def _as_uint8_frames(frames) -> np.ndarray:
    """Accept uint8 [F, H, W, 3] or float [F, C, H, W] in [-1, 1]; return uint8 [F, H, W, 3]."""
    if isinstance(frames, torch.Tensor):
        if frames.dtype == torch.uint8:
            return frames.cpu().numpy()
        pixels = ((frames.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        return pixels.permute(0, 2, 3, 1).cpu().numpy()
    array = np.asarray(frames)
    if array.dtype != np.uint8 or array.ndim != 4 or array.shape[-1] != 3:
        raise ValueError(f"expected uint8 frames [F, H, W, 3], got {array.dtype} {array.shape}")
    return array


def write_video(path: str | os.PathLike, frames, fps: float = 8, *, crf: int = 18) -> Path:
    """Write H.264 mp4 (or VP9 for .webm), atomically: a temp file renamed into place."""
    path = Path(path)
    array = _as_uint8_frames(frames)
    _, height, width, _ = array.shape
    # yuv420p needs even sizes: pad by repeating the last row/column.
    padded = np.pad(array, ((0, 0), (0, height % 2), (0, width % 2), (0, 0)), mode="edge")
    codec = "libvpx-vp9" if path.suffix.lower() == ".webm" else "libx264"
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with av.open(str(tmp), mode="w") as container:
            stream = container.add_stream(codec, rate=round(fps))
            stream.width, stream.height = padded.shape[2], padded.shape[1]
            stream.pix_fmt = "yuv420p"
            stream.options = {"crf": str(crf)} if codec == "libx264" else {"crf": str(crf + 12), "b": "0"}
            for frame in padded:
                for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _open(path):
    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError, ValueError) as exc:
        raise VideoDecodeError(path, f"cannot open ({type(exc).__name__}: {exc})") from exc
    if not container.streams.video:
        container.close()
        raise VideoDecodeError(path, "no video stream")
    return container


def _stream_timing(container, stream) -> tuple[float, float]:
    fps = float(stream.average_rate or stream.guessed_rate or 0) or 25.0
    if stream.duration is not None and stream.time_base is not None:
        duration = float(stream.duration * stream.time_base)
    elif container.duration is not None:
        duration = container.duration / av.time_base
    else:
        duration = (stream.frames or 0) / fps
    return fps, duration


def probe_video(path: str | os.PathLike) -> VideoInfo:
    """Metadata only (no decoding), or ``decodable=False`` with the reason."""
    try:
        with _open(path) as container:
            stream = container.streams.video[0]
            fps, duration = _stream_timing(container, stream)
            frames = stream.frames or round(duration * fps)
            return VideoInfo(str(path), int(frames), fps, stream.codec_context.width,
                             stream.codec_context.height, duration)
    except VideoDecodeError as exc:
        return VideoInfo(str(path), 0, 0.0, 0, 0, 0.0, decodable=False, error=exc.reason)


def _decode_at_times(container, stream, times: list[float], tolerance: float) -> list[np.ndarray]:
    """For each wanted time, the last frame shown at or before it (decode forward once)."""
    if times[0] > tolerance:
        container.seek(int(times[0] / stream.time_base), stream=stream, backward=True, any_frame=False)
    chosen: list = [None] * len(times)
    previous = None
    j = 0
    for frame in container.decode(stream):
        if frame.time is None:
            continue
        while j < len(times) and frame.time > times[j] + tolerance:
            chosen[j] = previous if previous is not None else frame
            j += 1
        if j == len(times):
            break
        previous = frame
    while j < len(times):  # stream ended: hold the last frame
        chosen[j] = previous
        j += 1
    if any(f is None for f in chosen):
        raise VideoDecodeError(getattr(container, "name", "?"), "no decodable frames")
    cache: dict[int, np.ndarray] = {}
    return [cache.setdefault(id(f), f.to_ndarray(format="rgb24")) for f in chosen]


def _decode_all(container, stream) -> list[np.ndarray]:
    return [f.to_ndarray(format="rgb24") for f in container.decode(stream)]


def resize_and_crop(frames: torch.Tensor, height: int, width: int, *, center: bool,
                    rng: random.Random | None = None) -> torch.Tensor:
    """[F, C, H, W] float: scale so the short side covers the target, then crop to height x width."""
    _, _, h, w = frames.shape
    scale = max(height / h, width / w)
    new_h, new_w = max(height, round(h * scale)), max(width, round(w * scale))
    if (new_h, new_w) != (h, w):
        frames = F.interpolate(frames, size=(new_h, new_w), mode="bilinear", antialias=True, align_corners=False)
    if center or rng is None:
        top, left = (new_h - height) // 2, (new_w - width) // 2
    else:
        top, left = rng.randint(0, new_h - height), rng.randint(0, new_w - width)
    return frames[:, :, top : top + height, left : left + width]


def read_clip(path: str | os.PathLike, num_frames: int, height: int, width: int, *, frame_stride: int = 1,
              target_fps: float | None = None, start: str = "center", rng: random.Random | None = None,
              hflip: bool = False, short_clip: str = "loop") -> torch.Tensor:
    """Sample ``num_frames`` frames -> float32 [F, C, H, W] in [-1, 1].

    ``frame_stride`` steps in source frames (or ``target_fps`` resamples in time); ``start`` is
    "random" (needs ``rng``) or "center". Files shorter than the clip follow ``short_clip``:
    "loop" wraps around, "pad" repeats the last frame, "skip" raises :class:`ShortClipError`.
    """
    if short_clip not in ("loop", "pad", "skip"):
        raise ValueError(f"short_clip={short_clip!r}; valid: loop, pad, skip")
    try:
        with _open(path) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            fps, duration = _stream_timing(container, stream)
            step = 1.0 / target_fps if target_fps else frame_stride / fps
            last_start = duration - 1.0 / fps  # presentation time of the last frame
            span = (num_frames - 1) * step
            if last_start + 1e-6 >= span:
                slack = max(0.0, last_start - span)
                offset = rng.uniform(0.0, slack) if start == "random" and rng is not None else slack / 2
                # Snap to the source frame grid so a stride of k frames picks every k-th frame.
                offset = min(slack, math.floor(offset * fps + 1e-6) / fps)
                times = [offset + k * step for k in range(num_frames)]
                arrays = _decode_at_times(container, stream, times, tolerance=0.5 / fps)
            else:
                if short_clip == "skip":
                    raise ShortClipError(path, f"{duration:.2f}s is shorter than the {span:.2f}s clip")
                decoded = _decode_all(container, stream)
                if not decoded:
                    raise VideoDecodeError(path, "no decodable frames")
                stride = max(1, round(step * fps))
                wanted = [k * stride for k in range(num_frames)]
                pick = (lambda i: i % len(decoded)) if short_clip == "loop" else (lambda i: min(i, len(decoded) - 1))
                arrays = [decoded[pick(i)] for i in wanted]
    except VideoDecodeError:
        raise
    except (av.error.FFmpegError, OSError, ValueError, RuntimeError) as exc:
        raise VideoDecodeError(path, f"decoding failed ({type(exc).__name__}: {exc})") from exc
    frames = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float()
    frames = resize_and_crop(frames, height, width, center=start != "random", rng=rng)
    if hflip:
        frames = frames.flip(-1)
    return (frames / 127.5 - 1.0).contiguous()
