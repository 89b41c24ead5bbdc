"""Tests with teeth: fine-tuning a tiny pretrained base on domain B must visibly teach it domain B.

The bases know horizontal motion (domain A). The controlled comparison (``sweep=compare_models_tiny``,
what ``make sweep`` runs, through Hydra's real launcher) fine-tunes every family with LoRA on vertical
motion (domain B) and scores base and fine-tuned models on the same held-out domain-B prompts and
seeds with the shapes oracle. For each family, direction accuracy (AnimateDiff: the motion's axis,
see SCORE) must rise by at least 0.3 with the 95% interval over prompts above zero. The test trains
one seed per family for 1500 steps (TRAINING): `make sweep`'s three seeds at 1000 steps show honestly
which families learn within that smaller budget (README), while this test asks whether every
family's fine-tuning path works at all, at a budget that teaches each of them. A wrong noise schedule in sampling, a wrong training target or a LoRA that
never reaches the pipeline leaves the accuracy where it was, and this fails.

The sweep runs once per session, with just the families selected (``-k ltx_tiny`` runs one job).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from t2v_exp import tiny_bases

from .conftest import CONF_DIR, REPO

# The tiny model presets whose bases are committed (AnimateDiff's two bases make one model).
MODELS = sorted({json.loads(p.read_text()).get("model") for p in tiny_bases.BUNDLE_ROOT.glob("*/record.json")} - {None})
MIN_GAIN = 0.3
TRAINING = ["train.max_steps=1500", "hydra.sweeper.params.seed=1"]
# The score each family must raise. AnimateDiff's motion LoRA trains only the motion modules, which
# never see the prompt: it can learn domain B's motion (vertical) but not which way the words say, so
# it must get the axis right (shapes_oracle axis_ok: the direction without its sign).
SCORE = {"animatediff_tiny": "axis_ok"}


@pytest.fixture(scope="session")
def comparison_sweep(request, tmp_path_factory):
    """{model: [its job dirs, one per training seed]} from one run of the controlled comparison over
    the selected models."""
    selected = [item.callspec.params["model"] for item in request.session.items
                if item.originalname == "test_fine_tuning_on_domain_b_raises_direction_accuracy"]
    sweep_dir = tmp_path_factory.mktemp("comparison") / "sweep"
    # Quoted: one value for the sweeper's parameter, not a sweep over Hydra's own config.
    models = "'" + ",".join(selected) + "'"
    command = [sys.executable, "-m", "t2v_exp.train", "sweep=compare_models_tiny", f"hydra.sweeper.params.model={models}",
               "logger=none", f"hydra.sweep.dir={sweep_dir}", *TRAINING]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=3600,
                          env={**os.environ, "WANDB_MODE": "offline"})
    assert done.returncode == 0, done.stderr[-3000:]
    jobs = {}
    for job in sweep_dir.iterdir():
        if (job / "status.json").is_file():
            status = json.loads((job / "status.json").read_text())
            assert status["status"] == "ok", (job.name, status.get("error"))
            jobs.setdefault(OmegaConf.load(job / "config.yaml").model.name, []).append(job)
    return jobs


@pytest.mark.slow
@pytest.mark.parametrize("model", MODELS)
def test_fine_tuning_on_domain_b_raises_direction_accuracy(model, comparison_sweep):
    from t2v_exp.reporting.aggregate import summarize_models
    from t2v_exp.reporting.collect import read_job

    assert (CONF_DIR / "model" / f"{model}.yaml").is_file()
    jobs = comparison_sweep[model]
    assert len(jobs) == 1  # TRAINING: one training seed
    for job in jobs:
        assert OmegaConf.load(job / "config.yaml").dataset.domain == "vertical_motion"  # domain B, unseen by the base
        report = json.loads((job / "eval" / "metrics.json").read_text())
        assert report["comparison_protocol"]["n_prompts"] >= 16
    summaries, _ = summarize_models([read_job(job) for job in jobs])
    score = SCORE.get(model, "direction_ok")
    row = summaries[0].rows[("shapes_oracle", score)]
    assert row["runs"] == 1 and row["n_prompts"] >= 16
    assert row["mean_delta"] >= MIN_GAIN and row["ci_low"] > 0, (
        f"{model}: {score} {row['base']:.2f} -> {row['tuned']:.2f} "
        f"(delta {row['mean_delta']:+.2f}, 95% CI [{row['ci_low']:+.2f}, {row['ci_high']:+.2f}], p {row['p_value']:.3g})")
