"""Metadata readers: turn a dataset's caption/annotation files into ``Sample`` lists.

Every reader returns ``(samples, problems)``. A *problem* is one unusable entry (a malformed
CSV row, a JSON record of the wrong shape, a video with no caption); it is reported and counted
against ``max_bad_fraction`` by the dataset, not raised. A file that cannot be read at all (not
UTF-8, not JSON, wrong top-level structure, missing columns) raises :class:`MetadataError`,
which names the file and, where known, the line. Nothing here opens a video.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError

VIDEO_EXTENSIONS = (".mp4", ".webm", ".mkv", ".mov", ".avi", ".m4v", ".gif")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


@dataclass
class Sample:
    path: str
    captions: list[str]
    key: str
    extra: dict = field(default_factory=dict)


@dataclass
class Problem:
    """One entry that will not be used, and why (written to bad_samples.jsonl)."""

    path: str
    reason: str


class MetadataError(ConfigError):
    """A metadata file cannot be used at all; the message starts with ``file[:line]``."""

    def __init__(self, file: str | os.PathLike, reason: str, line: int | None = None):
        where = f"{file}:{line}" if line else str(file)
        super().__init__(f"{where}: {reason}")
        self.file, self.line, self.reason = str(file), line, reason


class DatasetLayoutError(ConfigError):
    """A configured path does not exist; the message names the key and the expected layout."""


def require_path(path: str | os.PathLike, *, key: str, layout: str, directory: bool = False) -> Path:
    path = Path(path)
    ok = path.is_dir() if directory else path.is_file()
    if not ok:
        what = "directory" if directory else "file"
        raise DatasetLayoutError(f"{key}: {what} '{path}' not found. Expected layout:\n{layout}")
    return path


def resolve(root: Path, value: str) -> Path:
    """Absolute paths stay; relative ones are taken from the dataset root (for config keys)."""
    path = Path(value)
    return path if path.is_absolute() else root / path


def metadata_path(root: Path, value: str, *, where: str, allow_outside_root: bool) -> Path | Problem:
    """A video path named inside a metadata file, taken from the dataset root.

    Metadata is data, often downloaded with the videos: an absolute path or a ``..`` in it could
    point training at any video on the machine. Both are refused unless the user says otherwise.
    Any ``..`` is refused, not only one that leaves the root on paper: through a symlinked folder
    ``link/../x`` can land anywhere.
    """
    path = Path(value)
    if allow_outside_root:
        return resolve(root, value)
    if path.is_absolute():
        why = "an absolute path"
    elif ".." in path.parts:
        why = "a path with '..'"
    else:
        return root / path
    return Problem(str(resolve(root, value)),
                   f"'{value}' at {where} is {why}, outside dataset.root={root}; metadata paths must be "
                   "relative to the root, or set dataset.allow_outside_root=true to use them")


def is_image(path: str | os.PathLike) -> bool:
    return str(path).lower().endswith(IMAGE_EXTENSIONS)


def media_files(folder: Path, *, recursive: bool, allow_images: bool) -> list[Path]:
    extensions = VIDEO_EXTENSIONS + (IMAGE_EXTENSIONS if allow_images else ())
    found = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in found if p.is_file() and p.suffix.lower() in extensions and not p.name.startswith("."))


# ----------------------------------------------------------------------------- text and JSON


def read_text(path: Path) -> str:
    """UTF-8 (BOM allowed) or a MetadataError naming the line of the first bad byte."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise MetadataError(path, f"not UTF-8 text ({exc.reason})", line=data[: exc.start].count(b"\n") + 1) from None


def _long_number_line(text: str) -> int | None:
    """Line of the first integer longer than Python converts (json raises a ValueError without a
    position for it)."""
    limit = sys.get_int_max_str_digits() if hasattr(sys, "get_int_max_str_digits") else 4300
    match = re.search(rf"\d{{{limit + 1},}}", text) if limit else None
    return text.count("\n", 0, match.start()) + 1 if match else None


