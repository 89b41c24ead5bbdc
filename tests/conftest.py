"""Shared fixtures: one tiny-model/data cache per session, offline W&B, Hydra composition helpers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
CONF_DIR = REPO / "conf"


def discovered_families() -> dict[str, str]:
    """{family: its tiny preset} for every family the registry finds: conf/model/<family>_tiny.yaml
    (tests/test_family_spec.py checks that each exists), so a new family is tested without being listed."""
    from t2v_exp.models.registry import family_specs

    return {name: f"{name}_tiny" for name in sorted(family_specs())}


FAMILIES = discovered_families()


@pytest.fixture(scope="session", autouse=True)
def isolated_environment(tmp_path_factory):
    """Tiny twins and synthetic data in a session cache; W&B offline; nothing from the hub."""
    cache = os.environ.get("T2V_EXP_TEST_CACHE") or str(tmp_path_factory.mktemp("t2v_cache"))
    from t2v_exp.metrics.detector_weights import weights_dir

    saved = {k: os.environ.get(k)
             for k in ("T2V_EXP_CACHE", "T2V_EXP_WEIGHTS", "WANDB_MODE", "HF_HUB_OFFLINE", "WANDB_SILENT")}
    # The detector weights `make install` fetched stay where they are: the tests use the real FVD I3D.
    os.environ.update(T2V_EXP_WEIGHTS=str(weights_dir()), T2V_EXP_CACHE=cache, WANDB_MODE="offline",
                      HF_HUB_OFFLINE="1", WANDB_SILENT="true")
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    yield Path(cache)
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


# The default run ends with two evaluations (base and fine-tuned, 16 videos each); tests of other
# things turn them off, the tests of the default experiment itself keep them.
# Also the scale the engine tests were written at: batch 2 and LoRA rank 4 (the default experiment
# trains at batch 4 and, for ModelScope, rank 16; tests of those defaults do not use this).
NO_EVAL = ("train.evaluate_base=false", "train.evaluate_at_end=false", "gpu.batch_size=2", "model.lora.rank=4",
           "model.lora.alpha=4")


@pytest.fixture
def compose_train():
    """Compose a config with overrides exactly as @hydra.main would hand it to the job (without the
    default's closing evaluations unless the overrides turn them back on)."""
    from hydra.core.global_hydra import GlobalHydra

    from t2v_exp.config import compose_job_config

    def compose(overrides=(), run_dir=None, config_name: str = "train"):
        # an experiment preset decides its own evaluations (command-line overrides would win over it)
        presets = any(str(o).startswith(("experiment=", "+experiment=")) for o in overrides)
        extra = NO_EVAL if config_name == "train" and not presets else ()
        return compose_job_config([*extra, *overrides], run_dir=run_dir, config_name=config_name)

    yield compose
    GlobalHydra.instance().clear()


def model_config(family: str, compose, *extra: str):
    cfg = compose([f"model={FAMILIES[family]}", *extra])
    return cfg.model
