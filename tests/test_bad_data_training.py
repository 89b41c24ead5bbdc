"""Bad data end to end: train on the good part and report the rest; stop early over the limit."""

from __future__ import annotations

import json

import pytest

from t2v_exp.train import run_training

from .data_fixtures import write_broken_files, write_sidecar_folder

FAST = ["logger=none", "validation.enabled=false", "train.max_steps=3", "dataset=video_folder"]


@pytest.fixture
def messy_folder(tmp_path):
    folder = tmp_path / "clips"
    write_sidecar_folder(folder, count=8)
    write_broken_files(folder)
    (folder / "clip_without_caption.mp4").write_bytes((folder / "clip0.mp4").read_bytes())
    return folder


def test_trains_on_the_good_part_and_lists_the_rest(compose_train, tmp_path, messy_folder):
    run_dir = tmp_path / "run"
    cfg = compose_train([*FAST, f"dataset.root={messy_folder}", "dataset.max_bad_fraction=0.5",
                         f"paths.cache_dir={tmp_path / 'cache'}"], run_dir)
    summary = run_training(cfg, run_dir)
    assert summary["step"] == 3 and summary["final_loss"] is not None
    bad = [json.loads(line) for line in (run_dir / "bad_samples.jsonl").read_text().splitlines()]
    names = {entry["path"].rsplit("/", 1)[-1] for entry in bad}
    assert {"truncated.mp4", "empty.mp4", "notes.mp4", "short.mp4", "clip_without_caption.mp4"} <= names
    assert all(entry["reason"] for entry in bad)


def test_over_the_bad_fraction_it_stops_before_training(compose_train, tmp_path, messy_folder):
    run_dir = tmp_path / "run"
    cfg = compose_train([*FAST, f"dataset.root={messy_folder}", "dataset.max_bad_fraction=0.1",
                         f"paths.cache_dir={tmp_path / 'cache'}"], run_dir)
    with pytest.raises(Exception) as caught:
        run_training(cfg, run_dir)
    error = caught.value.__cause__ or caught.value
    assert "max_bad_fraction" in str(error) and "truncated.mp4" in str(error) + str(caught.value)
    assert not (run_dir / "checkpoints").exists() and not (run_dir / "metrics.jsonl").exists()
