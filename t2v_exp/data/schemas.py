"""Typed schemas for the dataset config group (registered under ``schema/dataset``).

A dataset yaml starts with ``- /schema/dataset/<name>@_here_``, so a misspelt key or a wrong
type fails at composition with the key's name instead of deep inside the constructor.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from omegaconf import MISSING


@dataclass
class DatasetConfig:
    _target_: str = MISSING
    name: str = MISSING
    root: str = MISSING
    num_frames: int = MISSING
    height: int = MISSING
    width: int = MISSING
    fps: int = 8
    seed: int = 0
    cache: str = "none"  # "latents": train from precomputed VAE latents + text embeddings (engine-side)
    cache_variants: int = 1  # cached samples per clip (epoch e trains on variant e mod K): K x the encoding


@dataclass
class ShapesConfig(DatasetConfig):
    num_videos: int = 16
    domain: str = "horizontal"
    clip_frames: int | None = None


@dataclass
class RealVideoConfig(DatasetConfig):
    """Keys shared by every data set read from real files (IndexedClipDataset)."""

    index_dir: str | None = None  # cache of per-file probe results; None probes every run
    max_bad_fraction: float = 0.2  # stop when more of the data set than this is unusable
    frame_stride: int | None = None  # None: sample at `fps`; k: every k-th source frame
    hflip: bool = False
    short_clip: str = "skip"  # skip | loop | pad
    # [[frames, height, width], ...]: training clips take the shape nearest their aspect ratio
    buckets: list[list[int]] | None = None
    # Per-file limits, checked on the header before any frame is decoded (video_io.MediaLimits):
    # a file over one is a bad sample. The defaults admit 4K (up to 4096x4096) and 6-hour sources
    # and refuse decompression bombs (a 300-byte GIF can declare a 16000x16000 canvas).
    max_pixels_per_frame: int = 4096 * 4096
    max_frames: int = 2_000_000
    max_duration_s: float = 6 * 3600.0


@dataclass
class VideoFolderConfig(RealVideoConfig):
    metadata_file: str | None = None
    path_column: str = "file_name"
    caption_column: str = "text"
    prompts_file: str | None = None
    videos_file: str | None = None
    caption_extension: str = ".txt"
    recursive: bool = True
    allow_images: bool = False
    validation_fraction: float = 0.0
    # Metadata paths that are absolute or contain '..' are refused (they could point anywhere on
    # the machine) unless this is true.
    allow_outside_root: bool = False


@dataclass
class SSv2Config(RealVideoConfig):
    # auto: found in either distributed layout (t2v_exp/data/public_sets.py SSV2_CANDIDATES)
    videos_dir: str = "auto"
    train_file: str = "auto"
    validation_file: str = "auto"
    labels_file: str | None = "auto"
    video_extension: str = ".webm"
    subset_size: int | None = 10000
    class_balance: bool = False


@dataclass
class UBCFashionConfig(RealVideoConfig):
    captions_file: str = "captions.json"
    name_field: str = "video"
    text_field: str = "caption"
    split_dirs: dict[str, str] = field(default_factory=lambda: {"train": "train", "validation": "test", "test": "test"})
    # Only where split_dirs do not exist and the URL lists fashion_<split dir>.txt do: the crawled videos' folder.
    videos_dir: str = "auto"


@dataclass
class MSRVTTConfig(RealVideoConfig):
    # auto: found in any distributed layout (t2v_exp/data/public_sets.py MSRVTT_ANNOTATIONS, MSRVTT_VIDEO_DIRS)
    annotation_file: str = "auto"
    videos_dir: str = "auto"
    video_extension: str = ".mp4"
    split_names: dict[str, str] = field(
        default_factory=lambda: {"train": "train", "validation": "validate", "test": "test"})


SCHEMAS = {
    "shapes": ShapesConfig,
    "video_folder": VideoFolderConfig,
    "ssv2": SSv2Config,
    "ubc_fashion": UBCFashionConfig,
    "msrvtt": MSRVTTConfig,
}


def register_dataset_schemas(cs) -> None:
    for name, node in SCHEMAS.items():
        cs.store(group="schema/dataset", name=name, node=node)
