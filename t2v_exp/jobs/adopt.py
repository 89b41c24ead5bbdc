"""A trained run as a model again: what ``evaluate run_dir=`` and ``generate run_dir=`` share.

``adopt_run_config`` replaces the composed model and dataset with the ones the run trained on (its
family's schema types them); ``load_model`` builds the model, loads the checkpoint's fine-tuned
weights (checked: readable, finite) and places it on the configured device.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from ..config import enum_value, mixed_precision_dtype, resolve_device
from ..engine.checkpoint import list_checkpoints, load_trainable
from ..models import resolve_and_validate
from ..models.registry import family_modules

log = logging.getLogger(__name__)


def adopt_run_config(cfg: DictConfig) -> Path:
    """Take model and dataset from the training run's saved config; return its checkpoint."""
    run_dir = Path(cfg.run_dir).expanduser()
    saved = run_dir / "config.yaml"  # written by the trainer: resolved, secrets masked
    if not saved.is_file():
        raise FileNotFoundError(f"run_dir={run_dir}: no config.yaml (is this a t2v_exp training run dir?)")
    run_cfg = OmegaConf.load(saved)
    family = run_cfg.model.get("family")
    families = family_modules()
    if family not in families:
        raise FileNotFoundError(f"run_dir={run_dir}: its config names model.family={family}, which no "
                                f"t2v_exp family module declares (known: {sorted(families)})")
    with open_dict(cfg):
        # The run's own family schema types its model (the composed default may be another family,
        # with other keys); the dataset is untyped at the top level, so it is replaced whole.
        cfg.model = OmegaConf.merge(OmegaConf.structured(families[family].Config), run_cfg.model)
        cfg.dataset = run_cfg.dataset
    if cfg.get("checkpoint"):
        return Path(cfg.checkpoint).expanduser()
    checkpoints = list_checkpoints(run_dir / "checkpoints")
    if not checkpoints:
        raise FileNotFoundError(f"run_dir={run_dir}: no complete checkpoint under checkpoints/")
    return checkpoints[-1]


def autocast_for(device: str, mixed: str):
    if mixed == "no":
        return contextlib.nullcontext
    return lambda: torch.autocast(device_type=device, dtype=mixed_precision_dtype(mixed))


def device_and_precision(cfg: DictConfig) -> tuple[str, str]:
    device = resolve_device(cfg.gpu.device, torch.cuda.is_available())
    return device, str(enum_value(cfg.precision.mixed_precision))


def load_model(cfg: DictConfig, checkpoint: Path | None):
    """The model of ``cfg.model`` with ``checkpoint``'s fine-tuned weights (None: the base), placed."""
    device, mixed = device_and_precision(cfg)
    model_cls, roots = resolve_and_validate(cfg.model, cfg.paths.cache_dir, mixed)
    model = model_cls(cfg.model, roots)
    if checkpoint is not None:
        model.load_trainable_state_dict(load_trainable(checkpoint))
        log.info("Loaded fine-tuned weights from %s", checkpoint)
    model.place(torch.device(device), mixed_precision_dtype(mixed))
    return model
