"""Video files in and out with PyAV.

Reading seeks to the keyframe before the wanted start and decodes forward only until the last
wanted frame, so sampling a 2-second clip from a 10-minute video costs about 2 seconds of
decoding, not 10 minutes. Frames are chosen by presentation time, which keeps variable-frame-rate
files correct, and times are measured from the stream's first timestamp, which is not always 0
(trimmed copies, MPEG-TS, some Matroska files).
"""

from __future__ import annotations

import math
import os
import random
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ConfigError

Rng = random.Random | np.random.Generator
# Frames may run out this long before the header's end without the file counting as truncated:
# variable-frame-rate files can show their last frame longer than one average frame.
TRUNCATION_SLACK_S = 0.25


class VideoDecodeError(RuntimeError):
    def __init__(self, path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


class ShortClipError(VideoDecodeError):
    """The file is shorter than the requested clip and the policy is ``skip``."""


@dataclass(frozen=True)
class MediaLimits:
    """Per-file limits, checked against the container header before any frame is decoded.

    A decoded frame costs about 4 bytes per pixel (and a float clip 12 per pixel per frame), so a
    few hundred bytes of GIF or PNG declaring a 16000x16000 canvas would cost gigabytes. The
    defaults admit real sources up to 4096x4096 (4K UHD and DCI 4K included) and up to 6 hours,
    and reject what only a bomb or a broken header declares.
    """

    max_pixels_per_frame: int = 4096 * 4096
    max_frames: int = 2_000_000  # over 9 h at 60 fps
    max_duration_s: float = 6 * 3600.0

    def __post_init__(self):
        for key in ("max_pixels_per_frame", "max_frames", "max_duration_s"):
            value = getattr(self, key)
            valid = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
            if not valid or value <= 0:
                raise ConfigError(f"dataset.{key}={value!r} must be a positive number; "
                                  f"default: dataset.{key}={getattr(MediaLimits, key)}")

    def violation(self, *, width: int, height: int, frames: int = 0, duration: float = 0.0) -> str | None:
        """Why a file of this header geometry is refused, or None when it is within the limits."""
        pixels = int(width) * int(height)
        if pixels > self.max_pixels_per_frame:
            return (f"frame of {width}x{height} = {pixels:,} pixels exceeds dataset.max_pixels_per_frame="
                    f"{self.max_pixels_per_frame} (a decompression bomb, or raise it: "
                    f"dataset.max_pixels_per_frame={pixels})")
        if frames > self.max_frames:
            return (f"{frames:,} frames exceed dataset.max_frames={self.max_frames} "
                    f"(raise it if real: dataset.max_frames={frames})")
        if duration > self.max_duration_s:
            return (f"duration {duration:g}s exceeds dataset.max_duration_s={self.max_duration_s:g} "
                    f"(raise it if real: dataset.max_duration_s={math.ceil(duration)})")
        return None


DEFAULT_LIMITS = MediaLimits()


def check_media_limits(info, limits: MediaLimits | None = None) -> str | None:
    """Why a probed file (a :class:`VideoInfo`, or anything with width, height, duration and
    ``num_frames`` or ``frames``) is over ``limits``, or None. Costs nothing: header values only."""
    frames = getattr(info, "num_frames", getattr(info, "frames", 0))
    return (limits or DEFAULT_LIMITS).violation(width=info.width, height=info.height, frames=frames or 0,
                                                duration=info.duration or 0.0)


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


def _uniform(rng: Rng, low: float, high: float) -> float:
    return float(rng.uniform(low, high))


def _randint(rng: Rng, low: int, high: int) -> int:
    """Inclusive on both ends, for either kind of generator."""
    if isinstance(rng, np.random.Generator):
        return int(rng.integers(low, high + 1))
    return rng.randint(low, high)


def _as_uint8_frames(frames) -> np.ndarray:
    """Accept uint8 [F, H, W, 3] or float [F, C, H, W] in [-1, 1]; return uint8 [F, H, W, 3]."""
    if isinstance(frames, torch.Tensor):
        if frames.dtype == torch.uint8:
            channels_first = frames.ndim == 4 and frames.shape[1] == 3 and frames.shape[-1] != 3
            return _as_uint8_frames((frames.permute(0, 2, 3, 1) if channels_first else frames).cpu().numpy())
        pixels = ((frames.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        return pixels.permute(0, 2, 3, 1).cpu().numpy()
    array = np.asarray(frames)
    if array.dtype != np.uint8 or array.ndim != 4 or array.shape[-1] != 3:
        raise ValueError(f"expected uint8 frames [F, H, W, 3], got {array.dtype} {array.shape}")
    return array


def write_video(path: str | os.PathLike, frames, fps: float = 8, codec: str | None = None, *,
                crf: int = 18, threads: int = 1) -> Path:
    """Write H.264 mp4 (VP9 when the path ends in .webm, unless ``codec`` says otherwise), atomically:
    a temp file in the same folder, renamed into place, so a reader never sees half a file.

    ``threads=1`` makes x264's output a function of the frames alone: its threaded modes pick
    slices from the CPU count, so the same clip written on a 2-core and a 16-core machine (or
    under another CPU affinity) differed byte for byte, and so did weights trained on it. The
    clips written here are small; one thread costs next to nothing.
    """
    path = Path(path)
    array = _as_uint8_frames(frames)
    if len(array) == 0:
        raise ValueError(f"{path}: no frames to write")
    _, height, width, _ = array.shape
    # yuv420p needs even sizes: pad by repeating the last row/column.
    padded = np.pad(array, ((0, 0), (0, height % 2), (0, width % 2), (0, 0)), mode="edge")
    codec = codec or ("libvpx-vp9" if path.suffix.lower() == ".webm" else "libx264")
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")
    path.parent.mkdir(parents=True, exist_ok=True)
    # Fractional rates (29.97 = 30000/1001) stay exact instead of rounding to 30.
    rate = Fraction(fps).limit_denominator(1001)
    try:
        with av.open(str(tmp), mode="w") as container:
            stream = container.add_stream(codec, rate=rate)
            stream.width, stream.height = padded.shape[2], padded.shape[1]
            stream.pix_fmt = "yuv420p"
            if codec == "libx264":
                stream.options = {"crf": str(crf), "threads": str(threads)}
            elif codec == "libvpx-vp9":
                # Constant-quality mode; VP9's crf scale is coarser than x264's, hence the shift.
                stream.options = {"crf": str(crf + 12), "b": "0"}
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


@dataclass
class _Timing:
    fps: float
    start: float  # presentation time of the first frame, seconds
    duration: float  # seconds from the first frame to the end of the last
    frames: int  # 0 when the container does not say
    demuxed: bool = False  # the packets were read (the container must seek before decoding)


def clip_fits(duration: float, fps: float, num_frames: int, step: float) -> bool:
    """Whether ``num_frames`` frames ``step`` seconds apart fit in a file of ``duration`` seconds.

    The last frame starts one frame before the end. Matroska/WebM store milliseconds, so a 12 fps
    file's end can land a fraction of a millisecond early: a quarter frame of slack keeps a file
    with exactly enough frames from being called short (frame picking tolerates half a frame).
    """
    return duration - 0.75 / fps >= (num_frames - 1) * step


def _demux_timing(container, stream, fps: float) -> _Timing:
    """Frame count, first time and end time from the packets: reads the file, decodes nothing."""
    count, first, end = 0, None, None
    base = stream.time_base
    for packet in container.demux(stream):
        if packet.pts is None:  # the flush packet at the end, or a damaged one
            continue
        count += 1
        begin = float(packet.pts * base)
        finish = float((packet.pts + packet.duration) * base) if packet.duration else begin + 1.0 / fps
        first = begin if first is None else min(first, begin)
        end = finish if end is None else max(end, finish)
    if first is None:
        return _Timing(fps, 0.0, 0.0, 0, demuxed=True)
    return _Timing(fps, first, end - first, count, demuxed=True)


def _stream_timing(container, stream, *, exact: bool = False) -> _Timing:
    """Timing from the container header, reading the packets where the header is missing or
    ambiguous (``exact`` also when it only lacks the frame count).

    Matroska/WebM headers hold no per-stream duration, and their segment duration counts from 0,
    not from the first timestamp, so a file whose first frame is at 2 s reports 2 s too much.
    """
    fps = float(stream.average_rate or stream.guessed_rate or stream.base_rate or 0) or 25.0
    base = stream.time_base
    if stream.start_time is not None and base is not None:
        start = float(stream.start_time * base)
    elif container.start_time is not None:
        start = container.start_time / av.time_base
    else:
        start = 0.0
    frames = int(stream.frames or 0)
    if stream.duration is not None and base is not None:
        duration = float(stream.duration * base)
    elif container.duration is not None and start == 0.0 and not (exact and frames == 0):
        duration = container.duration / av.time_base
    else:
        return _demux_timing(container, stream, fps)
    if exact and frames == 0:
        return _demux_timing(container, stream, fps)
    return _Timing(fps, start, duration, frames)


def _header_end(container, stream, timing: _Timing) -> float | None:
    """Where the header says the stream ends (absolute seconds), when it says so unambiguously."""
    if stream.duration is not None and stream.time_base is not None:
        return timing.start + float(stream.duration * stream.time_base)
    if container.duration is not None and timing.start == 0.0:
        return container.duration / av.time_base
    return None


def _header_violation(stream, timing: _Timing | None, limits: MediaLimits | None) -> str | None:
    """``limits`` against what the header declares: the frame size (known once the file is open),
    then, given ``timing``, frames and duration. Reading the timing reads packets at most; no frame
    is decoded before this check passes."""
    if limits is None:
        return None
    width, height = stream.codec_context.width, stream.codec_context.height
    if timing is None:
        return limits.violation(width=width, height=height)
    return limits.violation(width=width, height=height, frames=timing.frames, duration=timing.duration)


def probe_video(path: str | os.PathLike, *, verify: bool = False,
                limits: MediaLimits | None = DEFAULT_LIMITS) -> VideoInfo:
    """Container metadata (frames counted from packets where the header has no count; nothing is
    decoded), or ``decodable=False`` with the reason.

    ``verify`` also reads every packet (still decoding nothing) and calls the file truncated when
    they stop well before the header's end: a download cut short keeps a header promising the
    whole video. It costs one read of the file, which the media index does once per file.
    A file over ``limits`` (None: no limits) is refused from its header (an oversized frame before
    any packet is read): ``decodable=False`` with the reason, the header's geometry kept.
    """
    try:
        with _open(path) as container:
            stream = container.streams.video[0]
            width, height = stream.codec_context.width, stream.codec_context.height
            over = _header_violation(stream, None, limits)
            timing = _stream_timing(container, stream, exact=over is None)
            info = VideoInfo(str(path), timing.frames, timing.fps, width, height, timing.duration)
            over = over or _header_violation(stream, timing, limits)
            if over is not None:  # the header's geometry is kept: a later, looser limit can admit it
                info.decodable, info.error = False, over
                return info
            if verify:
                header_end = _header_end(container, stream, timing)
                packets = timing if timing.demuxed else _demux_timing(container, stream, timing.fps)
                packets_end = packets.start + packets.duration
                if packets.frames == 0:
                    info.decodable, info.error = False, "no video packets"
                elif header_end is not None and header_end - packets_end > max(TRUNCATION_SLACK_S, 1.0 / timing.fps):
                    info.decodable = False
                    info.error = (f"truncated: packets stop at {packets_end:.2f}s, the header says "
                                  f"{header_end:.2f}s ({packets.frames} frames present)")
            return info
    except VideoDecodeError as exc:
        return VideoInfo(str(path), 0, 0.0, 0, 0, 0.0, decodable=False, error=exc.reason)
    except (av.error.FFmpegError, OSError, ValueError, RuntimeError) as exc:
        return VideoInfo(str(path), 0, 0.0, 0, 0, 0.0, decodable=False,
                         error=f"unreadable ({type(exc).__name__}: {exc})")


def _decode_at_times(container, stream, times: list[float], tolerance: float, *, seek: bool,
                     last_frame_time: float) -> list:
    """For each wanted (absolute) time, the last frame shown at or before it (decode forward once).

    ``last_frame_time`` is where the header says the last frame is: a stream that stops well
    before it was cut off (a download without its tail), and holding its last frame for the rest
    of the clip would hand training a frozen clip, so that is an error.
    """
    if seek:
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
    if j < len(times):
        stopped = previous.time if previous is not None else None
        if stopped is None or last_frame_time - stopped > max(TRUNCATION_SLACK_S, 2 * tolerance):
            where = "no frame" if stopped is None else f"the last frame at {stopped:.2f}s"
            raise VideoDecodeError(getattr(container, "name", "?"),
                                   f"truncated: {where} decodes, the header promises frames until "
                                   f"{last_frame_time:.2f}s")
    while j < len(times):  # stream ended a moment early (rounding, VFR): hold the last frame
        chosen[j] = previous
        j += 1
    return chosen


def _decode_all(container, stream) -> list:
    return list(container.decode(stream))


def _to_arrays(frames: list) -> list[np.ndarray]:
    """RGB arrays, upright: the display-matrix rotation phones write is applied, and a frame
    picked twice is converted once."""
    cache: dict[int, np.ndarray] = {}
    arrays = []
    for frame in frames:
        if id(frame) not in cache:
            array = frame.to_ndarray(format="rgb24")
            # frame.rotation is the counter-clockwise angle the display applies; rot90 turns
            # counter-clockwise too.
            quarter_turns = round((getattr(frame, "rotation", 0) or 0) / 90) % 4
            cache[id(frame)] = np.rot90(array, quarter_turns) if quarter_turns else array
        arrays.append(cache[id(frame)])
    return arrays


def resize_and_crop(frames: torch.Tensor, height: int, width: int, *, center: bool,
                    rng: Rng | None = None) -> torch.Tensor:
    """[F, C, H, W] float: scale so the short side covers the target, then crop to height x width."""
    _, _, h, w = frames.shape
    scale = max(height / h, width / w)
    new_h, new_w = max(height, round(h * scale)), max(width, round(w * scale))
    if (new_h, new_w) != (h, w):
        frames = F.interpolate(frames, size=(new_h, new_w), mode="bilinear", antialias=True, align_corners=False)
    if center or rng is None:
        top, left = (new_h - height) // 2, (new_w - width) // 2
    else:
        top, left = _randint(rng, 0, new_h - height), _randint(rng, 0, new_w - width)
    return frames[:, :, top : top + height, left : left + width]


def read_clip(path: str | os.PathLike, num_frames: int, height: int, width: int, *, frame_stride: int | None = None,
              target_fps: float | None = None, start: str = "center", rng: Rng | None = None,
              hflip: bool = False, short_clip: str = "loop",
              limits: MediaLimits | None = DEFAULT_LIMITS) -> torch.Tensor:
    """Sample ``num_frames`` frames -> float32 [F, C, H, W] in [-1, 1].

    ``frame_stride`` steps in source frames (default 1), or ``target_fps`` resamples in time;
    ``start`` is "random" (needs ``rng``: ``random.Random`` or ``np.random.Generator``) or
    "center". With "random" the crop is random too, else centred. Files shorter than the clip
    follow ``short_clip``: "loop" wraps around, "pad" repeats the last frame, "skip" raises
    :class:`ShortClipError`. Unreadable files, and files whose header is over ``limits``
    (checked before any frame is decoded; None: no limits), raise :class:`VideoDecodeError`.
    """
    if short_clip not in ("loop", "pad", "skip"):
        raise ValueError(f"short_clip={short_clip!r}; valid: loop, pad, skip")
    if start not in ("random", "center"):
        raise ValueError(f"start={start!r}; valid: random, center")
    if num_frames < 1 or height < 1 or width < 1:
        raise ValueError(f"num_frames, height, width must be positive, got {num_frames}, {height}, {width}")
    try:
        with _open(path) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            over = _header_violation(stream, None, limits)
            if over is not None:
                raise VideoDecodeError(path, over)
            timing = _stream_timing(container, stream)
            over = _header_violation(stream, timing, limits)
            if over is not None:
                raise VideoDecodeError(path, over)
            fps = timing.fps
            step = 1.0 / target_fps if target_fps else (frame_stride or 1) / fps
            last_start = timing.duration - 1.0 / fps  # time of the last frame, from the first
            span = (num_frames - 1) * step
            if clip_fits(timing.duration, fps, num_frames, step):
                slack = max(0.0, last_start - span)
                offset = _uniform(rng, 0.0, slack) if start == "random" and rng is not None else slack / 2
                # Snap to the source frame grid so a stride of k frames picks every k-th frame.
                offset = min(slack, math.floor(offset * fps + 1e-6) / fps)
                times = [timing.start + offset + k * step for k in range(num_frames)]
                tolerance = 0.5 / fps
                picked = _decode_at_times(container, stream, times, tolerance,
                                          seek=timing.demuxed or offset > tolerance,
                                          last_frame_time=timing.start + last_start)
            else:
                if short_clip == "skip":
                    raise ShortClipError(path, f"{timing.duration:.2f}s is shorter than the {span:.2f}s clip")
                if timing.demuxed:
                    container.seek(stream.start_time or 0, stream=stream, backward=True, any_frame=False)
                decoded = _decode_all(container, stream)
                if not decoded:
                    raise VideoDecodeError(path, "no decodable frames")
                stride = max(1, round(step * fps))
                wanted = [k * stride for k in range(num_frames)]
                pick = (lambda i: i % len(decoded)) if short_clip == "loop" else (lambda i: min(i, len(decoded) - 1))
                picked = [decoded[pick(i)] for i in wanted]
            arrays = _to_arrays(picked)
    except VideoDecodeError:
        raise
    except (av.error.FFmpegError, OSError, ValueError, RuntimeError) as exc:
        raise VideoDecodeError(path, f"decoding failed ({type(exc).__name__}: {exc})") from exc
    frames = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float()
    frames = resize_and_crop(frames, height, width, center=start != "random", rng=rng)
    if hflip:
        frames = frames.flip(-1)
    return (frames / 127.5 - 1.0).contiguous()
