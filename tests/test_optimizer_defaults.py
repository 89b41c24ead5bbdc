"""optimizer.lr / weight_decay follow the model's reference values for its fine-tune mode, an explicit
value wins, and a full fine-tune at a LoRA-sized learning rate warns (in the config and in the run)."""

from __future__ import annotations

import logging

import pytest

from t2v_exp.config import full_finetune_lr_warning
from t2v_exp.train import run_training

from .conftest import CONF_DIR

MODELS = sorted(p.stem for p in (CONF_DIR / "model").glob("*.yaml"))
OPTIMIZERS = sorted(p.stem for p in (CONF_DIR / "optimizer").glob("*.yaml"))
FULL_SIZE = [m for m in MODELS if not m.endswith("_tiny")]


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize("mode", ["lora", "full"])
def test_every_model_trains_at_its_own_default_for_the_mode(compose_train, optimizer, mode):
    seen = set()
    for model in MODELS:
        cfg = compose_train([f"model={model}", f"model.finetune={mode}", f"optimizer={optimizer}"])
        declared = cfg.model.optimizer_defaults[mode]
        assert (cfg.optimizer.lr, cfg.optimizer.weight_decay) == (declared.lr, declared.weight_decay), model
        seen.add(cfg.optimizer.lr)
    assert len(seen) > 1  # the families differ: one value for all would mean the defaults are not read


def test_full_fine_tunes_of_the_real_bases_default_below_their_lora_rate(compose_train):
    """Full weights take a smaller step than a low-rank update (AnimateDiff trains only its motion
    modules either way, at one rate); CogVideoX's full default is CogVideo's own SFT rate."""
    for model in FULL_SIZE:
        defaults = compose_train([f"model={model}"]).model.optimizer_defaults
        assert defaults.full.lr <= defaults.lora.lr, model
        assert defaults.full.lr <= 1e-4, model
    assert compose_train(["model=cogvideox", "model.finetune=full"]).optimizer.lr == pytest.approx(2e-5)


def test_an_explicit_learning_rate_wins_in_either_mode(compose_train):
    for mode in ("lora", "full"):
        cfg = compose_train(["model=wan", f"model.finetune={mode}", "optimizer.lr=7e-5", "optimizer.weight_decay=0"])
        assert (cfg.optimizer.lr, cfg.optimizer.weight_decay) == (7e-5, 0.0)


@pytest.mark.parametrize("model", FULL_SIZE)
def test_full_fine_tune_at_a_lora_sized_rate_warns(compose_train, model):
    lora_default = compose_train([f"model={model}"]).model.optimizer_defaults.lora.lr
    assert full_finetune_lr_warning(compose_train([f"model={model}", "model.finetune=full"])) is None
    assert full_finetune_lr_warning(compose_train([f"model={model}", f"optimizer.lr={lora_default * 20}"])) is None
    warning = full_finetune_lr_warning(compose_train([f"model={model}", "model.finetune=full",
                                                      f"optimizer.lr={lora_default * 20}"]))
    assert warning is not None and "model.finetune=full" in warning and model in warning
    full_default = compose_train([f"model={model}"]).model.optimizer_defaults.full.lr
    assert f"optimizer.lr={full_default:g}" in warning  # names the value to use


def test_the_run_logs_the_warning(compose_train, tmp_path, caplog):
    cfg = compose_train(["model.finetune=full", "optimizer.lr=0.05", "train.max_steps=1", "logger=none",
                         "validation.enabled=false", "dataset.num_videos=2"], tmp_path)
    with caplog.at_level(logging.WARNING, logger="t2v_exp"):
        run_training(cfg, tmp_path)
    assert any("LoRA-sized rate" in r.getMessage() for r in caplog.records)
