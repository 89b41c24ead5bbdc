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

import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import av

from .sources import is_image
from .video_io import VideoDecodeError, _open, probe_video

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


def _probe_image(entry: IndexEntry) -> IndexEntry:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(entry.path) as image:
            image.load()  # a full decode: verify() alone misses truncated pixel data
            entry.width, entry.height = image.size
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        entry.error = f"unreadable image ({type(exc).__name__}: {exc})"
        return entry
    entry.frames, entry.decodable = 1, True
    return entry


def probe_media(path: str, size: int, mtime_ns: int) -> IndexEntry:
    """Metadata of one file, or ``decodable=False`` with the reason."""
    entry = IndexEntry(path, size, mtime_ns, "image" if is_image(path) else "video")
    if size == 0:
        entry.error = "zero-byte file"
        return entry
    if entry.kind == "image":
        return _probe_image(entry)
    info = probe_video(path, verify=True)  # reads the packets once: catches files cut off mid-way
    entry.frames, entry.fps, entry.width, entry.height = info.num_frames, info.fps, info.width, info.height
    entry.duration = info.duration
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
            except json.JSONDecodeError:
                continue  # a damaged line only costs one re-probe
            if isinstance(record, dict) and isinstance(record.get("path"), str):
                entries[record["path"]] = record
    return entries


class VideoIndex:
    """``scan(paths)`` -> one :class:`IndexEntry` per path, probing only new or changed files.

    ``index_file=None`` keeps nothing between runs (every scan probes). ``probes`` and
    ``reused`` count what the last scan did.
    """

    def __init__(self, index_file: str | os.PathLike | None,
                 probe: Callable[[str, int, int], IndexEntry] = probe_media):
        self.index_file = Path(index_file) if index_file else None
        self.probe = probe
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
            for path in paths:
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
        if cached and cached.get("size") == stat.st_size and cached.get("mtime_ns") == stat.st_mtime_ns:
            try:
                entry = IndexEntry(**cached)
                self.reused += 1
                return entry
            except TypeError:
                pass  # an entry from an older layout: probe again
        self.probes += 1
        return self.probe(path, stat.st_size, stat.st_mtime_ns)
