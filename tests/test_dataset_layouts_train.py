"""Public sets as distributed train through the normal config with no layout settings: only
``dataset=<name> dataset.root=<where it was unpacked>``."""

from __future__ import annotations

import pytest

from t2v_exp.train import run_training

from .data_fixtures import write_msrvtt, write_ssv2, write_ubc_fashion

LAYOUTS = {
    "ssv2-labels-at-root": ("ssv2", lambda root: write_ssv2(root, train=4, validation=2, labels_layout="root",
                                                            videos_dir="20bn-something-something-v2")),
    "ssv2-labels-folder": ("ssv2", lambda root: write_ssv2(root, train=4, validation=2, labels_layout="labels",
                                                           videos_dir="20bn-something-something-v2")),
    "ubc-split-folders": ("ubc_fashion", lambda root: write_ubc_fashion(root, train=4, layout="folders")),
    "ubc-url-lists": ("ubc_fashion", lambda root: write_ubc_fashion(root, train=4, layout="lists")),
    "msrvtt-frozen": ("msrvtt", lambda root: write_msrvtt(root, per_split={"train": 4}, layout="frozen")),
    "msrvtt-original": ("msrvtt", lambda root: write_msrvtt(root, per_split={"train": 4}, layout="original")),
    "msrvtt-clip4clip": ("msrvtt", lambda root: write_msrvtt(root, per_split={"train": 4}, layout="clip4clip")),
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_distributed_layout_trains_two_steps_without_layout_settings(layout, compose_train, tmp_path):
    dataset, write = LAYOUTS[layout]
    root = write(tmp_path / "data")
    run_dir = tmp_path / "run"
    cfg = compose_train([f"dataset={dataset}", f"dataset.root={root}", "train.max_steps=2", "logger=none",
                         "validation.enabled=false", "model.num_frames=4", "model.fps=8",
                         f"paths.cache_dir={tmp_path / 'cache'}"], run_dir)
    summary = run_training(cfg, run_dir)
    assert summary["step"] == 2 and summary["finished"] and summary["final_loss"] is not None
    assert not (run_dir / "bad_samples.jsonl").exists()  # every distributed file was found
