"""The media index (probe once, reuse until a file changes) and bad-data handling with real broken files."""

from __future__ import annotations

import json
import os

import pytest

from t2v_exp.data.bad_data import REPORT_NAME, TooManyBadSamplesError
from t2v_exp.data.folder import VideoFolderDataset
from t2v_exp.data.index import VideoIndex, index_file_for, probe_media

from .data_fixtures import GEOMETRY, clip_value, write_broken_files, write_clip, write_sidecar_folder


class CountingProbe:
    """The real probe, counting calls per path."""

    def __init__(self):
        self.calls: list[str] = []

    def __call__(self, path, size, mtime_ns):
        self.calls.append(path)
        return probe_media(path, size, mtime_ns)


def read_report(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / REPORT_NAME).read_text().splitlines()]


def test_second_scan_reuses_unchanged_files_and_reprobes_touched_ones(tmp_path):
    paths = [str(p) for p in write_sidecar_folder(tmp_path / "data", count=3)]
    index_file = index_file_for(tmp_path / "index", "demo", tmp_path / "data")
    probe = CountingProbe()
    first = VideoIndex(index_file, probe=probe).scan(paths)
    assert sorted(probe.calls) == sorted(paths)
    assert first[paths[0]].decodable and first[paths[0]].frames == 12 and first[paths[0]].fps == 8
    assert len(index_file.read_text().splitlines()) == 3

    probe.calls.clear()
    index = VideoIndex(index_file, probe=probe)
    second = index.scan(paths)
    assert probe.calls == [] and index.reused == 3 and index.probes == 0
    assert second == first

    stat = os.stat(paths[1])
    os.utime(paths[1], ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))  # touched, same size
    write_clip(tmp_path / "data" / "clip2.mp4", value=10, num_frames=20)  # rewritten: new size
    VideoIndex(index_file, probe=probe).scan(paths)
    assert sorted(probe.calls) == sorted([paths[1], paths[2]])


def test_index_drops_vanished_files_and_survives_a_damaged_line(tmp_path):
    paths = [str(p) for p in write_sidecar_folder(tmp_path, count=2)]
    index_file = tmp_path / "idx" / "i.jsonl"
    VideoIndex(index_file).scan(paths)
    lines = index_file.read_text().splitlines()
    index_file.write_text(lines[0] + "\n{not json\n")
    probe = CountingProbe()
    entries = VideoIndex(index_file, probe=probe).scan(paths + [str(tmp_path / "gone.mp4")])
    assert probe.calls == [paths[1]]  # only the entry lost with the damaged line
    assert entries[str(tmp_path / "gone.mp4")].error == "missing file"
    assert len(index_file.read_text().splitlines()) == 2  # the missing file is not remembered


def test_broken_files_are_skipped_counted_and_listed(tmp_path):
    data = tmp_path / "data"
    write_sidecar_folder(data, count=20)  # 5 bad of 25: exactly the 0.2 limit
    broken = write_broken_files(data)
    write_clip(data / "uncaptioned.mp4")
    run = tmp_path / "run"
    ds = VideoFolderDataset(root=str(data), report_dir=str(run), index_dir=str(tmp_path / "index"), **GEOMETRY)
    assert len(ds) == 20 and ds.index_stats["bad"] == 5
    reasons = {os.path.basename(r["path"]): r["reason"] for r in read_report(run)}
    assert set(reasons) == {"truncated.mp4", "empty.mp4", "notes.mp4", "short.mp4", "uncaptioned.mp4"}
    assert reasons["empty.mp4"] == "zero-byte file"
    assert "too short" in reasons["short.mp4"] and "missing caption" in reasons["uncaptioned.mp4"]
    assert all(r["phase"] == "index" and r["split"] == "train" for r in read_report(run))
    # Bad files are remembered in the index too: the next run does not open them again.
    again = VideoFolderDataset(root=str(data), index_dir=str(tmp_path / "index"), **GEOMETRY)
    assert again.index_stats["probed"] == 0 and len(again) == 20
    # Looping short clips makes the short file usable.
    looped = VideoFolderDataset(root=str(data), short_clip="loop", **GEOMETRY)
    assert len(looped) == 21 and str(broken["too_short"]) in {s.path for s in looped.samples}


def test_too_many_bad_files_stop_with_examples(tmp_path):
    write_sidecar_folder(tmp_path, count=4)
    write_broken_files(tmp_path)  # 4 bad of 8 = 50%
    with pytest.raises(TooManyBadSamplesError, match=r"4 of 8 samples are bad .*max_bad_fraction=0.2.*empty.mp4"):
        VideoFolderDataset(root=str(tmp_path), **GEOMETRY)
    assert len(VideoFolderDataset(root=str(tmp_path), max_bad_fraction=0.5, **GEOMETRY)) == 4


