"""Resume continues only the same experiment: fingerprints, latest/auto/explicit, allowed changes, W&B id."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from safetensors import safe_open

from t2v_exp.engine.checkpoint import fingerprint
from t2v_exp.engine.optim import lr_multiplier
from t2v_exp.engine.resume import NoCheckpointError
from t2v_exp.errors import CheckpointError, ConfigError
from t2v_exp.train import run_training

FAST = ["validation.enabled=false", "logger=none", "train.warmup_steps=0", "dataset.num_videos=4"]
SUFFIX = "_modelscope_tiny_shapes"


def run_dir(tmp_path, stamp: int):
    """Run dirs named like Hydra's: resume=latest/auto look at siblings ending in _<model>_<dataset>."""
    return tmp_path / "runs" / f"2026-01-01_00-00-{stamp:02d}-000000{SUFFIX}"


def train(compose_train, directory, *overrides):
    return run_training(compose_train([*FAST, *overrides], directory), directory)


def test_fingerprint_records_what_shapes_the_state(compose_train, tmp_path):
    cfg = compose_train(["gpu.batch_size=2", "gpu.gradient_accumulation_steps=3"], tmp_path)
    found = fingerprint(cfg, world_size=4)
    assert found["model.name"] == "modelscope_tiny" and found["model.pretrained"] == "tiny:modelscope"
    assert found["model.finetune"] == "lora"
    assert (found["model.lora.rank"], found["model.lora.alpha"], found["model.lora.dropout"]) == (4, 4.0, 0.0)
    assert found["model.lora.target_modules"] == ["to_q", "to_k", "to_v", "to_out.0"]
    assert found["dataset.name"] == "shapes" and found["dataset.root"].endswith("/shapes")
    assert (found["dataset.num_frames"], found["dataset.height"], found["dataset.width"]) == (8, 32, 32)
    assert found["batch.global (batch_size x gradient_accumulation_steps x processes)"] == 2 * 3 * 4
    assert found["batch.per_micro_step (batch_size x processes)"] == 2 * 4
    assert found["seed"] == 42 and found["optimizer._target_"] == "torch.optim.AdamW"
    assert "dataset.cache" not in found and "train.max_steps" not in found  # may change on resume
    json.dumps(found)  # stored in state.json


def test_resume_latest_never_hands_a_new_experiment_an_old_runs_weights(compose_train, tmp_path):
    """The hostile case of issue 14: a finished run, then another experiment with resume=latest."""
    old = run_dir(tmp_path, 1)
    train(compose_train, old, "train.max_steps=2")
    new = run_dir(tmp_path, 2)
    with pytest.raises(NoCheckpointError) as caught:
        train(compose_train, new, "train.max_steps=2", "resume=latest", "optimizer.lr=0.01", "model.lora.alpha=8",
              "seed=7")
    message = str(caught.value)
    assert str(old / "checkpoints" / "checkpoint-000002") in message  # says which run it passed over, and why
    assert "model.lora.alpha: 4.0 -> 8.0" in message and "seed: 42 -> 7" in message
    assert "optimizer.lr" not in message  # an allowed change is no reason to pass a run over
    assert not (new / "final").exists() and not (new / "checkpoints").exists()


def test_resume_latest_takes_the_newest_compatible_run_and_says_what_it_passed_over(compose_train, tmp_path,
                                                                                      caplog):
    compatible, other = run_dir(tmp_path, 1), run_dir(tmp_path, 2)
    train(compose_train, compatible, "train.max_steps=4", "train.stop_after_steps=2")
    train(compose_train, other, "train.max_steps=4", "train.stop_after_steps=2", "gpu.batch_size=1")
    caplog.set_level(logging.WARNING, logger="t2v_exp.engine.resume")
    resumed = run_dir(tmp_path, 3)
    summary = train(compose_train, resumed, "train.max_steps=4", "resume=latest")
    assert summary["resumed_from"] == str(compatible / "checkpoints" / "checkpoint-000002")
    assert summary["step"] == 4 and summary["finished"]
    passed = "\n".join(r.getMessage() for r in caplog.records if "passed over" in r.getMessage())
    assert str(other / "checkpoints" / "checkpoint-000002") in passed
    assert "batch.global (batch_size x gradient_accumulation_steps x processes): 1 -> 2" in passed


@pytest.mark.parametrize(("change", "expected"), [
    (["model.lora.rank=8"], ["model.lora.rank: 4 -> 8"]),
    (["model.lora.target_modules=[to_q,to_v]", "model.lora.dropout=0.1"],
     ["model.lora.target_modules: ['to_q', 'to_k', 'to_v', 'to_out.0'] -> ['to_q', 'to_v']",
      "model.lora.dropout: 0.0 -> 0.1"]),
    (["gpu.batch_size=1", "gpu.gradient_accumulation_steps=2"],  # same global batch, other data position unit
     ["batch.per_micro_step (batch_size x processes): 2 -> 1"]),
    (["gpu.batch_size=4"], ["batch.global (batch_size x gradient_accumulation_steps x processes): 2 -> 4"]),
    (["dataset.domain=vertical", "dataset.num_videos=6"], ["dataset.domain: 'vertical_motion' -> 'vertical'",
                                                           "dataset.num_videos: 4 -> 6"]),
    (["model.finetune=full"], ["model.finetune: 'lora' -> 'full'"]),
    (["model=cogvideox_tiny"], ["model.name: 'modelscope_tiny' -> 'cogvideox_tiny'"]),
])
def test_an_explicit_resume_of_another_experiment_lists_each_difference(change, expected, compose_train, tmp_path):
    first = tmp_path / "first"
    train(compose_train, first, "train.max_steps=2")
    with pytest.raises(CheckpointError) as caught:
        train(compose_train, tmp_path / "second", "train.max_steps=4", f"resume={first}", *change)
    message = str(caught.value)
    assert "belongs to another experiment; these settings differ (checkpoint -> now)" in message
    for line in expected:
        assert line in message
    assert not (tmp_path / "second" / "checkpoints").exists()


