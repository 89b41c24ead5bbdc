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

from t2v_exp import tiny_bases

from .conftest import CONF_DIR, REPO

FAMILIES = [twin for twin in sorted(p.parent.name for p in tiny_bases.BUNDLE_ROOT.glob("*/record.json"))
            if (CONF_DIR / "model" / f"{twin}_tiny.yaml").is_file()]
MIN_GAIN = 0.3


def run_default_experiment(model: str, run_dir) -> dict:
    command = [sys.executable, "-m", "t2v_exp.train", f"model={model}", "logger=none", f"hydra.run.dir={run_dir}"]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((run_dir / "eval" / "metrics.json").read_text())


@pytest.mark.slow
@pytest.mark.parametrize("twin", FAMILIES)
def test_fine_tuning_on_domain_b_raises_direction_accuracy(twin, tmp_path):
    report = run_default_experiment(f"{twin}_tiny", tmp_path / "run")
    row = report["comparison"]["shapes_oracle"]["direction_ok"]
    assert report["comparison_protocol"]["n_pairs"] >= 16
    assert row["mean_delta"] >= MIN_GAIN and row["ci_low"] > 0, (
        f"{twin}: direction accuracy {row['base_mean']:.2f} -> {row['tuned_mean']:.2f} "
        f"(delta {row['mean_delta']:+.2f}, 95% CI [{row['ci_low']:+.2f}, {row['ci_high']:+.2f}])")
