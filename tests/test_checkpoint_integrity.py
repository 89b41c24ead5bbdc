"""Damaged checkpoints, same-step re-saves and the run-dir lock: one clear error, never a lost copy."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file, save_file

from t2v_exp.config import compose_job_config
from t2v_exp.engine.checkpoint import list_checkpoints, load_checkpoint
from t2v_exp.engine.resume import find_resume_checkpoint
from t2v_exp.errors import CheckpointError, RunDirLockedError
from t2v_exp.jobs.lock import RunDirLock
from t2v_exp.train import run_training

from .conftest import NO_EVAL, REPO

FAST = [*NO_EVAL, "validation.enabled=false", "logger=none", "train.warmup_steps=0", "dataset.num_videos=4"]
TRAIN = [*FAST, "train.max_steps=4", "train.checkpoint_every=2", "train.keep_last=3"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished 4-step run with checkpoints at steps 2 and 4 (copied by each test that damages it)."""
    from hydra.core.global_hydra import GlobalHydra

    run_dir = tmp_path_factory.mktemp("trained") / "2026-01-01_00-00-00-000000_modelscope_tiny_shapes"
    run_training(compose_job_config(TRAIN, run_dir), run_dir)
    GlobalHydra.instance().clear()
    return run_dir


def copy_run(trained, tmp_path):
    run_dir = tmp_path / "runs" / trained.name
    shutil.copytree(trained, run_dir)
    (run_dir / RunDirLock.NAME).unlink(missing_ok=True)
    return run_dir


def truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def wrong_types(path):
    state = json.loads(path.read_text())
    path.write_text(json.dumps({**state, "step": "four", "epoch": None}))


def nan_weights(path):
    tensors = load_file(path)
    first = sorted(tensors)[0]
    tensors[first] = torch.full_like(tensors[first], float("nan"))
    save_file(tensors, path)


