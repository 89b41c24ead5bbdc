"""Torch datasets of (video clip, caption). Every item's randomness comes from (seed, epoch, index)."""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field

from torch.utils.data import Dataset

from .shapes import generate_shapes, read_metadata
from .video_io import read_clip

log = logging.getLogger(__name__)
TRAIN_SPLITS = ("train",)


@dataclass
class Sample:
    path: str
    captions: list[str]
    key: str
    extra: dict = field(default_factory=dict)


class ClipDataset(Dataset):
    """Base: a list of samples read through :func:`read_clip` with per-item deterministic randomness."""

    def __init__(self, samples: list[Sample], *, num_frames: int, height: int, width: int, seed: int,
                 split: str = "train", frame_stride: int = 1, target_fps: float | None = None,
                 hflip: bool = False, short_clip: str = "loop"):
        self.samples = samples
        self.num_frames, self.height, self.width = num_frames, height, width
        self.seed = seed
        self.split = split
        self.frame_stride = frame_stride
        self.target_fps = target_fps
        self.hflip = hflip
        self.short_clip = short_clip
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.samples)

    def item_rng(self, index: int) -> random.Random:
        return random.Random(f"{self.seed}/{self.epoch}/{index}")

    def __getitem__(self, index: int) -> dict:
        sample = self.samples[index]
        training = self.split in TRAIN_SPLITS
        rng = self.item_rng(index)
        video = read_clip(
            sample.path, self.num_frames, self.height, self.width, frame_stride=self.frame_stride,
            target_fps=self.target_fps, start="random" if training else "center", rng=rng,
            hflip=training and self.hflip and rng.random() < 0.5, short_clip=self.short_clip,
        )
        prompt = rng.choice(sample.captions) if training else sample.captions[0]
        return {"video": video, "prompt": prompt, "key": sample.key}

    def captions(self) -> list[str]:
        return [sample.captions[0] for sample in self.samples]


class ShapesDataset(ClipDataset):
    """The synthetic default: generated once into ``root`` and read back through PyAV like real data."""

    def __init__(self, *, root: str, num_videos: int, domain: str, num_frames: int, height: int, width: int,
                 fps: int, seed: int, split: str = "train", report_dir: str | None = None,
                 clip_frames: int | None = None, name: str = "shapes"):
        # Clips are longer than the training window so random starts differ between epochs.
        length = clip_frames or num_frames * 2
        directory = generate_shapes(root, num_videos=num_videos, num_frames=length, height=height, width=width,
                                    fps=fps, domain=domain, seed=seed)
        records = read_metadata(directory)
        samples = [Sample(str(directory / r["file"]), [r["caption"]], r["file"], r) for r in records]
        # hflip stays off: mirroring would contradict "moving left" captions.
        super().__init__(samples, num_frames=num_frames, height=height, width=width, seed=seed, split=split)
        self.directory = directory
        self.report_dir = report_dir
