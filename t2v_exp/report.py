"""Sweep report: ``python -m t2v_exp.report sweep_dir=outputs/sweeps/<sweep>``.

Reads every job directory of a sweep and writes report.md, report.html and PNG plots (into the
sweep dir by default), and logs the table to W&B. Also called automatically after a multirun.
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
from omegaconf import DictConfig

from .reporting.collect import collect_jobs, metric_columns
from .reporting.html import render_html
from .reporting.markdown import render_markdown, score_cell
from .reporting.plots import loss_curves, metric_bars

log = logging.getLogger("t2v_exp.report")


def write_report(sweep_dir: Path, out_dir: Path | None = None, log_to_wandb: bool = True, logger_cfg=None) -> dict:
    sweep_dir = Path(sweep_dir).expanduser()
    if not sweep_dir.is_dir():
        raise FileNotFoundError(f"sweep_dir={sweep_dir} is not a directory")
    out_dir = Path(out_dir or sweep_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = collect_jobs(sweep_dir)
    plots = {"Training loss": loss_curves(rows, out_dir / "loss_curves.png"),
             "Metrics before / after fine-tuning": metric_bars(rows, out_dir / "metrics_before_after.png")}
    md_plots = {title: (path.name if path else None) for title, path in plots.items()}
    (out_dir / "report.md").write_text(render_markdown(rows, md_plots))
    (out_dir / "report.html").write_text(render_html(rows, plots, out_dir))
    if log_to_wandb:
        log_table(rows, out_dir, logger_cfg, sweep_dir.name)
    log.info("Report for %d job(s): %s", len(rows), out_dir / "report.md")
    return {"jobs": len(rows), "ok": sum(r.status == "ok" for r in rows), "report": str(out_dir / "report.md")}


def log_table(rows, out_dir: Path, logger_cfg, sweep_name: str) -> None:
    import wandb

    from .engine.tracking import wandb_mode

    mode = wandb_mode(str(getattr(getattr(logger_cfg, "mode", "auto"), "value", getattr(logger_cfg, "mode", "auto"))))
    columns = metric_columns(rows)
    table = wandb.Table(columns=["job", "model", "dataset", "status", "final_loss", "trainable",
                                 *[f"{m}/{k}" for m, k in columns]])
    for row in rows:
        table.add_data(row.name, row.model, row.dataset, row.status, row.final_loss, row.trainable,
                       *[score_cell(row, m, k) for m, k in columns])
    run = wandb.init(project=getattr(logger_cfg, "project", None) or "t2v_exp",
                     entity=getattr(logger_cfg, "entity", None), group=getattr(logger_cfg, "group", None) or sweep_name,
                     job_type="report", name=f"report-{sweep_name}", dir=str(out_dir), mode=mode,
                     reinit="finish_previous", settings=wandb.Settings(console="off", silent=True))
    try:
        run.log({"report/jobs": table})
        run.summary.update({"report/jobs_ok": sum(r.status == "ok" for r in rows), "report/jobs": len(rows)})
    finally:
        run.finish()


@hydra.main(version_base="1.3", config_path="../conf", config_name="report")
def main(cfg: DictConfig) -> None:
    try:
        write_report(Path(cfg.sweep_dir), Path(cfg.out_dir) if cfg.out_dir else None, cfg.wandb, cfg.logger)
    except FileNotFoundError as exc:
        raise SystemExit(f"error: {exc}") from None


if __name__ == "__main__":
    main()