DAMAGE = {
    "truncated trainable.safetensors": ("trainable.safetensors", truncate, "not a readable safetensors"),
    "state.json of the wrong types": ("state.json", wrong_types, "'step' must be an integer"),
    "state.json not JSON": ("state.json", lambda p: p.write_text("{step: 4"), "not readable JSON"),
    "bad rng.json": ("rng.json", lambda p: p.write_text('{"python": [3, [1, 2], null], "numpy": []}'),
                     "RNG states"),
    "bad rng.safetensors": ("rng.safetensors", lambda p: p.write_bytes(b"\x08" * 40), "not a readable safetensors"),
    "0-byte optimizer.pt": ("optimizer.pt", lambda p: p.write_bytes(b""), "empty (0 bytes)"),
    "truncated optimizer.pt": ("optimizer.pt", truncate, "truncated"),
    "NaN trainable weights": ("trainable.safetensors", nan_weights, "non-finite values"),
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_checkpoint_names_the_file_and_the_previous_valid_one(damage, trained, tmp_path):
    run_dir = copy_run(trained, tmp_path)
    file, spoil, reason = DAMAGE[damage]
    newest = run_dir / "checkpoints" / "checkpoint-000004"
    spoil(newest / file)
    cfg = compose_job_config([*TRAIN, "train.max_steps=6", f"resume={newest}"], tmp_path / "resumed")
    with pytest.raises(CheckpointError) as caught:
        run_training(cfg, tmp_path / "resumed")
    message = str(caught.value)
    assert f"{newest} is unusable: {file}: " in message and reason in message
    assert f"resume={run_dir / 'checkpoints' / 'checkpoint-000002'}" in message  # where to go instead
    assert not (tmp_path / "resumed" / "checkpoints").exists()  # nothing trained from it


@pytest.mark.parametrize("damage", ["truncated trainable.safetensors", "0-byte optimizer.pt", "NaN trainable weights"])
def test_resume_latest_skips_a_damaged_checkpoint_with_a_warning(damage, trained, tmp_path, caplog):
    run_dir = copy_run(trained, tmp_path)
    file, spoil, _ = DAMAGE[damage]
    spoil(run_dir / "checkpoints" / "checkpoint-000004" / file)
    resumed = run_dir.parent / "2026-01-02_00-00-00-000000_modelscope_tiny_shapes"
    summary = run_training(compose_job_config([*TRAIN, "resume=latest"], resumed), resumed)
    assert summary["resumed_from"] == str(run_dir / "checkpoints" / "checkpoint-000002")
    assert summary["step"] == 4 and summary["finished"]
    assert any("Skipping damaged checkpoint" in r.getMessage() and file in r.getMessage() for r in caplog.records)


def test_load_refuses_non_finite_trainable_weights(trained, tmp_path):
    run_dir = copy_run(trained, tmp_path)
    checkpoint = run_dir / "checkpoints" / "checkpoint-000004"
    nan_weights(checkpoint / "trainable.safetensors")
    with pytest.raises(CheckpointError, match=r"trainable.safetensors: non-finite values \(NaN/inf\) in 1 of"):
        load_checkpoint(checkpoint)


# The re-save is killed right where the new copy would be renamed into place; an audit hook is
# the only way to stop a real process at exactly that instruction.
RESAVE = textwrap.dedent("""
    import os, sys
    from pathlib import Path
    import torch
    from t2v_exp.engine.checkpoint import TrainState, save_checkpoint

    root = Path(sys.argv[1])
    def save(value):
        save_checkpoint(root, state=TrainState(step=3), trainable={"w": torch.full((4,), value)},
                        optimizer_state={"state": {}, "param_groups": []}, scheduler_state={}, scaler_state=None,
                        keep_last=2)
    save(1.0)
    def die_before_the_new_copy_lands(event, args):
        if event == "os.rename" and Path(str(args[0])).name.startswith(".tmp-checkpoint"):
            os._exit(9)
    sys.addaudithook(die_before_the_new_copy_lands)
    save(2.0)
""")


def test_a_same_step_resave_never_removes_the_only_copy_first(tmp_path):
    root = tmp_path / "run" / "checkpoints"
    result = subprocess.run([sys.executable, "-c", RESAVE, str(root)], cwd=REPO, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 9, result.stderr[-2000:]
    found = find_resume_checkpoint("latest", tmp_path / "run", "_none")  # puts the old copy back
    assert found.name == "checkpoint-000003"
    assert torch.equal(load_checkpoint(found).trainable["w"], torch.full((4,), 1.0))
    assert [p.name for p in list_checkpoints(root)] == ["checkpoint-000003"]


HOLD_LOCK = textwrap.dedent("""
    import sys, time
    from t2v_exp.jobs.lock import RunDirLock
    lock = RunDirLock(sys.argv[1]).acquire()  # kept: the lock lives as long as its open file
    print("locked", flush=True)
    time.sleep(600)
""")


def test_a_second_process_cannot_train_into_a_locked_run_dir(compose_train, tmp_path):
    run_dir = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(run_dir)], cwd=REPO, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunDirLockedError) as caught:
            run_training(compose_train([*FAST, "train.max_steps=1"], run_dir), run_dir)
        assert f"pid {holder.pid}" in str(caught.value) and "hydra.run.dir=" in str(caught.value)
        assert not (run_dir / "checkpoints").exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    assert RunDirLock.holder(run_dir) is None  # the kernel dropped the dead holder's lock
    assert run_training(compose_train([*FAST, "train.max_steps=1"], run_dir), run_dir)["step"] == 1


@pytest.mark.slow
def test_two_training_processes_in_one_run_dir(tmp_path):
    run_dir = tmp_path / "run"
    command = [sys.executable, "-m", "t2v_exp.train", *FAST, "train.max_steps=40", "train.checkpoint_every=10",
               f"hydra.run.dir={run_dir}"]
    first = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        import time

        deadline = time.time() + 300
        while RunDirLock.holder(run_dir) is None and first.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        second = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
        assert second.returncode != 0
        assert f"Another process (pid {first.pid}) is training into {run_dir}" in second.stderr
        assert "Traceback" not in second.stderr
    finally:
        _, stderr = first.communicate(timeout=600)
    assert first.returncode == 0, stderr[-3000:]
    assert json.loads((run_dir / "status.json").read_text())["status"] == "ok"
    assert [p.name for p in list_checkpoints(run_dir / "checkpoints")] == ["checkpoint-000030", "checkpoint-000040"]
