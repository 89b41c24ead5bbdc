"""Torch datasets of (video clip, caption). Every item's randomness comes from (seed, epoch, index).

``ClipDataset`` reads a list of samples; ``IndexedClipDataset`` first screens them through the
media index (unreadable, truncated, too-short files and missing captions are reported and left
out) and is the base of every real-data set (video_folder, ssv2, ubc_fashion, msrvtt).
"""

from __future__ import annotations

import logging
import random

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from .bad_data import BadSampleReport
from .buckets import Bucket, nearest_bucket, parse_buckets
from .index import IndexEntry, VideoIndex, image_error, index_file_for
from .shapes import generate_shapes, read_metadata
from .sources import Problem, Sample
from .video_io import (
    DEFAULT_LIMITS,
    MediaLimits,
    VideoDecodeError,
    check_media_limits,
    read_clip,
    resize_and_crop,
)
from .video_io import clip_fits as span_fits

log = logging.getLogger(__name__)
TRAIN_SPLITS = ("train",)
# A decode failure during training is replaced by another sample; after this many failed
# replacements in a row something is wrong with the whole data set, and we stop.
MAX_REPLACEMENT_TRIES = 16

__all__ = ["ClipDataset", "IndexedClipDataset", "Sample", "ShapesDataset", "read_image_clip"]


def read_image_clip(path: str, num_frames: int, height: int, width: int, *, center: bool = True,
                    rng: random.Random | None = None, hflip: bool = False,
                    limits: MediaLimits | None = DEFAULT_LIMITS) -> torch.Tensor:
    """A still image as a clip: the one frame repeated ``num_frames`` times -> [F, C, H, W] in [-1, 1].

    Any failure to read the image (see :func:`image_error`), and a header over ``limits``
    (checked before the pixels are decoded), raise :class:`VideoDecodeError`: a bad sample.
    """
    try:
        with Image.open(path) as image:  # the header only, so far
            over = limits.violation(width=image.width, height=image.height) if limits is not None else None
            if over is None:
                array = np.asarray(image.convert("RGB"))
    except Exception as exc:  # Pillow raises a zoo of types for hostile files: see image_error
        raise VideoDecodeError(path, image_error(exc)) from exc
    if over is not None:
        raise VideoDecodeError(path, over)
    frame = torch.from_numpy(array.copy()).permute(2, 0, 1)[None].float()
    frame = resize_and_crop(frame, height, width, center=center, rng=rng)
    if hflip:
        frame = frame.flip(-1)
    return (frame / 127.5 - 1.0).expand(num_frames, -1, -1, -1).contiguous()


