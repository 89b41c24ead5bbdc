"""A persistent per-file media index: probe each video once, reuse the result until the file changes.

The first scan of a data set opens every file (container metadata, every packet read but not
decoded, plus one decoded frame: together they catch cut-off and non-video files) and writes one
JSON line per file. Later scans read that
file line by line and probe again only files whose size or modification time changed. Entries
are small records (no frames are ever kept), so memory grows with the number of files only by a
few hundred bytes each, and the new index is streamed to a temporary file and renamed into
place, so an interrupted scan never leaves a half-written index behind.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import os
from collections.abc import Callable, Iterable
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path

import av
from PIL import Image

from ..quiet import progress
from .sources import is_image
from .video_io import DEFAULT_LIMITS, MediaLimits, VideoDecodeError, _open, check_media_limits, probe_video

log = logging.getLogger(__name__)
# Bumped when probing finds more (2: packets are read to catch cut-off files), so old indexes are redone.
INDEX_VERSION = 2


@dataclass
class IndexEntry:
    path: str
    size: int  # bytes; -1 when the file is missing
    mtime_ns: int
    kind: str  # "video" or "image"
    frames: int = 0
    fps: float = 0.0
    width: int = 0
    height: int = 0
    duration: float = 0.0
    decodable: bool = False
    error: str | None = None
    # Refused by the media limits, not for being broken: the header's geometry is recorded, so a
    # run with looser limits knows to probe the file properly instead of reusing the refusal.
    over_limits: bool = False


def _non_negative_int(value) -> bool:
    return type(value) is int and value >= 0


def _non_negative_float(value) -> bool:
    return type(value) in (int, float) and math.isfinite(value) and value >= 0


# What each field of a stored entry must hold; an entry that does not is probed again.
_FIELD_CHECKS: dict[str, Callable[[object], bool]] = {
    "path": lambda v: isinstance(v, str),
    "size": _non_negative_int,
    "mtime_ns": lambda v: type(v) is int,
    "kind": lambda v: v in ("video", "image"),
    "frames": _non_negative_int,
    "fps": _non_negative_float,
    "width": _non_negative_int,
    "height": _non_negative_int,
    "duration": _non_negative_float,
    "decodable": lambda v: type(v) is bool,
    "error": lambda v: v is None or isinstance(v, str),
    "over_limits": lambda v: type(v) is bool,
}
_REQUIRED = {f.name for f in fields(IndexEntry) if f.default is MISSING}


def entry_from_record(record) -> IndexEntry | None:
    """An :class:`IndexEntry` from a stored JSON record, or None when any field is missing, unknown
    or of the wrong type or range (``"fps": "abc"``, a negative size, a bool for a count): the index
    is a cache, and a bad line must cost a re-probe, never a crash in a later run."""
    if not isinstance(record, dict):
        return None
    keys = set(record)
    if not _REQUIRED <= keys <= set(_FIELD_CHECKS):  # a field missing, or one from another layout
        return None
    if not all(_FIELD_CHECKS[key](value) for key, value in record.items()):
        return None
    return IndexEntry(**record)


def _first_frame_decodes(path: str) -> tuple[str | None, int]:
    """(None, rotation) when a first frame decodes, else (the reason, 0). The rotation is the
    display-matrix angle phones write, which only decoded frames expose."""
    try:
        with _open(path) as container:
            for frame in container.decode(video=0):
                return None, int(getattr(frame, "rotation", 0) or 0)
        return "no decodable frames", 0
    except VideoDecodeError as exc:
        return exc.reason, 0
    except (av.error.FFmpegError, OSError, ValueError, RuntimeError) as exc:
        return f"decoding failed ({type(exc).__name__}: {exc})", 0


def _probe_image(entry: IndexEntry, limits: MediaLimits | None) -> IndexEntry:
    try:
        with Image.open(entry.path) as image:  # reads the header only
            entry.width, entry.height = image.size
            over = limits.violation(width=entry.width, height=entry.height) if limits is not None else None
            if over is not None:
                entry.error, entry.over_limits = over, True
                return entry
            image.load()  # a full decode: verify() alone misses truncated pixel data
    except Exception as exc:  # Pillow raises a zoo of types for hostile files: see image_error
        entry.error = image_error(exc)
        return entry
    entry.frames, entry.decodable = 1, True
    return entry


def image_error(exc: Exception) -> str:
    """The reason an image is unusable. Pillow signals broken or hostile files with OSError,
    SyntaxError, ValueError, struct.error, EOFError, zlib.error, DecompressionBombError (a plain
    Exception) and more: every one of them is a bad sample, never a reason to stop a run."""
    return f"unreadable image ({type(exc).__name__}: {exc})"


def probe_media(path: str, size: int, mtime_ns: int, limits: MediaLimits | None = DEFAULT_LIMITS) -> IndexEntry:
    """Metadata of one file, or ``decodable=False`` with the reason. A file over ``limits`` is
    refused from its header, before any frame is decoded."""
    entry = IndexEntry(path, size, mtime_ns, "image" if is_image(path) else "video")
    if size == 0:
        entry.error = "zero-byte file"
        return entry
    if entry.kind == "image":
        return _probe_image(entry, limits)
    info = probe_video(path, verify=True, limits=limits)  # reads the packets once: catches files cut off mid-way
    entry.frames, entry.fps, entry.width, entry.height = info.num_frames, info.fps, info.width, info.height
    entry.duration = info.duration
    if not info.decodable and limits is not None and check_media_limits(info, limits) is not None:
        entry.error, entry.over_limits = info.error, True
        return entry  # a bomb's first frame is exactly what must not be decoded
    entry.error, rotation = (info.error, 0) if not info.decodable else _first_frame_decodes(path)
    if rotation % 180:  # read_clip turns such frames upright: record the size as shown (for buckets)
        entry.width, entry.height = entry.height, entry.width
    entry.decodable = entry.error is None
    return entry


def index_file_for(index_dir: str | os.PathLike, name: str, root: str | os.PathLike) -> Path:
    """One index per (data set name, root): two copies of a data set never share entries."""
    digest = hashlib.sha1(str(Path(root).resolve()).encode()).hexdigest()[:10]
    return Path(index_dir) / f"{name}-{digest}.v{INDEX_VERSION}.jsonl"


def _read_index(path: Path) -> dict[str, dict]:
    entries: dict[str, dict] = {}
    if not path.is_file():
        return entries
    with path.open(encoding="utf-8", errors="replace") as handle:
        for line in handle:
            try:
                record = json.loads(line)
            except (ValueError, RecursionError):  # ValueError: also a number over Python's digit limit
                continue  # a damaged line only costs one re-probe
            if isinstance(record, dict) and isinstance(record.get("path"), str):
                entries[record["path"]] = record
    return entries


class VideoIndex:
    """``scan(paths)`` -> one :class:`IndexEntry` per path, probing only new or changed files.

    ``index_file=None`` keeps nothing between runs (every scan probes). ``probes`` and
    ``reused`` count what the last scan did. ``limits`` go to the default probe, and decide whether
    a stored refusal still holds.
    """

    def __init__(self, index_file: str | os.PathLike | None,
                 probe: Callable[[str, int, int], IndexEntry] | None = None,
                 limits: MediaLimits | None = DEFAULT_LIMITS):
        self.index_file = Path(index_file) if index_file else None
        self.limits = limits
        self.probe = probe or functools.partial(probe_media, limits=limits)
        self.probes = 0
        self.reused = 0

    def scan(self, paths: Iterable[str]) -> dict[str, IndexEntry]:
        previous = _read_index(self.index_file) if self.index_file else {}
        self.probes = self.reused = 0
        results: dict[str, IndexEntry] = {}
        writer = tmp = None
        if self.index_file:
            self.index_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.index_file.with_name(f".{self.index_file.name}.{os.getpid()}.tmp")
            writer = tmp.open("w", encoding="utf-8")
        try:
            paths = list(paths)
            for path in progress(paths, desc="index media", unit="file", leave=False, disable=len(paths) < 200):
                if path in results:
                    continue
                entry = self._entry(path, previous.pop(path, None))
                results[path] = entry
                if writer is not None and entry.size >= 0:  # missing files are not remembered
                    writer.write(json.dumps(asdict(entry)) + "\n")
            if writer is not None:
                writer.close()
                os.replace(tmp, self.index_file)
        finally:
            if writer is not None and not writer.closed:
                writer.close()
            if tmp is not None:
                tmp.unlink(missing_ok=True)
        log.info("index %s: %d probed, %d reused", self.index_file or "(in memory)", self.probes, self.reused)
        return results

    def _entry(self, path: str, cached: dict | None) -> IndexEntry:
        try:
            stat = os.stat(path)
        except OSError:
            return IndexEntry(path, -1, 0, "image" if is_image(path) else "video", error="missing file")
        entry = entry_from_record(cached) if cached is not None else None  # None: malformed, probe again
        if entry is not None and (entry.size, entry.mtime_ns) == (stat.st_size, stat.st_mtime_ns) \
                and self._still_refused_or_fine(entry):
            self.reused += 1
            return entry
        self.probes += 1
        return self.probe(path, stat.st_size, stat.st_mtime_ns)

    def _still_refused_or_fine(self, entry: IndexEntry) -> bool:
        """False for a file refused by an earlier run's limits that the current limits admit (it
        needs a real probe); a refusal that still holds gets the current limits' reason."""
        if not entry.over_limits:
            return True
        reason = check_media_limits(entry, self.limits) if self.limits is not None else None
        if reason is None:
            return False
        entry.error = reason
        return True
