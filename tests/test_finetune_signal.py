"""Tests with teeth: fine-tuning a tiny pretrained base on domain B must visibly teach it domain B.

The bases know horizontal motion (domain A); the default experiment fine-tunes with LoRA on vertical
motion (domain B) and scores base and fine-tuned models on the same held-out domain-B prompts and
seeds with the shapes oracle. Direction accuracy must rise by at least 0.3 with the paired 95% CI
above zero. A wrong noise schedule in sampling, a wrong training target or a LoRA that never reaches
the pipeline leaves the accuracy where it was, and this fails.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from t2v_exp import tiny_bases

from .conftest import CONF_DIR, REPO

# The tiny model presets whose bases are committed (AnimateDiff's two bases make one model).
MODELS = sorted({json.loads(p.read_text()).get("model") for p in tiny_bases.BUNDLE_ROOT.glob("*/record.json")} - {None})
MIN_GAIN = 0.3


def comparison_settings() -> list[str]:
    """The model.* settings the controlled comparison gives every family (LoRA rank, sampler steps)."""
    shared = OmegaConf.load(CONF_DIR / "sweep" / "compare_models_tiny.yaml").model
    flat = OmegaConf.to_container(shared)
    return [f"model.lora.{k}={v}" for k, v in flat.pop("lora").items()] + [f"model.{k}={v}" for k, v in flat.items()]


def run_default_experiment(model: str, run_dir) -> dict:
    command = [sys.executable, "-m", "t2v_exp.train", f"model={model}", *comparison_settings(), "logger=none",
               f"hydra.run.dir={run_dir}"]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((run_dir / "eval" / "metrics.json").read_text())


@pytest.mark.slow
@pytest.mark.parametrize("model", MODELS)
def test_fine_tuning_on_domain_b_raises_direction_accuracy(model, tmp_path):
    assert (CONF_DIR / "model" / f"{model}.yaml").is_file()
    report = run_default_experiment(model, tmp_path / "run")
    row = report["comparison"]["shapes_oracle"]["direction_ok"]
    assert report["comparison_protocol"]["n_pairs"] >= 16
    assert row["mean_delta"] >= MIN_GAIN and row["ci_low"] > 0, (
        f"{model}: direction accuracy {row['base_mean']:.2f} -> {row['tuned_mean']:.2f} "
        f"(delta {row['mean_delta']:+.2f}, 95% CI [{row['ci_low']:+.2f}, {row['ci_high']:+.2f}])")
