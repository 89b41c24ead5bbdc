"""``video_folder``: your own directory of videos (and optionally still images) with captions.

Captions come from, in this order of precedence:
1. ``prompts_file`` + ``videos_file``: two line-aligned text files (line i captions video i);
2. ``metadata_file`` (or ``metadata.jsonl`` / ``metadata.csv`` found in the root): one row per
   video, columns ``path_column`` and ``caption_column`` (a JSONL caption may be a list);
3. sidecars: ``clip.txt`` beside ``clip.mp4``.

Paths named in metadata must stay inside ``root`` (no absolute paths, no ``..``) unless
``allow_outside_root`` is set; the others are bad samples with the reason.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from ..errors import ConfigError
from .datasets import IndexedClipDataset
from .sources import (
    Problem,
    Sample,
    media_files,
    read_line_aligned,
    read_sidecars,
    read_table,
    require_path,
    resolve,
)
from .video_io import DEFAULT_LIMITS

LAYOUT = """  <dataset.root>/
    clip_0001.mp4 + clip_0001.txt        (sidecar captions), or
    metadata.jsonl | metadata.csv        (columns dataset.path_column, dataset.caption_column), or
    prompts.txt + videos.txt             (dataset.prompts_file / dataset.videos_file, line-aligned)"""


def in_validation(key: str, fraction: float) -> bool:
    """A stable split by name: a file stays on its side however the folder grows."""
    bucket = int(hashlib.sha1(key.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return bucket < fraction


def read_folder(root: Path, *, metadata_file: str | None, path_column: str, caption_column: str,
                prompts_file: str | None, videos_file: str | None, caption_extension: str, recursive: bool,
                allow_images: bool, allow_outside_root: bool = False) -> tuple[list[Sample], list[Problem]]:
    if prompts_file or videos_file:
        if not (prompts_file and videos_file):
            raise ConfigError("dataset.prompts_file and dataset.videos_file go together; set both or neither")
        prompts = require_path(resolve(root, prompts_file), key="dataset.prompts_file", layout=LAYOUT)
        videos = require_path(resolve(root, videos_file), key="dataset.videos_file", layout=LAYOUT)
        return read_line_aligned(prompts, videos, root=root, allow_outside_root=allow_outside_root)
    if metadata_file:
        table = require_path(resolve(root, metadata_file), key="dataset.metadata_file", layout=LAYOUT)
        return read_table(table, root=root, path_key=path_column, caption_key=caption_column,
                          allow_outside_root=allow_outside_root)
    for default in ("metadata.jsonl", "metadata.csv"):
        if (root / default).is_file():
            return read_table(root / default, root=root, path_key=path_column, caption_key=caption_column,
                              allow_outside_root=allow_outside_root)
    files = media_files(root, recursive=recursive, allow_images=allow_images)
    return read_sidecars(files, root=root, extension=caption_extension)


class VideoFolderDataset(IndexedClipDataset):
    def __init__(self, *, root: str, num_frames: int, height: int, width: int, fps: float, seed: int,
                 split: str = "train", report_dir: str | None = None, name: str = "video_folder",
                 metadata_file: str | None = None, path_column: str = "file_name", caption_column: str = "text",
                 prompts_file: str | None = None, videos_file: str | None = None,
                 caption_extension: str = ".txt", recursive: bool = True, allow_images: bool = False,
                 validation_fraction: float = 0.0, index_dir: str | None = None, max_bad_fraction: float = 0.2,
                 frame_stride: int | None = None, hflip: bool = False, short_clip: str = "skip",
                 buckets: list | None = None, allow_outside_root: bool = False,
                 max_pixels_per_frame: int = DEFAULT_LIMITS.max_pixels_per_frame,
                 max_frames: int = DEFAULT_LIMITS.max_frames, max_duration_s: float = DEFAULT_LIMITS.max_duration_s):
        directory = require_path(root, key="dataset.root", layout=LAYOUT, directory=True)
        samples, problems = read_folder(
            directory, metadata_file=metadata_file, path_column=path_column, caption_column=caption_column,
            prompts_file=prompts_file, videos_file=videos_file, caption_extension=caption_extension,
            recursive=recursive, allow_images=allow_images, allow_outside_root=allow_outside_root)
        if validation_fraction > 0:
            # Without a held-out fraction every split sees all samples (validation: centre crops).
            wanted_validation = split != "train"
            samples = [s for s in samples if in_validation(s.key, validation_fraction) == wanted_validation]
        super().__init__(samples, problems, name=name, root=root, num_frames=num_frames, height=height,
                         width=width, fps=fps, seed=seed, split=split, report_dir=report_dir,
                         index_dir=index_dir, max_bad_fraction=max_bad_fraction, frame_stride=frame_stride,
                         hflip=hflip, short_clip=short_clip, allow_images=allow_images, buckets=buckets,
                         max_pixels_per_frame=max_pixels_per_frame, max_frames=max_frames,
                         max_duration_s=max_duration_s)
