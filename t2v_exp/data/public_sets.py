"""Public benchmarks laid out as their authors distribute them: SSv2, UBC Fashion, MSR-VTT.

Each reads its annotation files, turns them into samples and hands them to
:class:`IndexedClipDataset`, which screens the files. Paths are ``dataset.root`` plus relative
names (each a config key); a missing one raises an error naming the key and the expected layout.
``**common`` is IndexedClipDataset's keyword arguments (geometry, seed, split, report_dir,
index_dir, max_bad_fraction, frame_stride, hflip, short_clip, buckets and the media limits
max_pixels_per_frame, max_frames, max_duration_s).
"""

from __future__ import annotations

import random

from ..errors import ConfigError
from .datasets import IndexedClipDataset
from .sources import (
    Problem,
    Sample,
    load_json,
    media_files,
    msrvtt_samples,
    read_caption_map,
    read_msrvtt,
    read_ssv2,
    read_ssv2_labels,
    require_path,
    resolve,
)


def split_name(split: str, names: dict, key: str) -> str:
    if split not in names:
        raise ConfigError(f"split {split!r} is not in {key}={dict(names)}; add it, e.g. {key}.{split}=...")
    return names[split]


# ----------------------------------------------------------------------------- Something-Something v2

SSV2_LAYOUT = """  <dataset.root>/
    something-something-v2-train.json        (dataset.train_file: [{"id", "label", "template", "placeholders"}])
    something-something-v2-validation.json   (dataset.validation_file)
    something-something-v2-labels.json       (dataset.labels_file: {"Template text": "class id"})
      or labels/train.json, labels/validation.json, labels/labels.json
    <dataset.videos_dir>/<id>.webm           (videos_dir '' = directly in the root; auto: the root,
                                              20bn-something-something-v2/ or videos/, whichever has them)"""
AUTO = "auto"
# Where the files are in the layouts SSv2 is distributed in (the archive's own folder names).
SSV2_CANDIDATES = {
    "dataset.train_file": ("something-something-v2-train.json", "labels/train.json"),
    "dataset.validation_file": ("something-something-v2-validation.json", "labels/validation.json"),
    "dataset.labels_file": ("something-something-v2-labels.json", "labels/labels.json"),
}
SSV2_VIDEO_DIRS = ("", "20bn-something-something-v2", "videos")
PROBED_IDS = 32


def detect_file(base, value: str | None, candidates: tuple[str, ...]) -> str | None:
    """``value`` unless it is ``auto``: then the first of the distributed locations that exists
    (the first candidate when none does, so the error names the expected file)."""
    if value != AUTO:
        return value
    return next((c for c in candidates if (base / c).is_file()), candidates[0])


def best_folder(base, candidates: tuple[str, ...], names: list[str]) -> str:
    """The candidate folder (relative to ``base``) holding the most of the first listed files; when
    none holds any, the first that exists (its missing files then get the search hint)."""
    probe = names[:PROBED_IDS]
    hits = {d: sum((base / d / name).is_file() for name in probe) for d in candidates}
    if not any(hits.values()):
        return next((d for d in candidates if (base / d).is_dir()), candidates[0])
    return max(candidates, key=lambda d: hits[d])


def detect_videos_dir(base, annotations, extension: str) -> str:
    """The SSv2 folder holding the most of the first annotated ids' videos."""
    entries = load_json(annotations)
    ids = [str(e["id"]) for e in entries[:PROBED_IDS] if isinstance(e, dict) and "id" in e] if isinstance(
        entries, list) else []
    return best_folder(base, SSV2_VIDEO_DIRS, [f"{i}{extension}" for i in ids])


def choose_subset(samples: list[Sample], size: int | None, *, seed: int, class_balance: bool) -> list[Sample]:
    """A seeded subset; with ``class_balance`` every template contributes in turn (round robin),
    so rare actions are not crowded out by the frequent ones."""
    if not size or size >= len(samples):
        return samples
    rng = random.Random(f"{seed}/subset")
    if not class_balance:
        chosen = rng.sample(range(len(samples)), size)
    else:
        by_class: dict[str, list[int]] = {}
        for i, sample in enumerate(samples):
            by_class.setdefault(sample.extra.get("template", ""), []).append(i)
        queues = [rng.sample(members, len(members)) for _, members in sorted(by_class.items())]
        rng.shuffle(queues)
        chosen = []
        while len(chosen) < size:
            for queue in queues:
                if queue and len(chosen) < size:
                    chosen.append(queue.pop())
    return [samples[i] for i in sorted(chosen)]


