"""Two CPU processes through the real `accelerate launch` (DDP over gloo)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from safetensors.torch import load_file

from .conftest import NO_EVAL, REPO

# Split-invariance (processes) runs on the random ModelScope twin. Dropout masks are drawn per micro-batch, so
# their shapes (and draws) depend on how the global batch is split: with live dropout, accumulation and
# multi-process runs are equivalent in distribution, not bit for bit. In the random twin dropout is inert
# (each temporal conv stack ends in a zero-initialised conv, so neither the output nor the LoRA
# gradients see its masks), which isolates what must be exact.
COMMON = [*NO_EVAL, "model.pretrained=tiny:modelscope@random", "train.max_steps=3", "logger=none", "validation.enabled=false", "train.max_grad_norm=0",
          "optimizer.weight_decay=0", "dataset.num_videos=12"]


def test_two_processes_average_gradients_like_one_process_with_the_global_batch(tmp_path):
    accelerate = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                  "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    two, one = tmp_path / "two", tmp_path / "one"
    result = subprocess.run([*accelerate, "-m", "t2v_exp.train", *COMMON, "gpu.batch_size=2", f"hydra.run.dir={two}"],
                            cwd=REPO, env={**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"},
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    single = subprocess.run([sys.executable, "-m", "t2v_exp.train", *COMMON, "gpu.batch_size=4", f"hydra.run.dir={one}"],
                            cwd=REPO, env={**os.environ, "WANDB_MODE": "offline"}, capture_output=True, text=True,
                            timeout=600)
    assert single.returncode == 0, single.stderr[-3000:]

    two_summary = json.loads((two / "summary.json").read_text())
    assert two_summary["samples_seen"] == 12  # 2 processes x batch 2 x 3 steps
    # one set of outputs: rank 0 alone writes metrics, checkpoints and the log
    assert len((two / "metrics.jsonl").read_text().splitlines()) == 3
    assert [p.name for p in (two / "checkpoints").iterdir()] == ["checkpoint-000003"]
    assert (two / "train.log").read_text().count("Parameters:") == 1
    # gradients were averaged across ranks: same update as one process on the same global batch
    a = load_file(two / "checkpoints/checkpoint-000003/trainable.safetensors")
    b = load_file(one / "checkpoints/checkpoint-000003/trainable.safetensors")
    max_difference = max((a[k] - b[k]).abs().max().item() for k in a)
    assert max_difference < 1e-5, max_difference
    losses_two = [json.loads(x)["train/loss"] for x in (two / "metrics.jsonl").read_text().splitlines()]
    losses_one = [json.loads(x)["train/loss"] for x in (one / "metrics.jsonl").read_text().splitlines()]
    assert losses_two == pytest.approx(losses_one, rel=1e-5)
