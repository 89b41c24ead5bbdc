"""Engine behaviour that the run-dir and resume tests do not cover."""

from __future__ import annotations

import json

import torch

from t2v_exp.engine.batches import epoch_batches
from t2v_exp.engine.checkpoint import list_checkpoints
from t2v_exp.engine.optim import lr_multiplier
from t2v_exp.engine.tracking import redact
from t2v_exp.engine.trainer import Trainer, run_training

FAST = ["validation.enabled=false", "logger=none", "dataset.num_videos=4"]


def test_keeps_only_the_last_k_checkpoints(compose_train, tmp_path):
    cfg = compose_train([*FAST, "train.max_steps=4", "train.checkpoint_every=1", "train.keep_last=2"], tmp_path)
    run_training(cfg, tmp_path)
    assert [p.name for p in list_checkpoints(tmp_path / "checkpoints")] == ["checkpoint-000003", "checkpoint-000004"]
    assert not list((tmp_path / "checkpoints").glob(".tmp-*"))


def test_bf16_keeps_trainable_weights_fp32_and_frozen_weights_bf16(compose_train, tmp_path):
    cfg = compose_train([*FAST, "precision=bf16", "train.max_steps=2"], tmp_path)
    trainer = Trainer(cfg, tmp_path)
    try:
        trainer.setup()
        summary = trainer.fit()
    finally:
        trainer.close()
    model = trainer.model
    assert all(p.dtype == torch.float32 for p in model.trainable_parameters())
    assert all(p.dtype == torch.bfloat16 for p in model.text_encoder.parameters())
    frozen = [p for p in model.denoiser.parameters() if not p.requires_grad]
    assert frozen and all(p.dtype == torch.bfloat16 for p in frozen)
    assert summary["final_loss"] is not None and torch.isfinite(torch.tensor(summary["final_loss"]))


def test_gradient_accumulation_counts_micro_batches(compose_train, tmp_path):
    cfg = compose_train([*FAST, "gpu.batch_size=1", "gpu.gradient_accumulation_steps=2", "train.max_steps=2"],
                        tmp_path)
    summary = run_training(cfg, tmp_path)
    assert summary["step"] == 2 and summary["samples_seen"] == 4 and summary["batch_in_epoch"] == 4
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]


def test_epoch_batches_are_deterministic_sharded_and_disjoint():
    one = epoch_batches(10, 2, seed=3, epoch=0)
    assert one == epoch_batches(10, 2, seed=3, epoch=0)
    assert one != epoch_batches(10, 2, seed=3, epoch=1)
    ranks = [epoch_batches(10, 2, seed=3, epoch=0, rank=r, world_size=2) for r in (0, 1)]
    flat = [i for rank in ranks for batch in rank for i in batch]
    assert len(flat) == len(set(flat)) == 8


def test_lr_schedule_warms_up_then_decays_to_zero():
    values = [lr_multiplier(s, schedule="cosine", warmup_steps=4, max_steps=20) for s in range(21)]
    assert values[:4] == [0.25, 0.5, 0.75, 1.0]
    assert all(a >= b for a, b in zip(values[4:], values[5:], strict=False)) and values[-1] == 0.0
    assert lr_multiplier(10, schedule="constant", warmup_steps=0, max_steps=20) == 1.0


def test_redact_masks_secret_keys_and_values():
    data = {"logger": {"api_key": "abc"}, "note": "token=supersecret123 here", "lr": 1e-4}
    clean = redact(data, secrets=["supersecret123"])
    assert clean == {"logger": {"api_key": "***"}, "note": "token=*** here", "lr": 1e-4}