class SSv2Dataset(IndexedClipDataset):
    def __init__(self, *, root: str, name: str = "ssv2", videos_dir: str = AUTO, train_file: str = AUTO,
                 validation_file: str = AUTO, labels_file: str | None = AUTO, video_extension: str = ".webm",
                 subset_size: int | None = 10000, class_balance: bool = False, **common):
        base = require_path(root, key="dataset.root", layout=SSV2_LAYOUT, directory=True)
        file_key = "dataset.train_file" if common.get("split", "train") == "train" else "dataset.validation_file"
        file_name = detect_file(base, train_file if file_key == "dataset.train_file" else validation_file,
                                SSV2_CANDIDATES[file_key])
        annotations = require_path(resolve(base, file_name), key=file_key, layout=SSV2_LAYOUT)
        labels = None
        if labels_file == AUTO:  # optional (class ids only): auto without one found means none
            labels_file = next((c for c in SSV2_CANDIDATES["dataset.labels_file"] if (base / c).is_file()), None)
        if labels_file:
            labels = read_ssv2_labels(require_path(resolve(base, labels_file), key="dataset.labels_file",
                                                   layout=SSV2_LAYOUT))
        if videos_dir == AUTO:
            videos_dir = detect_videos_dir(base, annotations, video_extension)
        videos = require_path(resolve(base, videos_dir) if videos_dir else base, key="dataset.videos_dir",
                              layout=SSV2_LAYOUT, directory=True)
        samples, problems = read_ssv2(annotations, labels, videos_dir=videos, extension=video_extension)
        # The subset is drawn before probing, so a 10k subset of 169k videos probes 10k files.
        samples = choose_subset(samples, subset_size, seed=common["seed"], class_balance=class_balance)
        super().__init__(samples, problems, name=name, root=root, **common)


# ----------------------------------------------------------------------------- UBC Fashion

UBC_LAYOUT = """  <dataset.root>/
    train/*.mp4  test/*.mp4                  (dataset.split_dirs maps split -> folder)
      or fashion_train.txt, fashion_test.txt (the distributed URL lists) with the videos in one folder
         (dataset.videos_dir; auto: videos/, fashion/ or the root, found by the listed names)
    <dataset.captions_file>                  (Fashion-Text2Video style text descriptions, one of:
        {"<video name>": "text" | ["text", ...]}  or  [{"<name_field>": "91-3003CN5S.mp4",
        "<text_field>": "text"}, ...]  or the same records as JSON lines; names match by file stem)"""


UBC_LIST_FOLDERS = ("videos", "fashion", "")  # where a crawl of the URL lists puts the videos


def ubc_split_files(base, folder_name: str, videos_dir: str = AUTO) -> list:
    """The split's videos: the files of ``<root>/<folder>/``, or, where the crawl kept one folder
    (``videos_dir``; auto: found), the names in the distributed URL list ``fashion_<folder>.txt``
    (each line's last path component)."""
    folder = base / folder_name
    url_list = base / f"fashion_{folder_name}.txt"
    if folder.is_dir() or not url_list.is_file():
        folder = require_path(folder, key="dataset.split_dirs", layout=UBC_LAYOUT, directory=True)
        return media_files(folder, recursive=False, allow_images=False)
    names = [line.strip().rstrip("/").rsplit("/", 1)[-1] for line in url_list.read_text().splitlines()]
    names = [name for name in names if name]
    if videos_dir == AUTO:
        videos_dir = best_folder(base, UBC_LIST_FOLDERS, names)
    folder = require_path(resolve(base, videos_dir) if videos_dir else base, key="dataset.videos_dir",
                          layout=UBC_LAYOUT, directory=True)
    return [folder / name for name in names]


