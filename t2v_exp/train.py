"""Training entrypoint: ``python -m t2v_exp.train [group=option ...] [key=value ...]``.

The recipe (``run_training``): check the run -> build data, model and optimizer -> score the base
model -> train -> write samples, export, score the fine-tuned model -> publish the model card.
``main`` runs it as a job (t2v_exp/jobs/policy.py: run-dir lock, status.json, exit codes, sweep
resume); everything lands in Hydra's run dir.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import hydra
from omegaconf import DictConfig

from .config import CONF_DIR, register_configs
from .engine.export import export_final
from .engine.setup import build_parts, frozen_on_accelerator, require_writable, validate_run
from .engine.trainer import Trainer
from .jobs.lock import RunDirLock
from .jobs.policy import run_as_job
from .models.spec import objective_label
from .quiet import quiet_logs
from .scoring.evaluation import evaluate_in_training
from .scoring.model_card import publish

log = logging.getLogger("t2v_exp.train")
register_configs()


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
def main(cfg: DictConfig) -> float | None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    quiet_logs()
    return run_as_job(cfg, run_training)


def run_training(cfg: DictConfig, run_dir: Path, lock: RunDirLock | None = None) -> dict:
    """The recipe. ``lock``: the caller holds ``run_dir``'s lock already (otherwise it is taken here)."""
    run_dir = Path(run_dir)
    checked = validate_run(cfg)  # configs and JSON only: nothing heavy has loaded yet
    require_writable(run_dir)
    own_lock = RunDirLock(run_dir).acquire() if lock is None and int(os.environ.get("RANK", "0")) == 0 else None
    parts = None
    exit_code = 1
    try:
        parts = build_parts(cfg, run_dir, checked)
        trainer = Trainer(cfg, run_dir, parts)
        if cfg.train.evaluate_base and trainer.state.step == 0:
            score(cfg, run_dir, parts, step=0, base=True)
        summary = trainer.fit()
        eval_report = None
        if summary["finished"]:
            trainer.sample()
            final_dir = export_final(parts.model, run_dir, parts.accelerator)
            summary["final_dir"] = str(final_dir)
            if cfg.train.evaluate_at_end:
                eval_report = score(cfg, run_dir, parts, step=trainer.state.step, base=False)
            if parts.is_main:
                publish(final_dir, cfg, model=parts.model, steps=trainer.state.step, eval_report=eval_report,
                        samples_root=run_dir / "samples")
        summary["objective_kind"] = objective_label(parts.model)
        summary["objective"] = objective_value(cfg.train.objective, summary, eval_report)
        parts.tracker.summary({**{"params/" + k: v for k, v in parts.param_counts.items()}, **summary})
        exit_code = 0
        return summary
    finally:
        # Always close the tracker so a multirun's next job never inherits a stale W&B run.
        if parts is not None:
            parts.tracker.finish(exit_code=exit_code)
        if own_lock is not None:
            own_lock.release()


def score(cfg: DictConfig, run_dir: Path, parts, *, step: int, base: bool) -> dict | None:
    """The evaluation step (rank 0 scores; every rank waits, with the VAE and text encoder on the accelerator)."""
    with frozen_on_accelerator(cfg, parts):
        if not parts.is_main:
            return None
        return evaluate_in_training(cfg, run_dir, parts.model, step=step, base=base,
                                    autocast=parts.accelerator.autocast, tracker=parts.tracker)


def objective_value(objective: str, summary: dict, eval_report: dict | None) -> float | None:
    """``train.objective``: ``final_loss`` or ``<metric>/<score>`` of the end-of-training evaluation."""
    if objective == "final_loss":
        return summary.get("final_loss")
    metric, _, score_name = objective.partition("/")
    entry = (eval_report or {}).get("metrics", {}).get(metric, {})
    if entry.get("status") != "ok" or score_name not in entry:
        raise ValueError(f"train.objective={objective}: no such score in the end-of-training evaluation "
                         f"(set train.evaluate_at_end=true and include '{metric}' in evaluation.metrics)")
    return float(entry[score_name])


if __name__ == "__main__":
    main()
