"""Fault injection: NaN batches, SIGTERM mid-run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from omegaconf import OmegaConf, open_dict
from safetensors.torch import load_file

from t2v_exp.engine.checkpoint import list_checkpoints
from t2v_exp.engine.trainer import NonFiniteLossError
from t2v_exp.train import run_training

from .conftest import NO_EVAL, REPO

# On the committed ModelScope base: its temporal convs are live, so their dropout (p=0.1) is part
# of what a resume must reproduce (the trainer seeds the global RNG per micro-step).
FAST = [*NO_EVAL, "validation.enabled=false", "logger=none", "train.warmup_steps=0"]
ENV = {**os.environ, "WANDB_MODE": "offline"}


def train_cli(*overrides: str) -> list[str]:
    return [sys.executable, "-m", "t2v_exp.train", *FAST, *overrides]


def run_to_end(command: list[str], run_dir) -> None:
    subprocess.run([*command, f"hydra.run.dir={run_dir}"], cwd=REPO, env=ENV, check=True, capture_output=True,
                   timeout=600)


def wait_for_metric_lines(metrics, count: int) -> None:
    deadline = time.time() + 300
    while time.time() < deadline and (not metrics.exists() or len(metrics.read_text().splitlines()) < count):
        time.sleep(0.01)


def assert_resume_matches(command: list[str], interrupted, straight, resumed, final_step: int) -> None:
    """resume=<interrupted run> must end with exactly the weights of the uninterrupted run."""
    run_to_end([*command, f"resume={interrupted}"], resumed)
    name = f"checkpoints/checkpoint-{final_step:06d}/trainable.safetensors"
    a, b = load_file(straight / name), load_file(resumed / name)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def poisoned(cfg, nan_epochs: list[int]):
    with open_dict(cfg):
        cfg.dataset = OmegaConf.create({
            "_target_": "tests.faults.PoisonedClips", "name": "poisoned", "num_videos": 4,
            "num_frames": cfg.model.num_frames, "height": cfg.model.height, "width": cfg.model.width,
            "nan_epochs": nan_epochs,
        })
    return cfg


def test_nan_steps_are_skipped_counted_and_training_continues(compose_train, tmp_path):
    # 4 clips, batch 2: epoch 1 = steps 3-4 are NaN, then clean data again
    cfg = poisoned(compose_train([*FAST, "train.max_steps=8"], tmp_path), nan_epochs=[1])
    summary = run_training(cfg, tmp_path)
    assert summary["step"] == 8 and summary["skipped_nonfinite"] == 2
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["train/loss"] is None for r in rows] == [False, False, True, True, False, False, False, False]
    weights = load_file(tmp_path / "checkpoints/checkpoint-000008/trainable.safetensors")
    assert all(torch.isfinite(v).all() for v in weights.values())


def test_too_many_nan_steps_stop_and_keep_the_last_good_checkpoint(compose_train, tmp_path):
    cfg = poisoned(compose_train([*FAST, "train.max_steps=20", "train.checkpoint_every=2",
                                  "train.max_nonfinite_in_a_row=3"], tmp_path), nan_epochs=[1, 2, 3])
    with pytest.raises(NonFiniteLossError, match="3 non-finite step"):
        run_training(cfg, tmp_path)
    kept = list_checkpoints(tmp_path / "checkpoints")
    assert kept and kept[-1].name == "checkpoint-000004"  # skipped steps never changed the weights
    good = load_file(kept[-1] / "trainable.safetensors")
    assert all(torch.isfinite(v).all() for v in good.values())
    if len(kept) > 1:
        before = load_file(kept[-2] / "trainable.safetensors")
        assert all(torch.equal(before[k], good[k]) for k in good)


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_resume_finishes_identically(tmp_path):
    command = train_cli("train.max_steps=60", "train.checkpoint_every=0")
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    run_to_end(command, straight)
    proc = subprocess.Popen([*command, f"hydra.run.dir={interrupted}"], cwd=REPO, env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wait_for_metric_lines(interrupted / "metrics.jsonl", 5)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGTERM, stderr[-2000:]
    saved = list_checkpoints(interrupted / "checkpoints")
    assert saved and 5 <= int(saved[-1].name.split("-")[1]) < 60
    assert json.loads((interrupted / "status.json").read_text())["status"] == "interrupted"
    assert_resume_matches(command, interrupted, straight, tmp_path / "resumed", 60)


def test_half_written_checkpoints_are_never_resumed_from(compose_train, tmp_path):
    run_training(compose_train([*FAST, "train.max_steps=2", "dataset.num_videos=4"], tmp_path), tmp_path)
    root = tmp_path / "checkpoints"
    # what a kill during a write leaves: a staging dir, and a directory without its state.json
    (root / ".tmp-checkpoint-000009-4242").mkdir()
    (root / ".tmp-checkpoint-000009-4242" / "trainable.safetensors").write_bytes(b"\0" * 10)
    (root / "checkpoint-000008").mkdir()
    (root / "checkpoint-000008" / "trainable.safetensors").write_bytes(b"\0" * 10)
    from t2v_exp.engine.resume import find_resume_checkpoint

    assert find_resume_checkpoint("latest", tmp_path, "_x").name == "checkpoint-000002"


@pytest.mark.slow
@pytest.mark.parametrize("kill_after_lines", [3, 11])
def test_sigkill_then_resume_latest_ends_with_identical_weights(tmp_path, kill_after_lines):
    command = train_cli("train.max_steps=20", "train.checkpoint_every=2")
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    run_to_end(command, straight)
    proc = subprocess.Popen([*command, f"hydra.run.dir={killed}"], cwd=REPO, env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_metric_lines(killed / "metrics.jsonl", kill_after_lines)
    proc.send_signal(signal.SIGKILL)  # no handler can run: whatever is on disk is what we get
    proc.wait(timeout=60)
    assert list_checkpoints(killed / "checkpoints")
    assert_resume_matches(command, killed, straight, tmp_path / "resumed", 20)


def test_unwritable_run_dir_fails_before_loading_anything(compose_train, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    run_dir = blocker / "run"  # mkdir under a regular file fails, even for root
    from t2v_exp.errors import ConfigError

    with pytest.raises(ConfigError, match="not writable.*hydra.run.dir"):
        run_training(compose_train([*FAST, "train.max_steps=2"], run_dir), run_dir)


@pytest.mark.slow
def test_disk_full_during_a_checkpoint_keeps_the_previous_one(compose_train, tmp_path):
    small = tmp_path / "small"
    small.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(small)], capture_output=True).returncode:
        pytest.skip("needs permission to mount a 1 MB tmpfs (root in a container that allows it)")
    try:
        from t2v_exp.engine.checkpoint import load_checkpoint
        from t2v_exp.engine.trainer import CheckpointWriteError

        run_dir = small / "run"
        cfg = compose_train([*FAST, "train.max_steps=20", "train.checkpoint_every=1", "train.keep_last=10"], run_dir)
        with pytest.raises(CheckpointWriteError, match="previous checkpoint .* is intact"):
            run_training(cfg, run_dir)
        kept = list_checkpoints(run_dir / "checkpoints")
        assert kept and not list((run_dir / "checkpoints").glob(".tmp-*"))
        restored = load_checkpoint(kept[-1])  # the last complete checkpoint still loads
        assert restored.state.step == int(kept[-1].name.split("-")[1]) and restored.trainable
    finally:
        # Lazy: files the run left open in this process would make a plain umount fail as busy.
        subprocess.run(["umount", "--lazy", str(small)], capture_output=True)


def test_a_crashing_loader_worker_names_the_files(compose_train, tmp_path):
    from t2v_exp.engine.batches import DataLoadingError

    cfg = compose_train([*FAST, "train.max_steps=4", "gpu.num_workers=1"], tmp_path)
    with open_dict(cfg):
        cfg.dataset = OmegaConf.create({
            "_target_": "tests.faults.CrashingClips", "name": "crashing", "num_videos": 4, "crash_index": 2,
            "num_frames": cfg.model.num_frames, "height": cfg.model.height, "width": cfg.model.width,
        })
    with pytest.raises(DataLoadingError) as caught:
        run_training(cfg, tmp_path)
    assert "/data/clip_002.mp4" in str(caught.value) and "worker" in str(caught.value)


def staging_dirs(root) -> list[str]:
    return [p.name for p in os.scandir(root) if p.name.startswith(".tmp-")] if root.is_dir() else []


def wait_until_stopped(pid: int, timeout: float = 10.0) -> None:
    """Until /proc says the process is stopped (state T), so nothing more happens in it."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        with open(f"/proc/{pid}/stat") as stat:
            state = stat.read().rsplit(")", 1)[1].split()[0]
        if state in ("T", "t"):
            return
        time.sleep(0.001)
    raise AssertionError(f"process {pid} did not stop within {timeout} s")


