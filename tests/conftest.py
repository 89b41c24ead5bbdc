"""Shared fixtures: one tiny-model/data cache per session, offline W&B, Hydra composition helpers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
CONF_DIR = REPO / "conf"
FAMILIES = {
    "modelscope": "modelscope_tiny",
    "cogvideox": "cogvideox_tiny",
    "animatediff": "animatediff_tiny",
}


@pytest.fixture(scope="session", autouse=True)
def isolated_environment(tmp_path_factory):
    """Tiny twins and synthetic data in a session cache; W&B offline; nothing from the hub."""
    cache = os.environ.get("T2V_EXP_TEST_CACHE") or str(tmp_path_factory.mktemp("t2v_cache"))
    saved = {k: os.environ.get(k) for k in ("T2V_EXP_CACHE", "WANDB_MODE", "HF_HUB_OFFLINE", "WANDB_SILENT")}
    os.environ.update(T2V_EXP_CACHE=cache, WANDB_MODE="offline", HF_HUB_OFFLINE="1", WANDB_SILENT="true")
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    yield Path(cache)
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture
def compose_train():
    """Compose conf/train.yaml with overrides, with HydraConfig set (as under @hydra.main)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from t2v_exp.config import register_configs

    register_configs()

    def _compose(overrides: list[str] = (), run_dir: Path | None = None, config_name: str = "train"):
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose(config_name=config_name, overrides=list(overrides), return_hydra_config=True)
        if run_dir is not None:
            with open_dict(cfg):
                cfg.hydra.runtime.output_dir = str(run_dir)
        HydraConfig.instance().set_config(cfg)
        # @hydra.main hands the job its config without the `hydra` node; do the same.
        with open_dict(cfg):
            del cfg["hydra"]
        return cfg

    yield _compose
    GlobalHydra.instance().clear()


def model_config(family: str, compose, *extra: str):
    cfg = compose([f"model={FAMILIES[family]}", *extra])
    return cfg.model