def test_malformed_metadata_lines_give_file_and_line(tmp_path):
    for i in range(8):
        write_clip(tmp_path / f"{i}.mp4", value=30 * i)
    rows = [json.dumps({"file_name": f"{i}.mp4", "text": f"caption {i}"}) for i in range(8)]
    rows[2] = '{"file_name": "2.mp4", "text": '  # cut-off line
    rows[5] = json.dumps(["not", "an", "object"])
    (tmp_path / "metadata.jsonl").write_text("\n".join(rows) + "\n")
    run = tmp_path / "run"
    ds = VideoFolderDataset(root=str(tmp_path), report_dir=str(run), max_bad_fraction=0.3, **GEOMETRY)
    assert len(ds) == 6
    where = sorted(r["path"] for r in read_report(run))
    assert where == [f"{tmp_path / 'metadata.jsonl'}:3", f"{tmp_path / 'metadata.jsonl'}:6"]

    (tmp_path / "metadata.jsonl").unlink()
    (tmp_path / "meta.csv").write_text("file_name,text\n0.mp4,ok\n1.mp4,ok,extra field\n3.mp4,fine\n")
    ds = VideoFolderDataset(root=str(tmp_path), metadata_file="meta.csv", report_dir=str(run),
                            max_bad_fraction=0.5, **GEOMETRY)
    assert len(ds) == 2 and f"{tmp_path / 'meta.csv'}:3" in {r["path"] for r in read_report(run)}


def test_file_turning_bad_during_training_is_replaced_deterministically(tmp_path):
    write_sidecar_folder(tmp_path / "data", count=6)
    run = tmp_path / "run"
    ds = VideoFolderDataset(root=str(tmp_path / "data"), report_dir=str(run), **GEOMETRY)
    victim = ds.samples[2]
    (tmp_path / "data" / "clip2.mp4").write_bytes(b"")  # gone bad after indexing
    item = ds[2]
    assert item["key"] != victim.key and clip_value(item["video"]) != 120
    fresh = VideoFolderDataset(root=str(tmp_path / "data"), short_clip="loop", max_bad_fraction=0.5, **GEOMETRY)
    fresh.samples = list(ds.samples)  # the same list, as a second process would hold it
    assert fresh[2]["key"] == item["key"]  # replacement depends only on (seed, epoch, index)
    report = read_report(run)
    assert report[-1]["phase"] == "training" and report[-1]["path"] == victim.path


HUGE = "9" * 5000  # past Python's 4300-digit int() limit: json.loads raises a bare ValueError


def test_malformed_index_lines_cost_a_reprobe_not_a_crash(tmp_path):
    """Lines that parse as JSON but hold the wrong types (or a number Python refuses to convert)
    must be probed again, never reused as they are nor allowed to crash a later run."""
    data = tmp_path / "data"
    paths = [str(p) for p in write_sidecar_folder(data, count=5)]
    index_dir = tmp_path / "index"
    index_file = index_file_for(index_dir, "video_folder", data)
    VideoIndex(index_file).scan(paths)
    records = {r["path"]: r for r in map(json.loads, index_file.read_text().splitlines())}
    damaged = [
        json.dumps(records[paths[0]]).replace(f'"size": {records[paths[0]]["size"]}', f'"size": {HUGE}'),
        json.dumps({**records[paths[1]], "fps": "abc"}),
        json.dumps({**records[paths[2]], "frames": True}),
        json.dumps({**records[paths[3]], "duration": -1.0, "width": 3.5}),
        json.dumps(records[paths[4]]),
    ]
    index_file.write_text("\n".join(damaged) + "\n")
    probe = CountingProbe()
    entries = VideoIndex(index_file, probe=probe).scan(paths)
    assert sorted(probe.calls) == sorted(paths[:4])
    assert all(e.decodable and e.fps == 8 and e.frames == 12 for e in entries.values())
    # The dataset reads the same index: no crash, every clip usable, the index healed for the next run.
    index_file.write_text("\n".join(damaged) + "\n")
    ds = VideoFolderDataset(root=str(data), index_dir=str(index_dir), **GEOMETRY)
    assert len(ds) == 5 and ds.index_stats["probed"] == 4
    assert VideoFolderDataset(root=str(data), index_dir=str(index_dir), **GEOMETRY).index_stats["probed"] == 0
