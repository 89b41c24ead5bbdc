"""A sweep's report: report.md, report.html and the plots from every job dir, mirrored to W&B."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

from ..config import enum_value
from ..engine.tracking import masked_argv, wandb_mode
from ..rating import analysis_html, analysis_markdown, study_results, wandb_summary, wandb_table_rows
from .aggregate import WANDB_COLUMNS, summarize_models, wandb_rows
from .collect import JobRow, collect_jobs, sweep_params
from .html import render_html
from .markdown import render_markdown
from .plots import frame_grid, loss_curves, metric_bars
from .table import wandb_table

log = logging.getLogger("t2v_exp.report")


def write_report(sweep_dir: Path, out_dir: Path | None = None, log_to_wandb: bool = True, logger_cfg=None) -> dict:
    """Write report.md, report.html, loss_curves.png and metrics_before_after.png into ``out_dir``
    (default: the sweep dir). Returns the written paths and job counts."""
    sweep_dir = Path(sweep_dir).expanduser()
    if not sweep_dir.is_dir():
        raise FileNotFoundError(f"sweep_dir={sweep_dir} is not a directory (pass outputs/sweeps/<sweep>)")
    out_dir = Path(out_dir).expanduser() if out_dir else sweep_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = collect_jobs(sweep_dir)
    swept = sweep_params(sweep_dir)
    plots = {"Training loss (one panel per objective)": loss_curves(rows, out_dir / "loss_curves.png"),
             "Metrics base vs fine-tuned": metric_bars(rows, out_dir / "metrics_before_after.png"),
             "Frames: base above fine-tuned (same prompt, same seed)": frame_grid(rows, out_dir / "frame_grid.png")}
    # Remove a stale plot from an earlier report so the page never shows data that is gone.
    for default_name, path in zip(("loss_curves.png", "metrics_before_after.png", "frame_grid.png"), plots.values(),
                                  strict=True):
        if path is None:
            (out_dir / default_name).unlink(missing_ok=True)
    rating = human_rating(sweep_dir)
    (out_dir / "report.md").write_text(
        render_markdown(rows, {t: (p.name if p else None) for t, p in plots.items()}, swept,
                        rating=analysis_markdown(rating) if rating else None), encoding="utf-8")
    (out_dir / "report.html").write_text(
        render_html(rows, plots, out_dir, swept, rating=analysis_html(rating) if rating else None), encoding="utf-8")
    result = {"jobs": len(rows), "ok": sum(r.ok for r in rows), "markdown": str(out_dir / "report.md"),
              "html": str(out_dir / "report.html"), "plots": [str(p) for p in plots.values() if p], "wandb": None}
    if log_to_wandb:
        try:
            result["wandb"] = log_table(rows, out_dir, logger_cfg, sweep_dir, plots, rating)
        except Exception as exc:  # noqa: BLE001 - the files above are the report; W&B is a mirror
            log.warning("Report table not logged to W&B (%s: %s); the files are written. "
                        "Retry offline with WANDB_MODE=offline or skip with wandb=false.", type(exc).__name__, exc)
    log.info("Report for %d job(s) (%d ok): %s", result["jobs"], result["ok"], result["html"])
    return result


def human_rating(sweep_dir: Path) -> dict | None:
    """The analysis of the sweep's rating study (python -m t2v_exp.rate sweep_dir=...), or None when
    there is none or nobody has answered yet."""
    try:
        return study_results(sweep_dir)
    except Exception as exc:  # noqa: BLE001 - a damaged study must not cost the sweep its report
        log.warning("Rating study of %s left out of the report (%s: %s); `python -m t2v_exp.rate analyze "
                    "sweep_dir=%s` says more", sweep_dir, type(exc).__name__, exc, sweep_dir)
        return None


def _cfg_value(cfg, key: str, default=None):
    return enum_value(cfg.get(key, default) if cfg is not None else default)  # structured configs hold enums


def report_run_id(sweep_dir: Path) -> str:
    """One W&B report run per sweep: the id comes from the sweep dir, so a rebuilt report updates it."""
    return "report-" + hashlib.sha1(str(Path(sweep_dir).resolve()).encode()).hexdigest()[:16]


def log_table(rows: list[JobRow], out_dir: Path, logger_cfg, sweep_dir: Path, plots: dict | None = None,
              rating: dict | None = None) -> str | None:
    """Log the table and the plots in the sweep's report run (job_type="report"); returns the run dir."""
    import wandb  # deferred: a report without W&B never pays for importing it

    mode = wandb_mode(str(_cfg_value(logger_cfg, "mode", "auto") or "auto"))  # auto: WANDB_MODE, then login
    if mode == "disabled":
        return None
    header, data = wandb_table(rows)
    sweep_name = sweep_dir.resolve().name
    wandb_dir = out_dir / "wandb"
    wandb_dir.mkdir(parents=True, exist_ok=True)  # wandb falls back to a temp dir when it is missing
    with masked_argv():
        run = wandb.init(project=_cfg_value(logger_cfg, "project") or "t2v_exp",
                         entity=_cfg_value(logger_cfg, "entity"), group=_cfg_value(logger_cfg, "group") or sweep_name,
                         job_type="report", name=f"report-{sweep_name}", id=report_run_id(sweep_dir),
                         resume="allow", tags=list(_cfg_value(logger_cfg, "tags") or []),
                         dir=str(out_dir), mode=mode, reinit="finish_previous",
                         config={"sweep_dir": str(sweep_dir), "jobs": len(rows)},
                         settings=wandb.Settings(console="off", silent=True))
    try:
        images = {f"report/{Path(path).stem}": wandb.Image(str(path), caption=title)
                  for title, path in (plots or {}).items() if path}
        summaries, primary = summarize_models(rows)
        pooled = {"report/across_runs": wandb.Table(columns=WANDB_COLUMNS, data=wandb_rows(summaries))} if summaries else {}
        if rating:
            columns, rating_rows = wandb_table_rows(rating)
            pooled["report/rating"] = wandb.Table(columns=columns, data=rating_rows)
            run.summary.update({f"report/{key}": value for key, value in wandb_summary(rating).items()})
        run.log({"report/jobs": wandb.Table(columns=header, data=data), **pooled, **images})
        run.summary.update({"report/primary": primary or "none"})
        run.summary.update({"report/jobs_ok": sum(r.ok for r in rows), "report/jobs_total": len(rows)})
        return str(Path(run.dir).parent)
    finally:
        run.finish()  # always: a later wandb.init in this process must not resume this run
