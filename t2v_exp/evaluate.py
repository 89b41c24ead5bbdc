"""Evaluation entrypoint: ``python -m t2v_exp.evaluate run_dir=... | model=... | videos=DIR``.

Compose -> pick the mode -> build (model or folder) -> score -> finish. Outputs land in Hydra's
run dir: metrics.json, per_video.csv, videos/ and a W&B eval run. The exit status is non-zero
when a requested metric has no score (unless allow_skipped=true) or baseline= is not comparable,
after metrics.json is written (a plan that already differs from the baseline's is refused before
anything is generated).
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

from . import config as config_schema
from .config import CONF_DIR, register_configs
from .engine.batches import instantiate_dataset
from .engine.tracking import Tracker, redact
from .errors import USER_ERRORS, UserError
from .jobs.adopt import adopt_run_config, autocast_for, device_and_precision, load_model
from .quiet import quiet_logs
from .scoring.evaluation import (
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

log = logging.getLogger("t2v_exp.evaluate")
DEFAULT_EVAL_GROUP = "eval"  # evaluate.yaml's logger.group

register_configs()


class EvaluationIncomplete(UserError, ValueError):
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


def eval_logger(logger_cfg, run_logger):
    """An evaluation of a run joins that run's W&B group (and keeps its tags) unless logger.group is set."""
    if run_logger is None:
        return logger_cfg
    merged = logger_cfg.copy()
    with open_dict(merged):
        if merged.get("group") in (None, DEFAULT_EVAL_GROUP) and run_logger.get("group"):
            merged.group = run_logger.group
        merged.tags = list(dict.fromkeys([*(merged.get("tags") or []), *(run_logger.get("tags") or [])]))
    return merged


def record_adopted_config(cfg: DictConfig, out_dir: Path) -> None:
    """Hydra wrote .hydra/config.yaml before the run's model and dataset replaced the composed
    defaults: rewrite it so it shows what was evaluated (secrets masked, as the callback does)."""
    hydra_dir = out_dir / ".hydra"
    if hydra_dir.is_dir():
        container = redact(OmegaConf.to_container(cfg, resolve=False, enum_to_str=True))
        (hydra_dir / "config.yaml").write_text(OmegaConf.to_yaml(container))


def run_evaluation(cfg: DictConfig, out_dir: Path) -> dict:
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
        run_logger = None
        if cfg.run_dir:
            checkpoint = adopt_run_config(cfg)
            run_logger = OmegaConf.load(Path(cfg.run_dir).expanduser() / "config.yaml").get("logger")
            record_adopted_config(cfg, out_dir)
        else:
            checkpoint = None
        config_schema.validate_eval(without_auto(cfg))
        dataset = instantiate_dataset(cfg.dataset, split=settings.split, report_dir=str(out_dir))
        plan = evaluation_plan(settings, dataset)
        if cfg.baseline:  # refuse in the first seconds, not after generating every video
            check_plan_against_baseline(cfg.baseline, settings, plan)
        device, mixed = device_and_precision(cfg)
        model = load_model(cfg, checkpoint)
        container = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
        tracker = Tracker(out_dir, logger_cfg=eval_logger(cfg.logger, run_logger), config=container, job_type="eval",
                          extra_tags=[str(cfg.model.name), str(cfg.dataset.name),
                                      "fine-tuned" if checkpoint is not None else "base"])
        description = {"mode": "run_dir" if checkpoint else "model", "model": cfg.model.name,
                       "dataset": cfg.dataset.name, "checkpoint": str(checkpoint) if checkpoint else None,
                       "finetuned": checkpoint is not None}
        return evaluate_model(model, dataset, settings, out_dir, fps=cfg.model.fps, autocast=autocast_for(device, mixed),
                              description=description, baseline=cfg.baseline, tracker=tracker, plan=plan,
                              role=role_of(description))
    finally:
        if tracker is not None:
            tracker.finish()


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="evaluate")
def main(cfg: DictConfig) -> None:
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    quiet_logs()
    try:
        evaluate(cfg, out_dir)
    except USER_ERRORS as exc:
        log.error("%s", exc)
        raise SystemExit(f"error: {exc}") from None
    log.info("Wrote %s", out_dir / "metrics.json")


if __name__ == "__main__":
    main()