class ClipDataset(Dataset):
    """Base: a list of samples read through :func:`read_clip` with per-item deterministic randomness."""

    def __init__(self, samples: list[Sample], *, num_frames: int, height: int, width: int, seed: int,
                 split: str = "train", frame_stride: int = 1, target_fps: float | None = None,
                 hflip: bool = False, short_clip: str = "loop", report_dir: str | None = None,
                 name: str = "dataset", bad_report: BadSampleReport | None = None,
                 limits: MediaLimits | None = DEFAULT_LIMITS):
        self.samples = samples
        # Checked again at read time: a file swapped for a bomb after indexing is still refused.
        self.limits = limits
        self.name = name
        self.bad_report = bad_report or BadSampleReport(report_dir, dataset=name, split=split)
        self._failed: set[int] = set()  # this process's indices that failed to decode
        self.num_frames, self.height, self.width = num_frames, height, width
        self.seed = seed
        self.split = split
        self.frame_stride = frame_stride
        self.target_fps = target_fps
        self.hflip = hflip
        self.short_clip = short_clip
        self.epoch = 0
        # Bucketing (IndexedClipDataset, training split): each sample's clip shape is its bucket's.
        self.buckets: list[Bucket] | None = None
        self.bucket_of: list[int] | None = None

    def geometry(self, index: int) -> Bucket:
        """(frames, height, width) of sample ``index``'s clip."""
        if self.bucket_of is not None:
            return self.buckets[self.bucket_of[index]]
        return self.num_frames, self.height, self.width

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.samples)

    def item_rng(self, index: int) -> random.Random:
        return random.Random(f"{self.seed}/{self.epoch}/{index}")

    def __getitem__(self, index: int) -> dict:
        try:
            return self._load(index)
        except VideoDecodeError as exc:
            self._record_failure(index, exc)
        # Deterministic replacement: the candidates depend only on (seed, epoch, index), and
        # skipping known-bad ones changes nothing, since they would fail again.
        picker = random.Random(f"{self.seed}/{self.epoch}/{index}/replacement")
        for _ in range(MAX_REPLACEMENT_TRIES):
            other = picker.randrange(len(self.samples))
            if other == index or other in self._failed:
                continue
            try:
                return self._load(other)
            except VideoDecodeError as exc:
                self._record_failure(other, exc)
        raise VideoDecodeError(self.samples[index].path,
                               f"unreadable, and {MAX_REPLACEMENT_TRIES} replacement samples failed too")

    def _record_failure(self, index: int, exc: VideoDecodeError) -> None:
        if index not in self._failed:
            self._failed.add(index)
            self.bad_report.add(self.samples[index].path, exc.reason, phase="training")

    def _load(self, index: int) -> dict:
        sample = self.samples[index]
        training = self.split in TRAIN_SPLITS
        rng = self.item_rng(index)
        flip = training and self.hflip and rng.random() < 0.5
        num_frames, height, width = self.geometry(index)
        if sample.extra.get("kind") == "image":
            video = read_image_clip(sample.path, num_frames, height, width, center=not training, rng=rng, hflip=flip,
                                    limits=self.limits)
        else:
            video = read_clip(
                sample.path, num_frames, height, width, frame_stride=self.frame_stride,
                target_fps=self.target_fps, start="random" if training else "center", rng=rng,
                hflip=flip, short_clip=self.short_clip, limits=self.limits,
            )
        prompt = rng.choice(sample.captions) if training else sample.captions[0]
        return {"video": video, "prompt": prompt, "key": sample.key}

    def captions(self) -> list[str]:
        return [sample.captions[0] for sample in self.samples]


HELD_OUT_SEED_OFFSET = 100_003


class ShapesDataset(ClipDataset):
    """The synthetic default: generated once into ``root`` and read back through PyAV like real data."""

    def __init__(self, *, root: str, num_videos: int, domain: str, num_frames: int, height: int, width: int,
                 fps: int, seed: int, split: str = "train", report_dir: str | None = None,
                 clip_frames: int | None = None, name: str = "shapes"):
        # By default a clip is exactly the training window: the motion is then as large as the frame
        # allows (positions are random per clip anyway); clip_frames > num_frames adds random starts.
        length = clip_frames or num_frames
        # Evaluation splits get their own clips (another generator seed): held out from training.
        generator_seed = seed if split == "train" else seed + HELD_OUT_SEED_OFFSET
        directory = generate_shapes(root, num_videos=num_videos, num_frames=length, height=height, width=width,
                                    fps=fps, domain=domain, seed=generator_seed)
        records = read_metadata(directory)
        samples = [Sample(str(directory / r["file"]), [r["caption"]], r["file"], r) for r in records]
        # hflip stays off: mirroring would contradict "moving left" captions.
        super().__init__(samples, num_frames=num_frames, height=height, width=width, seed=seed, split=split,
                         report_dir=report_dir, name=name)
        self.directory = directory
        self.report_dir = report_dir


def clip_fits(entry: IndexEntry, num_frames: int, frame_stride: int, target_fps: float | None) -> bool:
    """Whether ``read_clip`` can take the clip without looping (same rule as read_clip's)."""
    source_fps = entry.fps or 25.0
    step = 1.0 / target_fps if target_fps else frame_stride / source_fps
    return span_fits(entry.duration, source_fps, num_frames, step)