def test_allowed_changes_apply_from_the_checkpoint_and_are_logged(compose_train, tmp_path, caplog):
    """Choice documented in conf/optimizer/*.yaml: optimizer hyper-parameters given on resume apply."""
    first, second = tmp_path / "first", tmp_path / "second"
    common = ["train.lr_schedule=cosine", "train.warmup_steps=0"]
    train(compose_train, first, *common, "train.max_steps=4", "train.stop_after_steps=2", "optimizer.lr=1e-3")
    caplog.set_level(logging.INFO, logger="t2v_exp.engine.resume")
    summary = train(compose_train, second, *common, "train.max_steps=6", f"resume={first}", "optimizer.lr=1e-4",
                    "optimizer.weight_decay=0", "optimizer.betas=[0.8,0.99]", "train.checkpoint_every=1")
    assert summary["step"] == 6 and summary["resumed_from"].endswith("checkpoint-000002")
    for line in ("optimizer.lr: 0.001 -> 0.0001", "optimizer.weight_decay: 0.01 -> 0.0",
                 "train.max_steps: 4 -> 6", "train.checkpoint_every: 100 -> 1"):
        assert line in summary["resume_changes"]
        assert any(line in r.getMessage() for r in caplog.records)
    rows = {r["step"]: r for r in map(json.loads, (second / "metrics.jsonl").read_text().splitlines())}
    for step in (3, 4, 5, 6):  # the new base LR on the new 6-step schedule, from the checkpoint's step on
        expected = 1e-4 * lr_multiplier(step - 1, schedule="cosine", warmup_steps=0, max_steps=6)
        assert rows[step]["train/lr"] == pytest.approx(expected, rel=1e-9)
    saved = torch.load(second / "checkpoints" / "checkpoint-000006" / "optimizer.pt", weights_only=True)
    group = saved["optimizer"]["param_groups"][0]
    assert (group["weight_decay"], tuple(group["betas"]), group["initial_lr"]) == (0.0, (0.8, 0.99), 1e-4)


def test_resume_auto_starts_fresh_then_continues_in_one_run_dir(compose_train, tmp_path):
    """What a requeue script runs again and again, with a fixed hydra.run.dir."""
    directory = run_dir(tmp_path, 1)
    first = train(compose_train, directory, "train.max_steps=4", "train.stop_after_steps=2", "resume=auto")
    assert first["resumed_from"] is None and first["step"] == 2 and not first["finished"]
    second = train(compose_train, directory, "train.max_steps=4", "resume=auto")
    assert second["resumed_from"] == str(directory / "checkpoints" / "checkpoint-000002")
    assert second["step"] == 4 and second["finished"] and (directory / "final").is_dir()


def test_resume_auto_with_only_another_experiment_around_starts_fresh(compose_train, tmp_path):
    train(compose_train, run_dir(tmp_path, 1), "train.max_steps=2", "seed=7")
    summary = train(compose_train, run_dir(tmp_path, 2), "train.max_steps=2", "resume=auto")
    assert summary["resumed_from"] is None and summary["step"] == 2


def test_a_run_dir_holds_one_experiment(compose_train, tmp_path):
    directory = tmp_path / "run"
    train(compose_train, directory, "train.max_steps=2")
    with pytest.raises(ConfigError, match="already holds checkpoints .*resume=auto"):
        train(compose_train, directory, "train.max_steps=2")
    with pytest.raises(CheckpointError, match=r"holds checkpoints of another experiment .*seed: 42 -> 7"):
        train(compose_train, directory, "train.max_steps=2", "seed=7", "resume=auto")


def test_a_resumed_run_keeps_its_wandb_run_and_writes_only_its_own_dir(compose_train, tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    wandb = ["logger=wandb", "logger.mode=offline"]
    train(compose_train, first, *wandb, "train.max_steps=3", "train.stop_after_steps=2")
    before = sorted(p for p in first.rglob("*") if p.is_file())
    train(compose_train, second, *wandb, "train.max_steps=3", f"resume={first}")
    run_ids = {d.name.rsplit("-", 1)[-1] for d in (first / "wandb").glob("offline-run-*")}
    assert len(run_ids) == 1
    assert {d.name.rsplit("-", 1)[-1] for d in (second / "wandb").glob("offline-run-*")} == run_ids
    state = json.loads((second / "checkpoints" / "checkpoint-000003" / "state.json").read_text())
    assert state["wandb_run_id"] in run_ids  # the next resume continues the same W&B run again
    assert sorted(p for p in first.rglob("*") if p.is_file()) == before  # the old run dir is left alone


def test_exported_lora_metadata_is_what_was_trained(compose_train, tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    train(compose_train, first, "train.max_steps=2", "train.stop_after_steps=1")
    train(compose_train, second, "train.max_steps=2", f"resume={first}")
    state = json.loads((second / "checkpoints" / "checkpoint-000002" / "state.json").read_text())
    with safe_open(str(second / "final" / "pytorch_lora_weights.safetensors"), framework="pt") as handle:
        packed = json.loads(handle.metadata()["lora_adapter_metadata"])
    exported = {key.split(".", 1)[1]: value for key, value in packed.items()}  # "unet.r" -> "r"
    trained = state["fingerprint"]
    assert (exported["r"], exported["lora_alpha"]) == (trained["model.lora.rank"], trained["model.lora.alpha"])
    assert sorted(exported["target_modules"]) == sorted(trained["model.lora.target_modules"])
