"""The real entrypoint in a subprocess, for each tiny family: what a run dir must contain."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import av
import pytest
from omegaconf import OmegaConf
from safetensors.torch import load_file

from .conftest import FAMILIES, NO_EVAL, REPO


def run_train(*overrides: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1"}
    flags = [o for o in overrides if o.startswith("-")]  # Hydra's own flags (-m) before the overrides
    rest = [o for o in overrides if not o.startswith("-")]
    return subprocess.run([sys.executable, "-m", "t2v_exp.train", *flags, *NO_EVAL, *rest], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("family", FAMILIES)
def test_two_step_train_writes_the_run_dir(family, tmp_path):
    run_dir = tmp_path / "run"
    result = run_train(f"model={FAMILIES[family]}", "train.max_steps=2", "train.checkpoint_every=1",
                       "validation.num_videos=1", f"hydra.run.dir={run_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    # metrics.jsonl: one record per step with the documented fields
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    for key in ("train/loss", "train/lr", "train/grad_norm", "train/samples_per_s", "train/peak_mem_mb"):
        assert all(isinstance(r[key], float) for r in rows), key
    # checkpoints at every step, each complete
    checkpoints = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert checkpoints == ["checkpoint-000001", "checkpoint-000002"]
    state = json.loads((run_dir / "checkpoints/checkpoint-000002/state.json").read_text())
    assert state["step"] == 2 and load_file(run_dir / "checkpoints/checkpoint-000002/trainable.safetensors")
    # validation mp4s that decode to the configured geometry
    videos = list((run_dir / "samples" / "step-000002").glob("*.mp4"))
    assert len(videos) == 1
    with av.open(str(videos[0])) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    config = (run_dir / ".hydra" / "config.yaml").read_text()
    assert f"name: {FAMILIES[family]}" in config
    model = OmegaConf.load(run_dir / ".hydra" / "config.yaml").model
    assert len(frames) == model.num_frames and frames[0].shape == (model.height, model.width, 3)
    # final LoRA in diffusers format (Wan 2.2: one directory per expert), and an offline W&B run inside the run dir
    loras = sorted((run_dir / "final").rglob("pytorch_lora_weights.safetensors"))
    assert loras and all(load_file(path) for path in loras)
    offline_runs = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(offline_runs) == 1 and list(offline_runs[0].glob("run-*.wandb"))
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["params/trainable"] > 0 and 0 < summary["params/trainable_pct"] < 100


def test_config_error_exits_nonzero_with_the_message(tmp_path):
    result = run_train("model=cogvideox_tiny", "model.num_frames=10", f"hydra.run.dir={tmp_path}/run")
    assert result.returncode != 0
    assert "model.num_frames=10 must be 4k+1" in result.stderr and "9 or 13" in result.stderr
    assert "Traceback" not in result.stderr


def test_unknown_model_lists_choices(tmp_path):
    result = run_train("model=cogvidex", f"hydra.run.dir={tmp_path}/run")
    assert result.returncode != 0 and "cogvideox_tiny" in result.stderr


def test_a_sweep_whose_every_job_failed_exits_nonzero(tmp_path):
    sweep_dir = tmp_path / "sweep"
    # Neither frame count is 4k+1: both CogVideoX jobs fail at validation, before anything loads.
    result = run_train("-m", "model=cogvideox_tiny", "model.num_frames=10,14", "logger=none",
                       f"hydra.sweep.dir={sweep_dir}")
    assert result.returncode != 0
    assert "every job of the sweep failed (0_cogvideox_tiny_shapes: failed, 1_cogvideox_tiny_shapes: failed)" in \
        result.stderr
    assert (sweep_dir / "report.md").is_file()  # the report is still written first


def test_a_run_failing_before_its_first_step_is_marked_and_passed_over(tmp_path):
    """No half-made run dir is mistaken for a run: it says failed, and resume=latest looks past it."""
    common = ["train.max_steps=2", "train.checkpoint_every=1", "validation.enabled=false", "logger=none"]
    runs = tmp_path / "runs"
    good_dir, failed_dir, resumed_dir = (runs / f"{n}_modelscope_tiny_shapes" for n in ("a", "b", "c"))
    good = run_train(*common, f"hydra.run.dir={good_dir}")
    assert good.returncode == 0, good.stderr[-3000:]
    failed = run_train(*common, "model.pretrained=/nonexistent/checkpoint", f"hydra.run.dir={failed_dir}")
    assert failed.returncode != 0
    status = json.loads((failed_dir / "status.json").read_text())
    assert status["status"] == "failed" and "/nonexistent/checkpoint" in status["error"]
    assert not (failed_dir / "checkpoints").exists() and not (failed_dir / "metrics.jsonl").exists()
    resumed = run_train(*common, "train.max_steps=3", "resume=latest", f"hydra.run.dir={resumed_dir}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"Resumed from {good_dir / 'checkpoints' / 'checkpoint-000002'}" in resumed.stderr + resumed.stdout
    assert json.loads((resumed_dir / "checkpoints/checkpoint-000003/state.json").read_text())["step"] == 3