class UBCFashionDataset(IndexedClipDataset):
    def __init__(self, *, root: str, name: str = "ubc_fashion", captions_file: str = "captions.json",
                 name_field: str = "video", text_field: str = "caption", split_dirs: dict | None = None,
                 videos_dir: str = AUTO, **common):
        base = require_path(root, key="dataset.root", layout=UBC_LAYOUT, directory=True)
        split_dirs = split_dirs or {"train": "train", "validation": "test", "test": "test"}
        folder_name = split_name(common.get("split", "train"), split_dirs, "dataset.split_dirs")
        files = ubc_split_files(base, folder_name, videos_dir)
        captions = read_caption_map(require_path(resolve(base, captions_file), key="dataset.captions_file",
                                                 layout=UBC_LAYOUT), name_field=name_field, text_field=text_field)
        samples, problems = [], []
        for file in files:
            if captions.get(file.stem):  # a listed file that does not exist: the index reports it missing
                samples.append(Sample(str(file), captions[file.stem], file.stem))
            else:
                problems.append(Problem(str(file), f"missing caption (no '{file.stem}' in {captions_file})"))
        super().__init__(samples, problems, name=name, root=root, **common)


# ----------------------------------------------------------------------------- MSR-VTT

MSRVTT_LAYOUT = """  <dataset.root>/
    annotation/MSR_VTT.json   (dataset.annotation_file: {"videos": [{"video_id", "split"}],
                               "sentences": [{"video_id", "caption"}]}, ~20 captions per video)
    videos/all/<video_id>.mp4 (dataset.videos_dir)
  auto also finds the other distributed layouts: train_val_videodatainfo.json + TrainValVideo/ and
  test_videodatainfo.json + TestVideo/ (the original release), msrvtt_data/MSRVTT_data.json +
  MSRVTT_Videos/ (the CLIP4Clip archive)"""
# The annotation files of the distributed layouts, in the order tried (same format in each).
MSRVTT_ANNOTATIONS = ("annotation/MSR_VTT.json", "MSRVTT_data.json", "msrvtt_data/MSRVTT_data.json",
                      "train_val_videodatainfo.json", "test_videodatainfo.json")
MSRVTT_VIDEO_DIRS = ("videos/all", "MSRVTT_Videos", "videos", "TrainValVideo", "TestVideo", "")


def msrvtt_annotations(split: str) -> tuple[str, ...]:
    """The annotation files to try for ``split``: the original release keeps the test split in its
    own file, so that one comes first for the test split."""
    if split != "test":
        return MSRVTT_ANNOTATIONS
    return ("test_videodatainfo.json", *[c for c in MSRVTT_ANNOTATIONS if c != "test_videodatainfo.json"])


class MSRVTTDataset(IndexedClipDataset):
    """Training items draw one of the ~20 captions at random (item RNG); evaluation uses the first,
    and :meth:`all_captions` gives every reference caption of a sample."""

    def __init__(self, *, root: str, name: str = "msrvtt", annotation_file: str = AUTO,
                 videos_dir: str = AUTO, video_extension: str = ".mp4", split_names: dict | None = None,
                 **common):
        base = require_path(root, key="dataset.root", layout=MSRVTT_LAYOUT, directory=True)
        split_names = split_names or {"train": "train", "validation": "validate", "test": "test"}
        wanted = split_name(common.get("split", "train"), split_names, "dataset.split_names")
        annotation_file = detect_file(base, annotation_file, msrvtt_annotations(wanted))
        annotations = require_path(resolve(base, annotation_file), key="dataset.annotation_file",
                                   layout=MSRVTT_LAYOUT)
        entries, problems = read_msrvtt(annotations, split=wanted)
        if videos_dir == AUTO:
            videos_dir = best_folder(base, MSRVTT_VIDEO_DIRS, [f"{video_id}{video_extension}" for video_id, _ in entries])
        videos = require_path(resolve(base, videos_dir) if videos_dir else base, key="dataset.videos_dir",
                              layout=MSRVTT_LAYOUT, directory=True)
        samples, missing_captions = msrvtt_samples(entries, videos_dir=videos, extension=video_extension)
        super().__init__(samples, problems + missing_captions, name=name, root=root, **common)

    def all_captions(self, index: int) -> list[str]:
        return list(self.samples[index].captions)

