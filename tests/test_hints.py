"""Every fix a skipped metric prints is pasted back, as printed, into the entrypoint it came from.

A hint such as ``set metric_settings.fvd.detector_path=...`` looks right but Hydra refuses it (the key
is new to an empty dict, so it needs ``+``); these tests take the text the code really produces and
give its overrides to Hydra's own parser and composer.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from t2v_exp.config import compose_job_config
from t2v_exp.metrics.suite import compute_metrics
from t2v_exp.scoring.evaluation import entrypoint_hints

from .conftest import REPO

OVERRIDE = re.compile(r"(?<![\w/.-])(\+?[a-z_]+(?:\.[a-z_0-9]+)+=[^\s,;`)]+)")


def overrides_in(fix: str) -> list[str]:
    found = OVERRIDE.findall(fix)
    assert found, f"no override in the fix {fix!r}"
    return found


def skipped_fixes(metrics: list[str], settings: dict, **inputs) -> dict[str, str]:
    videos = torch.rand(2, 8, 3, 32, 32) * 2 - 1
    results = compute_metrics(videos, metrics=metrics, settings=settings, **inputs)["metrics"]
    entries = {k: v for k, v in results.items() if v.get("status") == "skipped"}
    assert set(entries) == set(metrics), results
    return entries


@pytest.fixture
def missing_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("T2V_EXP_WEIGHTS", str(tmp_path / "no_weights"))
    return {"clip_score": {"cache_dir": str(tmp_path / "no_clip")},
            "inception_score": {"weights_path": str(tmp_path / "no_inception.pth")}}


def test_weight_file_fixes_compose_in_evaluate_as_printed(missing_weights):
    entries = skipped_fixes(["clip_score", "fvd", "inception_score"], missing_weights,
                            prompts=["a red circle moving up"] * 2, reference_videos=torch.zeros(2, 16, 3, 32, 32))
    for name, entry in entries.items():
        for override in overrides_in(entry["fix"]):
            cfg = compose_job_config([override, "model=modelscope_tiny"], config_name="evaluate")
            key, value = override.lstrip("+").split("=", 1)
            assert str(_select(cfg, key)) == value, (name, override)


def test_the_same_fixes_compose_in_train_where_the_settings_live_under_evaluation(missing_weights):
    entries = skipped_fixes(["clip_score", "fvd"], missing_weights, prompts=["a red circle moving up"] * 2,
                            reference_videos=torch.zeros(2, 16, 3, 32, 32))
    entrypoint_hints(entries, ["p", "p"], "evaluation.")
    for entry in entries.values():
        for override in overrides_in(entry["fix"]):
            assert override.lstrip("+").startswith("evaluation.metric_settings."), override
            cfg = compose_job_config([override])
            key, value = override.lstrip("+").split("=", 1)
            assert str(_select(cfg, key)) == value


def test_the_unprefixed_form_the_old_hints_printed_is_refused_by_hydra():
    """What the tests above guard against: without `+` Hydra rejects a key new to metric_settings."""
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException):
        compose_job_config(["metric_settings.fvd.detector_path=/x.pt"], config_name="evaluate")


def _select(cfg, key: str):
    from omegaconf import OmegaConf

    return OmegaConf.select(cfg, key)


# ----------------------------------------------------------------------------- --help

@pytest.mark.parametrize("script", ["t2v-train", "t2v-evaluate", "t2v-generate", "t2v-report", "t2v-rate"])
def test_console_scripts_find_their_config_from_any_directory(script, tmp_path):
    """The installed console scripts (pyproject's [project.scripts]), run outside the checkout: a
    relative config_path would be read against the script in the venv's bin/ and find no config."""
    executable = Path(sys.executable).parent / script
    assert executable.is_file(), f"{executable} missing: the project is not pip-installed in this venv"
    out = subprocess.run([str(executable), "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "python -m t2v_exp." in out.stdout


@pytest.mark.parametrize("entrypoint", ["train", "evaluate", "generate", "report"])
def test_help_lists_real_groups_entrypoints_and_recipes(entrypoint):
    out = subprocess.run([sys.executable, "-m", f"t2v_exp.{entrypoint}", "--help"], cwd=REPO, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    for name in ("train", "evaluate", "generate", "report"):
        assert f"python -m t2v_exp.{name}" in text and f"t2v-{name}" in text
    assert "Recipes:" in text
    group_lines = [line.split() for line in text.splitlines() if line.startswith("  ") and "," in line
                   and not line.strip().startswith("python")]
    groups = {words[0] for words in group_lines}
    assert not groups & {"accelerate", "schema/dataset", "schema/model", "hydra"}
    if entrypoint == "train":
        assert {"model", "dataset", "optimizer", "precision", "gpu", "experiment"} <= groups


def test_every_option_the_train_help_lists_composes():
    from t2v_exp.help import ENTRYPOINTS, group_options

    for group in ENTRYPOINTS["train"][1]:
        if group in ("sweep", "hparams_search"):  # multirun presets: composing one needs the sweeper plugin
            continue
        for option in group_options(group):
            compose_job_config([f"{group}={option}"])
