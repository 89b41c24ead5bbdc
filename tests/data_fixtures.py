"""Tiny real data sets on disk, laid out like the real ones, written with PyAV (no mocks).

Helpers, not fixtures: tests call them with their own ``tmp_path``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from t2v_exp.data.video_io import write_video

GEOMETRY = dict(num_frames=4, height=32, width=32, fps=8, seed=0)


def flat_frames(num_frames: int, value: int, height: int = 32, width: int = 32) -> np.ndarray:
    """Frames of one grey level: a decoded clip's mean tells which file it came from."""
    return np.full((num_frames, height, width, 3), value, np.uint8)


def write_clip(path: Path, value: int = 128, num_frames: int = 12, fps: int = 8) -> Path:
    return write_video(path, flat_frames(num_frames, value), fps=fps)


def clip_value(video) -> int:
    """Inverse of flat_frames for a decoded [F, C, H, W] clip in [-1, 1]."""
    return round(float((video.mean() + 1) * 127.5))


def write_truncated(path: Path) -> Path:
    """A real mp4 cut to half its size, as an interrupted download leaves it."""
    write_clip(path, num_frames=24)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def write_broken_files(folder: Path) -> dict[str, Path]:
    """The usual casualties of a crawl, each with a caption sidecar so only the video is at fault."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {
        "truncated": write_truncated(folder / "truncated.mp4"),
        "zero_byte": folder / "empty.mp4",
        "not_video": folder / "notes.mp4",
        "too_short": write_clip(folder / "short.mp4", num_frames=2),
    }
    files["zero_byte"].write_bytes(b"")
    files["not_video"].write_text("this is a text file, not a video\n")
    for path in files.values():
        path.with_suffix(".txt").write_text(f"caption of {path.stem}")
    return files


def write_sidecar_folder(folder: Path, count: int = 4) -> list[Path]:
    paths = []
    for i in range(count):
        path = write_clip(folder / f"clip{i}.mp4", value=(40 + 40 * i) % 256)
        path.with_suffix(".txt").write_text(f"clip number {i}\n")
        paths.append(path)
    return paths


def write_ssv2(root: Path, *, train: int = 6, validation: int = 2, videos_dir: str = "",
               labels_layout: str = "root") -> Path:
    """Official SSv2 layout: train/validation/labels JSON + <id>.webm (VP9, as distributed).

    ``labels_layout``: "root" (something-something-v2-*.json beside the videos folder) or "labels"
    (labels/train.json, labels/validation.json, labels/labels.json), the two ways it is distributed."""
    templates = ["Pushing [something] from left to right", "Putting [something] on [something]"]
    labels = {t.replace("[", "").replace("]", ""): str(i) for i, t in enumerate(templates)}
    video_folder = root / videos_dir if videos_dir else root
    entries = {"train": [], "validation": []}
    next_id = 1
    for split, count in (("train", train), ("validation", validation)):
        for _ in range(count):
            template = templates[next_id % 2]
            placeholders = ["a pen"] if next_id % 2 == 0 else ["a cup", "a table"]
            label = template
            for value in placeholders:
                label = label.replace("[something]", value, 1)
            entries[split].append({"id": str(next_id), "label": label, "template": template,
                                   "placeholders": placeholders})
            write_clip(video_folder / f"{next_id}.webm", value=10 * next_id, num_frames=10, fps=12)
            next_id += 1
    names = {"root": ("something-something-v2-train.json", "something-something-v2-validation.json",
                      "something-something-v2-labels.json"),
             "labels": ("labels/train.json", "labels/validation.json", "labels/labels.json")}[labels_layout]
    (root / "labels").mkdir(exist_ok=True)
    for name, content in zip(names, (entries["train"], entries["validation"], labels), strict=True):
        (root / name).write_text(json.dumps(content))
    return root


# Where each distributed MSR-VTT layout keeps (annotation file, videos folder) per split.
MSRVTT_LAYOUTS = {
    "frozen": {"*": ("annotation/MSR_VTT.json", "videos/all")},  # the Frozen-in-Time MSRVTT.zip
    "original": {"test": ("test_videodatainfo.json", "TestVideo"),  # the original release
                 "*": ("train_val_videodatainfo.json", "TrainValVideo")},
    "clip4clip": {"*": ("msrvtt_data/MSRVTT_data.json", "MSRVTT_Videos")},
}


def write_msrvtt(root: Path, *, per_split: dict[str, int] | None = None, captions_per_video: int = 20,
                 layout: str = "frozen") -> Path:
    per_split = per_split or {"train": 3, "validate": 1, "test": 1}
    files: dict[str, dict] = {}
    number = 0
    for split, count in per_split.items():
        annotation, videos_dir = MSRVTT_LAYOUTS[layout].get(split, MSRVTT_LAYOUTS[layout]["*"])
        content = files.setdefault(annotation, {"videos": [], "sentences": []})
        for _ in range(count):
            video_id = f"video{number}"
            content["videos"].append({"video_id": video_id, "split": split, "category": 0})
            content["sentences"] += [{"video_id": video_id, "caption": f"{video_id} caption {k}",
                                      "sen_id": len(content["sentences"]) + k} for k in range(captions_per_video)]
            write_clip(root / videos_dir / f"{video_id}.mp4", value=20 + 30 * number)
            number += 1
    for annotation, content in files.items():
        (root / annotation).parent.mkdir(parents=True, exist_ok=True)
        (root / annotation).write_text(json.dumps(content))
    return root


def write_ubc_fashion(root: Path, *, train: int = 3, test: int = 1, layout: str = "folders") -> Path:
    """Videos + a caption file (one name given with extension, one without). ``layout``: "folders"
    (train/ and test/), or "lists" (one crawled videos/ folder beside the distributed URL lists
    fashion_train.txt / fashion_test.txt, which say the split)."""
    captions = {}
    for split, count in (("train", train), ("test", test)):
        urls = []
        for i in range(count):
            name = f"{split}{i}-A1B2C3"
            write_clip(root / (split if layout == "folders" else "videos") / f"{name}.mp4", value=50 + 30 * i)
            captions[f"{name}.mp4" if i % 2 else name] = f"a model in a {split} dress number {i}"
            urls.append(f"https://m.media-amazon.com/images/I/{name}.mp4")
        if layout == "lists":
            (root / f"fashion_{split}.txt").write_text("\n".join(urls) + "\n")
    (root / "captions.json").write_text(json.dumps(captions))
    return root
