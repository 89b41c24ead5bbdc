"""The benchmark scripts still run against the current engine (they reach into its internals).

``make bench`` runs the CPU ones whenever figures are refreshed, but ``bench_gpu.py`` only runs on a
GPU, so its CPU path (same code, tiny architectures) is checked here on every test run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from .conftest import REPO


def run_bench(script: str, *args: str, timeout: int = 600) -> None:
    env = {**os.environ, "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, f"bench/{script}", *args], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]


def test_gpu_bench_runs_every_configuration_through_the_engine_on_cpu(tmp_path):
    out = tmp_path / "gpu_tiny.json"
    run_bench("bench_gpu.py", "--device", "cpu", "--tiny", "--warmup", "1", "--rounds", "1", "--steps", "1",
              "--out", str(out))
    rows = json.loads(out.read_text())["results"]
    assert len(rows) == 20  # 5 architectures x LoRA/full x checkpointing on/off
    for row in rows:  # ModelScope with checkpointing included: t2v_exp checkpoints the UNet3D's blocks
        assert row["status"] == "ok", row
        assert row["model_flops"] > 0 and row["engine_step_s"] > 0 and row["minimal_step_s"] > 0, row


@pytest.mark.slow
def test_overhead_and_loader_benches_write_their_figures(tmp_path):
    overhead, loader = tmp_path / "overhead.json", tmp_path / "loader.json"
    run_bench("bench_overhead.py", "--quick", "--families", "cogvideox_tiny", "--out", str(overhead))
    row = json.loads(overhead.read_text())["results"][0]
    assert row["engine_steps_per_s"] > 0 and row["minimal_steps_per_s"] > 0
    run_bench("bench_loader.py", "--quick", "--families", "cogvideox_tiny", "--skip-full-size", "--out", str(loader))
    row = json.loads(loader.read_text())["tiny_families"][0]
    assert row["loader_w2_clips_per_s"] > 0 and row["train_files_w2_steps_per_s"] > 0