@pytest.mark.slow
def test_sigkill_during_a_checkpoint_write_then_resume(tmp_path):
    """Kill the moment a staging directory exists: the half-written checkpoint must be ignored."""
    command = train_cli("train.max_steps=20", "train.checkpoint_every=1", "train.keep_last=3")
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    run_to_end(command, straight)
    proc = subprocess.Popen([*command, f"hydra.run.dir={killed}"], cwd=REPO, env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    root = killed / "checkpoints"
    caught_staging = False
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if staging_dirs(root) and len(list_checkpoints(root)) >= 3:
            # Freeze first, then look again: a tiny checkpoint can be renamed into place between
            # the look and the kill, and the kill must land while the staging dir exists.
            proc.send_signal(signal.SIGSTOP)
            wait_until_stopped(proc.pid)
            if staging_dirs(root):
                proc.kill()
                caught_staging = True
                break
            proc.send_signal(signal.SIGCONT)
    proc.wait(timeout=60)
    assert caught_staging, "never saw a checkpoint being written"
    assert any(p.name.startswith(".tmp-") for p in root.iterdir())  # the half-written one is still there
    assert_resume_matches(command, killed, straight, tmp_path / "resumed", 20)


DISK_FILLS_UP = """\
_target_: tests.faults.DiskFillsUp
name: disk_fills_up
num_videos: 4
num_frames: ${model.num_frames}
height: ${model.height}
width: ${model.width}
full_at: 2
limit_bytes: 512   # the "failed" record (error + traceback) is larger: its write fails
"""


def test_status_json_survives_a_full_disk(tmp_path):
    """The disk fills up mid-run: the failed status cannot be written, so status.json must keep the
    last good one whole (no half-written file, no stray temporary file) and the exit is non-zero."""
    conf = tmp_path / "conf" / "dataset"
    conf.mkdir(parents=True)
    (conf / "disk_fills_up.yaml").write_text(DISK_FILLS_UP)
    run_dir = tmp_path / "run"
    result = subprocess.run(
        [*train_cli("train.max_steps=8", "dataset=disk_fills_up"), f"hydra.searchpath=[file://{tmp_path / 'conf'}]",
         f"hydra.run.dir={run_dir}"], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)
    assert result.returncode != 0
    output = result.stdout + result.stderr  # Hydra's console log goes to stdout
    assert "No space left on device (injected" in output
    assert f"Could not record status 'failed' in {run_dir / 'status.json'}" in output
    assert json.loads((run_dir / "status.json").read_text())["status"] == "running"
    assert [p.name for p in run_dir.iterdir() if "tmp" in p.name] == []
