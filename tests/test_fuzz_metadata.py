"""Fuzzing the metadata readers: whatever is in the file, the outcome is samples + problems or a
clean ``MetadataError`` (a ValueError naming the file), never a traceback from deep inside."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from t2v_exp.data.folder import VideoFolderDataset
from t2v_exp.data.sources import (
    MetadataError,
    Problem,
    Sample,
    msrvtt_samples,
    read_caption_map,
    read_msrvtt,
    read_ssv2,
    read_ssv2_labels,
    read_table,
)
from t2v_exp.errors import ConfigError

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)


def records(keys: list[str]):
    """Objects that mostly have the expected keys, with values of any type."""
    return st.dictionaries(st.sampled_from(keys), json_values | st.text(max_size=20), max_size=len(keys))


def run_reader(filename: str, content: bytes, reader) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / filename
        path.write_bytes(content)
        try:
            samples, problems = reader(path, Path(folder))
        except MetadataError as error:
            assert isinstance(error, ValueError) and str(path) in str(error)
            return
        assert all(isinstance(s, Sample) and s.captions and all(isinstance(c, str) for c in s.captions)
                   for s in samples)
        assert all(isinstance(p, Problem) for p in problems)


def table_reader(path, root):
    return read_table(path, root=root, path_key="file_name", caption_key="text")


@FAST
@given(st.binary(max_size=300))
def test_random_bytes_in_metadata_tables(content):
    run_reader("metadata.csv", content, table_reader)
    run_reader("metadata.jsonl", content, table_reader)


# Numbers past Python's 4300-digit int() limit: json.loads raises a bare ValueError for them.
huge_numbers = st.sampled_from(["9" * 5000, "-" + "1" * 4301, "1" * 4301 + "e5"])
hostile_lines = huge_numbers.map(lambda n: '{"file_name": "a.mp4", "text": "x", "n": ' + n + "}") | huge_numbers


@FAST
@given(st.lists(st.one_of(records(["file_name", "text"]).map(json.dumps), json_values.map(json.dumps),
                          st.text(max_size=30), hostile_lines), max_size=6))
def test_random_jsonl_lines(lines):
    run_reader("metadata.jsonl", "\n".join(lines).encode(), table_reader)


@FAST
@given(st.lists(st.lists(st.text(max_size=10), max_size=4), max_size=6),
       st.lists(st.sampled_from(["file_name", "text", "x", ""]), min_size=0, max_size=3))
def test_random_csv_rows(rows, header):
    lines = [",".join(header)] + [",".join(row) for row in rows]
    run_reader("metadata.csv", "\n".join(lines).encode(), table_reader)


@FAST
@given(st.one_of(json_values, st.lists(records(["id", "label", "template", "placeholders"]), max_size=5)),
       st.one_of(st.none(), st.dictionaries(st.text(max_size=10), json_values, max_size=3)))
def test_random_ssv2_annotations(annotations, labels):
    run_reader("train.json", json.dumps(annotations).encode(),
               lambda path, root: read_ssv2(path, labels, videos_dir=root))
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "labels.json"
        path.write_text(json.dumps(annotations))
        try:
            assert isinstance(read_ssv2_labels(path), dict)
        except MetadataError as error:
            assert str(path) in str(error)


@FAST
@given(st.one_of(
    json_values,
    st.fixed_dictionaries({"videos": st.lists(records(["video_id", "split"]) | json_values, max_size=4),
                           "sentences": st.lists(records(["video_id", "caption"]) | json_values, max_size=6)}),
))
def test_random_msrvtt_annotations(data):
    run_reader("MSR_VTT.json", json.dumps(data).encode(),
               lambda path, root: msrvtt_from(path, root))


def msrvtt_from(path, root):
    entries, problems = read_msrvtt(path, split="train")
    samples, missing = msrvtt_samples(entries, videos_dir=root)
    return samples, problems + missing


@FAST
@given(st.lists(hostile_lines, min_size=1, max_size=3))
def test_huge_numbers_in_json_files_name_file_and_line(lines):
    text = "[\n" + ",\n".join(lines) + "\n]"
    run_reader("train.json", text.encode(), lambda path, root: read_ssv2(path, None, videos_dir=root))
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "train.json"
        path.write_text(text)
        try:
            read_ssv2(path, None, videos_dir=Path(folder))
        except MetadataError as error:
            assert error.line == 2 and str(error).startswith(f"{path}:2:")


@FAST
@given(st.one_of(json_values, st.lists(records(["video", "caption"]), max_size=4)), st.binary(max_size=80))
def test_random_caption_maps(data, noise):
    def reader(path, root):
        mapping = read_caption_map(path, name_field="video", text_field="caption")
        assert all(isinstance(v, list) for v in mapping.values())
        return [], []

    run_reader("captions.json", json.dumps(data).encode(), reader)
    run_reader("captions.json", noise, reader)
    run_reader("captions.jsonl", noise, reader)


@settings(max_examples=25, deadline=None)
@given(st.binary(max_size=200))
def test_whole_dataset_fails_cleanly_on_garbage_metadata(content):
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "metadata.jsonl").write_bytes(content)
        try:
            VideoFolderDataset(root=folder, num_frames=4, height=32, width=32, fps=8, seed=0)
        except ConfigError as error:  # MetadataError, or "too many bad samples" naming the lines
            assert isinstance(error, ValueError) and "metadata.jsonl" in str(error) or "no samples" in str(error)
