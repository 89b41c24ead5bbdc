"""Evaluation entrypoint: ``python -m t2v_exp.evaluate run_dir=... | model=... | videos=DIR``.

Compose -> pick the mode -> build (model or folder) -> score -> finish. Outputs land in Hydra's
run dir: metrics.json, per_video.csv, videos/ and a W&B eval run. The exit status is non-zero
when a requested metric has no score (unless allow_skipped=true) or baseline= is not comparable,
after metrics.json is written (a plan that already differs from the baseline's is refused before
anything is generated).
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

from . import config as config_schema
from .config import register_configs
from .engine.batches import instantiate_dataset
from .errors import ConfigError
from .evaluation import (
    AUTO,
    check_plan_against_baseline,
    evaluate_model,
    evaluation_plan,
    folder_prompts,
    folder_videos,
    load_video_folder,
    problems,
    score_and_report,
)
from .models.common import CheckpointNotAvailableError, mixed_precision_dtype

log = logging.getLogger("t2v_exp.evaluate")
USER_ERRORS = (ConfigError, CheckpointNotAvailableError, FileNotFoundError, ValueError)

register_configs()


def adopt_run_config(cfg: DictConfig) -> Path:
    """Take model and dataset from the training run's saved config; return its checkpoint."""
    from .engine.checkpoint import list_checkpoints

    run_dir = Path(cfg.run_dir).expanduser()
    saved = run_dir / "config.yaml"  # written by the trainer: resolved, secrets masked
    if not saved.is_file():
        raise FileNotFoundError(f"run_dir={run_dir}: no config.yaml (is this a t2v_exp training run dir?)")
    run_cfg = OmegaConf.load(saved)
    from .models.registry import family_modules

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
    if cfg.checkpoint:
        return Path(cfg.checkpoint).expanduser()
    checkpoints = list_checkpoints(run_dir / "checkpoints")
    if not checkpoints:
        raise FileNotFoundError(f"run_dir={run_dir}: no complete checkpoint under checkpoints/")
    return checkpoints[-1]


def autocast_for(device: str, mixed: str):
    if mixed == "no":
        return contextlib.nullcontext
    return lambda: torch.autocast(device_type=device, dtype=mixed_precision_dtype(mixed))


class EvaluationIncomplete(ValueError):
    """A requested metric has no score, or the baseline comparison was refused (metrics.json is written)."""


def evaluate(cfg: DictConfig, out_dir: Path) -> dict:
    """Score one run / model / folder into ``out_dir``; raises EvaluationIncomplete afterwards when a
    requested metric was skipped or failed (unless allow_skipped) or the baseline was refused."""
    report = run_evaluation(cfg, out_dir)
    failures = []
    if report.get("comparison_refused"):
        failures.append(report["comparison_refused"]["message"])
    missing = problems(report)
    if missing and not cfg.allow_skipped:
        failures.append(
            f"{len(missing)} of {len(report['metrics'])} requested metric(s) have no score:\n"
            + "\n".join(f"- {p['metric']} ({p['status']}): {p['reason']}; fix: {p['fix']}" for p in missing)
            + f"\nEvery metric is listed in {out_dir / 'metrics.json'}. Accept a partial evaluation with "
            "allow_skipped=true, or let metrics='[auto]' (the default) pick what can run here.")
    if failures:
        raise EvaluationIncomplete("\n".join(failures))
    return report


def without_auto(cfg: DictConfig) -> DictConfig:
    """validate_eval knows the metric names only; ``auto`` is resolved once the videos exist."""
    checked = cfg.copy()
    with open_dict(checked):
        checked.metrics = [m for m in cfg.metrics if m != AUTO]
    return checked


def role_of(description: dict) -> str:
    # W&B prefix: a base model without fine-tuned weights logs eval_base/*, like the trainer's
    # eval_base; a fine-tuned run or a folder of videos logs eval/*.
    return "eval_base" if description.get("mode") == "model" else "eval"


def run_evaluation(cfg: DictConfig, out_dir: Path) -> dict:
    from .engine.tracking import Tracker

    settings = cfg  # the eval settings are the top-level keys (metrics, num_videos, seed, ...)
    tracker = None
    try:
        if cfg.videos:
            videos, names = load_video_folder(cfg.videos)
            prompts = folder_prompts(cfg.videos, names, settings.prompts)
            reference, reference_names = None, None
            if cfg.reference:
                reference, reference_names = load_video_folder(cfg.reference, num_frames=videos.shape[1])
            container = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
            tracker = Tracker(out_dir, logger_cfg=cfg.logger, config=container, job_type="eval")
            description = {"mode": "videos", "videos": str(cfg.videos), "finetuned": None}
            return score_and_report(out_dir, videos=videos, names=names, video_records=folder_videos(names, prompts),
                                    reference=reference, reference_names=reference_names, settings=settings,
                                    description=description, baseline=cfg.baseline,
                                    video_dir=Path(cfg.videos).expanduser(), tracker=tracker, role="eval")
        checkpoint = adopt_run_config(cfg) if cfg.run_dir else None
        config_schema.validate_eval(without_auto(cfg))
        from safetensors.torch import load_file

        from .models import resolve_and_validate

        model_cls, roots = resolve_and_validate(cfg.model, cfg.paths.cache_dir)
        dataset = instantiate_dataset(cfg.dataset, split=settings.split, report_dir=str(out_dir))
        plan = evaluation_plan(settings, dataset)
        if cfg.baseline:  # refuse in the first seconds, not after generating every video
            check_plan_against_baseline(cfg.baseline, settings, plan)
        device = config_schema.resolve_device(cfg.gpu.device, torch.cuda.is_available())
        mixed = str(getattr(cfg.precision.mixed_precision, "value", cfg.precision.mixed_precision))
        model = model_cls(cfg.model, roots)
        if checkpoint is not None:
            model.load_trainable_state_dict(load_file(checkpoint / "trainable.safetensors"))
            log.info("Loaded fine-tuned weights from %s", checkpoint)
        model.place(torch.device(device), mixed_precision_dtype(mixed))
        container = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
        tracker = Tracker(out_dir, logger_cfg=cfg.logger, config=container, job_type="eval")
        description = {"mode": "run_dir" if checkpoint else "model", "model": cfg.model.name,
                       "dataset": cfg.dataset.name, "checkpoint": str(checkpoint) if checkpoint else None,
                       "finetuned": checkpoint is not None}
        return evaluate_model(model, dataset, settings, out_dir, fps=cfg.model.fps, autocast=autocast_for(device, mixed),
                              description=description, baseline=cfg.baseline, tracker=tracker, plan=plan,
                              role=role_of(description))
    finally:
        if tracker is not None:
            tracker.finish()


@hydra.main(version_base="1.3", config_path="../conf", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        evaluate(cfg, out_dir)
    except USER_ERRORS as exc:
        log.error("%s", exc)
        raise SystemExit(f"error: {exc}") from None
    log.info("Wrote %s", out_dir / "metrics.json")


if __name__ == "__main__":
    main()