def load_json(path: Path) -> Any:
    text = read_text(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise MetadataError(path, f"invalid JSON ({exc.msg}, column {exc.colno})", line=exc.lineno) from None
    except RecursionError:
        raise MetadataError(path, "invalid JSON (nested too deeply)") from None
    except ValueError as exc:  # an integer over Python's digit limit (a 5000-digit "id")
        raise MetadataError(path, f"invalid JSON ({exc})", line=_long_number_line(text)) from None


def iter_jsonl(path: Path) -> Iterator[tuple[int, Any | Problem]]:
    """(line number, parsed object or Problem) per non-blank line, streamed (no whole-file read)."""
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            try:
                yield number, json.loads(raw.decode("utf-8-sig"))
            # ValueError covers JSONDecodeError, UnicodeDecodeError and integers over Python's
            # digit limit; RecursionError, arrays nested thousands deep.
            except (ValueError, RecursionError) as exc:
                detail = str(exc)[:120]
                yield number, Problem(f"{path}:{number}", f"malformed JSON line ({type(exc).__name__}: {detail})")


def iter_csv(path: Path, required: Iterable[str]) -> Iterator[tuple[int, dict | Problem]]:
    """(line number, row dict or Problem); a missing column or unparseable file is a MetadataError."""
    reader = csv.DictReader(io.StringIO(read_text(path), newline=""))
    try:
        header = reader.fieldnames or []
        missing = [column for column in required if column not in header]
        if missing:
            raise MetadataError(path, f"missing column(s) {missing}; columns found: {header}", line=1)
        for row in reader:
            where = f"{path}:{reader.line_num}"
            if None in row or any(value is None for value in row.values()):
                yield reader.line_num, Problem(where, f"malformed CSV row: expected {len(header)} fields")
            else:
                yield reader.line_num, row
    except csv.Error as exc:
        raise MetadataError(path, f"malformed CSV ({exc})", line=reader.line_num) from None


# ----------------------------------------------------------------------------- captions


def clean_caption(value: Any) -> str | None:
    """A caption string with whitespace collapsed, or None when the value is not usable text."""
    if not isinstance(value, str):
        return None
    text = " ".join(value.split())
    return text or None


def caption_list(value: Any) -> list[str]:
    """A caption field that is a string or a list of strings -> non-empty captions."""
    values = value if isinstance(value, list) else [value]
    return [c for c in (clean_caption(v) for v in values) if c is not None]


def record_sample(record: Any, *, root: Path, path_key: str, caption_key: str, where: str,
                  allow_outside_root: bool = False) -> Sample | Problem:
    if not isinstance(record, dict):
        return Problem(where, f"expected an object with '{path_key}' and '{caption_key}', got {type(record).__name__}")
    value = record.get(path_key)
    if not isinstance(value, str) or not value.strip() or "\x00" in value:
        return Problem(where, f"missing or invalid '{path_key}'")
    path = metadata_path(root, value.strip(), where=where, allow_outside_root=allow_outside_root)
    if isinstance(path, Problem):
        return path
    captions = caption_list(record.get(caption_key))
    if not captions:
        return Problem(str(path), f"missing caption ('{caption_key}' empty or absent at {where})")
    return Sample(str(path), captions, value.strip(), {"source": where})


def read_table(path: Path, *, root: Path, path_key: str, caption_key: str,
               allow_outside_root: bool = False) -> tuple[list[Sample], list[Problem]]:
    """metadata.csv or metadata.jsonl: one row per video, a path column and a caption column."""
    if path.suffix.lower() == ".csv":
        rows = iter_csv(path, [path_key, caption_key])
    elif path.suffix.lower() in (".jsonl", ".ndjson"):
        rows = iter_jsonl(path)
    else:
        raise MetadataError(path, "metadata file must end in .csv or .jsonl")
    samples, problems = [], []
    for number, row in rows:
        item = row if isinstance(row, Problem) else record_sample(
            row, root=root, path_key=path_key, caption_key=caption_key, where=f"{path}:{number}",
            allow_outside_root=allow_outside_root)
        (problems if isinstance(item, Problem) else samples).append(item)
    return samples, problems


def read_sidecars(files: list[Path], *, root: Path, extension: str = ".txt") -> tuple[list[Sample], list[Problem]]:
    """Caption of ``clip.mp4`` is the text of ``clip.txt`` beside it."""
    samples, problems = [], []
    for file in files:
        sidecar = file.with_suffix(extension)
        if not sidecar.is_file():
            problems.append(Problem(str(file), f"missing caption (no {sidecar.name})"))
            continue
        try:
            caption = clean_caption(read_text(sidecar))
        except MetadataError as exc:
            problems.append(Problem(str(file), f"unreadable caption file: {exc}"))
            continue
        if caption is None:
            problems.append(Problem(str(file), f"missing caption ({sidecar.name} is empty)"))
            continue
        samples.append(Sample(str(file), [caption], str(file.relative_to(root))))
    return samples, problems


def read_line_aligned(prompts_file: Path, videos_file: Path, *, root: Path,
                      allow_outside_root: bool = False) -> tuple[list[Sample], list[Problem]]:
    """Line i of the prompts file captions the video named on line i of the videos file."""
    prompts = read_text(prompts_file).splitlines()
    videos = read_text(videos_file).splitlines()
    # Trailing blank lines are editor noise, not entries.
    while prompts and not prompts[-1].strip():
        prompts.pop()
    while videos and not videos[-1].strip():
        videos.pop()
    if len(prompts) != len(videos):
        raise MetadataError(prompts_file, f"{len(prompts)} prompts but {len(videos)} lines in {videos_file}; "
                                          "the two files must be line-aligned")
    samples, problems = [], []
    for number, (prompt, video) in enumerate(zip(prompts, videos, strict=True), start=1):
        name = video.strip()
        if not name or "\x00" in name:
            problems.append(Problem(f"{videos_file}:{number}", "empty video path"))
            continue
        path = metadata_path(root, name, where=f"{videos_file}:{number}", allow_outside_root=allow_outside_root)
        if isinstance(path, Problem):
            problems.append(path)
            continue
        caption = clean_caption(prompt)
        if caption is None:
            problems.append(Problem(str(path), f"missing caption ({prompts_file}:{number} is empty)"))
            continue
        samples.append(Sample(str(path), [caption], name, {"source": f"{videos_file}:{number}"}))
    return samples, problems


# ----------------------------------------------------------------------------- public data sets


def _identifier(value: Any) -> str | None:
    """Video ids are strings in the official files; integers are accepted too."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str) and value.strip() and "/" not in value and "\x00" not in value:
        return value.strip()
    return None


def ssv2_template_key(template: str) -> str:
    """Train-file templates say "[something]"; the labels file's keys drop the brackets."""
    return template.replace("[", "").replace("]", "")


def ssv2_caption(entry: dict) -> str | None:
    """The official "label" is the template with its placeholders filled in; rebuild it if absent."""
    label = clean_caption(entry.get("label"))
    if label is not None:
        return label
    template, placeholders = entry.get("template"), entry.get("placeholders")
    if not isinstance(template, str) or not isinstance(placeholders, list):
        return None
    text = template
    for value in placeholders:
        if not isinstance(value, str) or "[something]" not in text:
            break
        text = text.replace("[something]", value, 1)
    return clean_caption(ssv2_template_key(text))


def read_ssv2(annotation_file: Path, labels: dict[str, Any] | None, *, videos_dir: Path,
              extension: str = ".webm") -> tuple[list[Sample], list[Problem]]:
    """Official Something-Something v2 JSON: [{"id", "label", "template", "placeholders"}, ...]."""
    entries = load_json(annotation_file)
    if not isinstance(entries, list):
        raise MetadataError(annotation_file, f"expected a JSON list of videos, got {type(entries).__name__}")
    samples, problems = [], []
    for number, entry in enumerate(entries):
        where = f"{annotation_file} entry {number}"
        video_id = _identifier(entry.get("id")) if isinstance(entry, dict) else None
        if video_id is None:
            problems.append(Problem(where, "entry without a valid 'id'"))
            continue
        path = videos_dir / f"{video_id}{extension}"
        caption = ssv2_caption(entry)
        if caption is None:
            problems.append(Problem(str(path), f"missing caption (no usable 'label' or 'template' in {where})"))
            continue
        template = entry.get("template") if isinstance(entry.get("template"), str) else caption
        template = ssv2_template_key(template)
        class_id = labels.get(template) if labels else None
        samples.append(Sample(str(path), [caption], video_id, {"template": template, "class_id": class_id}))
    return samples, problems


def read_ssv2_labels(labels_file: Path) -> dict[str, Any]:
    labels = load_json(labels_file)
    if not isinstance(labels, dict):
        raise MetadataError(labels_file, f"expected a JSON object template -> class id, got {type(labels).__name__}")
    return labels


def read_msrvtt(annotation_file: Path, *, split: str) -> tuple[list[tuple[str, list[str]]], list[Problem]]:
    """MSR-VTT JSON: {"videos": [{"video_id", "split"}], "sentences": [{"video_id", "caption"}]}.
    Returns (video_id, captions) for the split's videos, in annotation order (captions may be empty)."""
    data = load_json(annotation_file)
    if not isinstance(data, dict) or not isinstance(data.get("videos"), list) \
            or not isinstance(data.get("sentences"), list):
        raise MetadataError(annotation_file, "expected an object with lists 'videos' and 'sentences'")
    captions: dict[str, list[str]] = {}
    problems = []
    for number, sentence in enumerate(data["sentences"]):
        video_id = _identifier(sentence.get("video_id")) if isinstance(sentence, dict) else None
        caption = clean_caption(sentence.get("caption")) if isinstance(sentence, dict) else None
        if video_id is None or caption is None:
            problems.append(Problem(f"{annotation_file} sentence {number}", "sentence without video_id or caption"))
            continue
        captions.setdefault(video_id, []).append(caption)
    entries = []
    for number, video in enumerate(data["videos"]):
        video_id = _identifier(video.get("video_id")) if isinstance(video, dict) else None
        if video_id is None:
            problems.append(Problem(f"{annotation_file} video {number}", "video without a valid 'video_id'"))
            continue
        if video.get("split") == split:
            entries.append((video_id, captions.get(video_id, [])))
    return entries, problems


def msrvtt_samples(entries: list[tuple[str, list[str]]], *, videos_dir: Path,
                   extension: str = ".mp4") -> tuple[list[Sample], list[Problem]]:
    """Samples of :func:`read_msrvtt`'s entries whose videos are in ``videos_dir``."""
    samples, problems = [], []
    for video_id, captions in entries:
        path = videos_dir / f"{video_id}{extension}"
        if captions:
            samples.append(Sample(str(path), captions, video_id))
        else:
            problems.append(Problem(str(path), "missing caption (no sentence for this video_id)"))
    return samples, problems


def read_caption_map(path: Path, *, name_field: str, text_field: str) -> dict[str, list[str]]:
    """Video name -> captions, from a JSON object {name: text | [texts]}, a JSON list of records,
    or JSON lines of records ``{name_field: ..., text_field: ...}``. Names are matched by stem."""
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        records: Any = [row for _, row in iter_jsonl(path) if not isinstance(row, Problem)]
    else:
        records = load_json(path)
    mapping: dict[str, list[str]] = {}
    if isinstance(records, dict):
        pairs = records.items()
    elif isinstance(records, list):
        pairs = [(r.get(name_field), r.get(text_field)) for r in records if isinstance(r, dict)]
    else:
        raise MetadataError(path, f"expected a JSON object name -> text or a list of {{'{name_field}', "
                                  f"'{text_field}'}} records, got {type(records).__name__}")
    for name, text in pairs:
        if isinstance(name, str) and name.strip():
            mapping.setdefault(Path(name.strip()).stem, []).extend(caption_list(text))
    return mapping