class IndexedClipDataset(ClipDataset):
    """Samples screened through the media index before use; the base of every real-data set.

    ``frame_stride=None`` samples at ``fps`` frames per second whatever the source rate (what
    the model was trained at); an integer takes every k-th source frame instead. Files shorter
    than the clip are left out when ``short_clip="skip"``, looped or padded otherwise.
    ``buckets`` (training split only): each sample takes the shape of the bucket nearest its aspect
    ratio among those it is long enough for (see ``buckets.py``); other splits use the fixed shape.
    ``max_pixels_per_frame``, ``max_frames`` and ``max_duration_s`` (:class:`MediaLimits`) refuse
    files whose header declares more, before a frame of them is decoded: decompression bombs
    become bad samples instead of gigabytes of memory.
    """

    def __init__(self, samples: list[Sample], problems: list[Problem], *, name: str, root: str, num_frames: int,
                 height: int, width: int, fps: float, seed: int, split: str = "train",
                 report_dir: str | None = None, index_dir: str | None = None, max_bad_fraction: float = 0.2,
                 frame_stride: int | None = None, hflip: bool = False, short_clip: str = "skip",
                 allow_images: bool = False, buckets: list | None = None,
                 max_pixels_per_frame: int = DEFAULT_LIMITS.max_pixels_per_frame,
                 max_frames: int = DEFAULT_LIMITS.max_frames,
                 max_duration_s: float = DEFAULT_LIMITS.max_duration_s):
        if short_clip not in ("loop", "pad", "skip"):
            raise ValueError(f"dataset.short_clip={short_clip!r}; valid: loop, pad, skip")
        limits = MediaLimits(max_pixels_per_frame, max_frames, max_duration_s)
        report = BadSampleReport(report_dir, dataset=name, split=split)
        for problem in problems:
            report.add(problem.path, problem.reason)
        target_fps = None if frame_stride else float(fps)
        stride = frame_stride or 1
        index = VideoIndex(index_file_for(index_dir, name, root) if index_dir else None, limits=limits)
        entries = index.scan(sample.path for sample in samples)
        bucketed = parse_buckets(buckets) if buckets is not None and split in TRAIN_SPLITS else None
        # With buckets a file only has to be long enough for the shortest bucket.
        shortest = min(f for f, _, _ in bucketed) if bucketed else num_frames
        good, bucket_of = [], []
        for sample in samples:
            entry = entries[sample.path]
            reason = self._unusable(entry, shortest, stride, target_fps, short_clip, allow_images, limits)
            bucket = None
            if not reason and bucketed:
                fitting = [i for i, (frames, _, _) in enumerate(bucketed)
                           if entry.kind == "image" or short_clip != "skip"
                           or clip_fits(entry, frames, stride, target_fps)]
                bucket = nearest_bucket(entry.height or 0, entry.width or 0, bucketed, fitting)
                if bucket is None:
                    reason = f"no bucket of dataset.buckets fits its size {entry.width}x{entry.height}"
            if reason:
                report.add(sample.path, reason)
                continue
            if bucketed:
                bucket_of.append(bucket)
            # Source geometry travels with the sample; a few ints per sample.
            sample.extra.update(kind=entry.kind, width=entry.width, height=entry.height, frames=entry.frames,
                                fps=entry.fps)
            good.append(sample)
        report.check(len(samples) + len(problems), max_bad_fraction, root=root)
        super().__init__(good, num_frames=num_frames, height=height, width=width, seed=seed, split=split,
                         frame_stride=stride, target_fps=target_fps, hflip=hflip, short_clip=short_clip,
                         name=name, bad_report=report, limits=limits)
        if bucketed:
            self.buckets, self.bucket_of = bucketed, bucket_of
            counts = {bucketed[b]: bucket_of.count(b) for b in range(len(bucketed))}
            log.info("%s/%s buckets (frames, height, width) -> samples: %s", name, split, counts)
        self.root = root
        self.index_stats = {"probed": index.probes, "reused": index.reused, "bad": len(report.problems),
                            "usable": len(good)}
        log.info("%s/%s: %d usable samples, %d bad", name, split, len(good), len(report.problems))

    @staticmethod
    def _unusable(entry: IndexEntry, num_frames: int, stride: int, target_fps: float | None, short_clip: str,
                  allow_images: bool, limits: MediaLimits) -> str | None:
        if not entry.decodable:
            return entry.error or "not decodable"
        over = check_media_limits(entry, limits)  # an entry probed under looser limits
        if over is not None:
            return over
        if entry.kind == "image":
            return None if allow_images else "image file (set dataset.allow_images=true to use stills)"
        if short_clip == "skip" and not clip_fits(entry, num_frames, stride, target_fps):
            return f"too short: {entry.duration:.2f}s ({entry.frames} frames) for a {num_frames}-frame clip"
        return None
