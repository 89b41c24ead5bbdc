"""Resume is exact: 6 steps straight == 3 steps, stop, resume, 3 more (losses and final weights)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from t2v_exp.train import run_training

COMMON = ["train.max_steps=6", "train.checkpoint_every=3", "validation.enabled=false", "logger=none",
          "train.warmup_steps=2", "dataset.num_videos=6"]


def losses(run_dir):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["train/loss"] for r in rows}


@pytest.mark.parametrize("model", ["modelscope_tiny", "cogvideox_tiny"])
def test_resumed_run_repeats_the_uninterrupted_one(model, compose_train, tmp_path):
    straight, first, second = tmp_path / "straight", tmp_path / "first", tmp_path / "second"
    run_training(compose_train([f"model={model}", *COMMON], run_dir=straight), straight)
    summary = run_training(compose_train([f"model={model}", *COMMON, "train.stop_after_steps=3"], run_dir=first),
                           first)
    assert summary["step"] == 3 and not summary["finished"]
    summary = run_training(compose_train([f"model={model}", *COMMON, f"resume={first}"], run_dir=second), second)
    assert summary["resumed_from"].endswith("checkpoint-000003") and summary["step"] == 6

    expected = losses(straight)
    assert len(set(expected.values())) > 1  # the losses really change from step to step
    assert losses(first) == {s: expected[s] for s in (1, 2, 3)}
    assert losses(second) == {s: expected[s] for s in (4, 5, 6)}
    a = load_file(straight / "checkpoints/checkpoint-000006/trainable.safetensors")
    b = load_file(second / "checkpoints/checkpoint-000006/trainable.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    initial = load_file(straight / "checkpoints/checkpoint-000003/trainable.safetensors")
    assert any(not torch.equal(initial[k], a[k]) for k in a)  # training moved the weights


def test_resume_latest_without_checkpoints_explains(compose_train, tmp_path):
    run_dir = tmp_path / "outputs" / "2026_x_modelscope_tiny_shapes"
    with pytest.raises(FileNotFoundError, match="resume=latest: no complete checkpoint.*resume=auto"):
        run_training(compose_train([*COMMON, "resume=latest"], run_dir=run_dir), run_dir)


def test_resume_auto_without_checkpoints_starts_fresh(compose_train, tmp_path):
    """A requeue script's first attempt, or one killed before its first checkpoint."""
    run_dir = tmp_path / "outputs" / "2026_x_modelscope_tiny_shapes"
    summary = run_training(compose_train([*COMMON, "train.max_steps=2", "resume=auto"], run_dir=run_dir), run_dir)
    assert summary["resumed_from"] is None and summary["step"] == 2 and summary["finished"]


def test_a_run_resumed_in_another_dir_still_compares_with_the_base(compose_train, tmp_path):
    """The base model is scored before step 1 only; a resume into a new run dir brings that
    evaluation along, so the closing comparison is base vs fine-tuned as in an uninterrupted run."""
    first, second = tmp_path / "first", tmp_path / "second"
    evaluate = ["train.evaluate_base=true", "train.evaluate_at_end=true", "evaluation.num_videos=2"]
    run_training(compose_train([*COMMON, *evaluate, "train.stop_after_steps=3"], run_dir=first), first)
    assert (first / "eval_base" / "metrics.json").is_file()
    run_training(compose_train([*COMMON, *evaluate, f"resume={first}"], run_dir=second), second)
    base = json.loads((second / "eval_base" / "metrics.json").read_text())
    assert base == json.loads((first / "eval_base" / "metrics.json").read_text())
    tuned = json.loads((second / "eval" / "metrics.json").read_text())
    assert tuned["finetuned"] and tuned["comparison"], "no base-vs-fine-tuned comparison after the resume"
