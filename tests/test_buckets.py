"""Aspect bucketing (``dataset.buckets``): per-sample shapes, one-shape batches, and training on them."""

from __future__ import annotations

import itertools
import json

import pytest
import torch

from t2v_exp.data.folder import VideoFolderDataset
from t2v_exp.engine.batches import BatchStream
from t2v_exp.errors import ConfigError
from t2v_exp.train import run_training

from .data_fixtures import GEOMETRY, flat_frames

WIDE, TALL = (24, 40), (40, 24)  # (height, width) of the source files


def mixed_folder(folder, count: int = 8, frames: int = 24):
    """Half landscape, half portrait files; the grey level says which file a clip came from."""
    from t2v_exp.data.video_io import write_video

    for i in range(count):
        height, width = WIDE if i % 2 == 0 else TALL
        path = write_video(folder / f"clip{i}.mp4", flat_frames(frames, (30 + 25 * i) % 256, height, width), fps=8)
        path.with_suffix(".txt").write_text(f"clip {i}, {'wide' if i % 2 == 0 else 'tall'}\n")
    return folder


def test_each_training_clip_takes_the_shape_of_its_aspect_bucket(tmp_path):
    folder = mixed_folder(tmp_path / "clips")
    from t2v_exp.data.video_io import write_video

    short = write_video(folder / "short.mp4", flat_frames(3, 200, *WIDE), fps=8)  # 3 frames: fits no bucket
    short.with_suffix(".txt").write_text("too short\n")
    buckets = [[4, 16, 32], [4, 32, 16], [6, 24, 24]]
    train = VideoFolderDataset(root=str(folder), **GEOMETRY, buckets=buckets, report_dir=str(tmp_path / "run"))
    assert len(train) == 8 and all("short" not in s.path for s in train.samples)
    for index, sample in enumerate(train.samples):
        wide = sample.extra["width"] > sample.extra["height"]
        assert train.bucket_of[index] == (0 if wide else 1)
        assert train[index]["video"].shape == ((4, 3, 16, 32) if wide else (4, 3, 32, 16))
    reasons = [json.loads(line)["reason"] for line in (tmp_path / "run" / "bad_samples.jsonl").read_text().splitlines()]
    assert any("too short" in reason for reason in reasons)
    # Validation and test clips keep the fixed shape: metrics compare like with like.
    validation = VideoFolderDataset(root=str(folder), **GEOMETRY, buckets=buckets, split="validation")
    assert validation.bucket_of is None and validation[0]["video"].shape == (4, 3, 32, 32)


def test_batches_hold_one_bucket_and_ranks_split_the_same_global_batch(tmp_path):
    dataset = VideoFolderDataset(root=str(mixed_folder(tmp_path / "clips", count=12)), **GEOMETRY,
                                 buckets=[[4, 16, 32], [4, 32, 16]])
    for batch in itertools.islice(iter(BatchStream(dataset, batch_size=2, seed=3)), 8):  # 3 epochs' worth
        assert len({tuple(v.shape) for v in batch["video"]}) == 1
    one = BatchStream(dataset, batch_size=4, seed=3).epoch_plan(1)
    ranks = [BatchStream(dataset, batch_size=2, seed=3, rank=r, world_size=2).epoch_plan(1) for r in (0, 1)]
    assert [a + b for a, b in zip(*ranks, strict=True)] == one
    assert all(len({dataset.bucket_of[i] for i in batch}) == 1 for batch in one)
    with pytest.raises(ValueError, match="No bucket of dataset.buckets holds a full batch of 8"):
        BatchStream(dataset, batch_size=8, seed=3)  # 6 samples per bucket


@pytest.mark.parametrize(("model", "buckets"), [
    ("modelscope_tiny", "[[8,32,48],[8,48,32]]"),
    ("cogvideox_tiny", "[[9,32,48],[9,48,32]]"),
])
def test_training_on_buckets_runs_through_both_shapes(compose_train, tmp_path, monkeypatch, model, buckets):
    folder = mixed_folder(tmp_path / "clips", count=4)
    seen = set()
    cfg = compose_train([f"model={model}", "dataset=video_folder", f"dataset.root={folder}",
                         f"dataset.buckets={buckets}", "logger=none", "validation.enabled=false",
                         "train.max_steps=4", "train.checkpoint_every=0"], tmp_path / "run")
    from t2v_exp.engine import trainer as engine

    original = engine.Trainer._micro_step

    def recording(self, batch, micro):  # the real step, noting which clip shapes reach the model
        seen.add(tuple(batch["video"].shape[-2:]))
        return original(self, batch, micro)

    monkeypatch.setattr(engine.Trainer, "_micro_step", recording)
    summary = run_training(cfg, tmp_path / "run")
    assert summary["step"] == 4 and torch.isfinite(torch.tensor(summary["final_loss"]))
    assert seen == {(32, 48), (48, 32)}


def test_a_bucket_the_model_cannot_take_fails_before_loading(compose_train, tmp_path):
    folder = mixed_folder(tmp_path / "clips", count=2)
    cfg = compose_train(["model=cogvideox_tiny", "dataset=video_folder", f"dataset.root={folder}",
                         "dataset.buckets=[[9,32,48],[8,48,32]]", "logger=none"], tmp_path / "run")
    with pytest.raises(ConfigError, match=r"dataset.buckets\[1\]=\[8, 48, 32\] does not suit cogvideox_tiny.*4k\+1"):
        run_training(cfg, tmp_path / "run")
    cfg = compose_train(["dataset=video_folder", f"dataset.root={folder}", "dataset.buckets=[[8,32]]",
                         "logger=none"], tmp_path / "run2")
    with pytest.raises(ConfigError, match=r"dataset.buckets\[0\]=\[8, 32\] must be \[frames, height, width\]"):
        run_training(cfg, tmp_path / "run2")


def test_the_latent_cache_keeps_each_clip_at_its_bucket_shape(compose_train, tmp_path):
    folder = mixed_folder(tmp_path / "clips", count=4)
    overrides = ["dataset=video_folder", f"dataset.root={folder}", "dataset.buckets=[[8,32,48],[8,48,32]]",
                 "dataset.cache=latents", "logger=none", "validation.enabled=false", "train.max_steps=3",
                 "train.checkpoint_every=0", f"paths.cache_dir={tmp_path / 'cache'}"]
    summary = run_training(compose_train(overrides, tmp_path / "run"), tmp_path / "run")
    assert summary["step"] == 3 and summary["cache"]["encoded_videos"] == 4
    from safetensors.torch import load_file

    shapes = {tuple(load_file(p)["latents"].shape[-2:]) for p in (tmp_path / "cache").rglob("*.safetensors")
              if "latents" in load_file(p)}
    assert shapes == {(8, 12), (12, 8)}  # 32x48 and 48x32 through the tiny twin's 4x VAE
