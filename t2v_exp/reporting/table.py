"""The comparison table, defined once: markdown, HTML and W&B all render these columns.

Per score two cells: ``base [95% CI] → tuned [95% CI]`` and the evaluator's paired change
``Δ [95% CI], p (adjusted)`` with its verdict (a claim for the primary score, "exploratory" for the
others). Accuracies change in percentage points; % change only for ratio-scale set scores.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..scoring.comparison import change_text, p_text, verdict
from .collect import JobRow, Score, metric_columns

DASH = "–"  # an empty cell: the job never produced the value
STATUS = "status"


def fmt(value: float | int | None, digits: int = 4) -> str:
    if value is None:
        return DASH
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return f"{value:,}"


def fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return DASH
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m {seconds % 60:02d}s"
    return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m"


def fmt_params(row: JobRow) -> str:
    if row.trainable is None:
        return DASH
    pct = f" ({row.trainable_pct:.2f}%)" if row.trainable_pct is not None else ""
    return f"{row.trainable:,}{pct}"


def fmt_gpu_hours(row: JobRow) -> str:
    # On CPU GPU-hours is 0 by definition: say so instead of showing a bare 0.
    device = f" ({row.device})" if row.device else ""
    return f"{fmt(row.gpu_hours, 3)}{device}" if row.gpu_hours is not None else DASH


def fmt_score(score: Score | None) -> str:
    if score is None:
        return DASH
    return fmt(score.value) + (f" [{fmt(score.ci_low)}, {fmt(score.ci_high)}]" if score.has_ci else "")


def score_cell(row: JobRow, metric: str, key: str) -> str:
    before = row.before.get(metric, {}).get(key)
    after = row.after.get(metric, {}).get(key)
    if before is None and after is None:
        return DASH
    flagged = any(s is not None and s.indicative_only for s in (before, after))
    return f"{fmt_score(before)} → {fmt_score(after)}" + (" (indicative only)" if flagged else "")


def signed(value: float | None) -> str:
    return DASH if value is None else f"{value:+.4g}"


def delta_cell(row: JobRow, metric: str, key: str) -> str:
    """The evaluator's change and verdict; failing that, why there is none."""
    delta = row.deltas.get(metric, {}).get(key)
    if delta is None:
        if row.refused and row.after.get(metric, {}).get(key):
            return f"not compared: {row.refused}"
        return DASH
    if delta.get("kind") == "set":
        pct = f" ({delta['pct_change']:+.1f}%)" if delta.get("pct_change") is not None else ""
        return f"{signed(delta.get('delta'))}{pct}, {verdict(delta)}"
    p_value = p_text(delta)
    return f"{change_text(delta)}" + ("" if p_value == "-" else f", p={p_value}") + f", {verdict(delta)}"


def status_text(row: JobRow) -> str:
    if row.ok:
        return "ok"
    return row.status.upper() + (f": {row.error}" if row.error else "")


@dataclass(frozen=True)
class Column:
    header: str
    text: Callable[[JobRow], str]


def columns(rows: list[JobRow]) -> list[Column]:
    # Status comes second: in a wide table it is the one cell that must be seen without scrolling.
    fixed = [
        Column("job", lambda r: r.name),
        Column(STATUS, status_text),
        Column("model", lambda r: r.model),
        Column("dataset", lambda r: r.dataset + (f" ({r.domain})" if r.domain else "")),
        Column("objective", lambda r: r.objective or DASH),
        Column("fine-tune", lambda r: r.finetune_label),
        Column("trainable params (% of base)", fmt_params),
        Column("wall time", lambda r: fmt_duration(r.wall_time_s)),
        Column("GPU-hours", fmt_gpu_hours),
        Column("s/step", lambda r: fmt(r.s_per_step, 3)),
        Column("peak mem (MB)", lambda r: fmt(round(r.peak_mem_mb)) if r.peak_mem_mb is not None else DASH),
        Column("final loss", lambda r: fmt(r.final_loss)),
    ]
    scores = [column for m, k in metric_columns(rows) for column in (
        Column(f"{m}/{k} base → tuned", lambda r, m=m, k=k: score_cell(r, m, k)),
        Column(f"{m}/{k} Δ [95% CI]", lambda r, m=m, k=k: delta_cell(r, m, k)))]
    return [*fixed, *scores]


WANDB_SCORE_FIELDS = ("base", "base ci_low", "base ci_high", "tuned", "tuned ci_low", "tuned ci_high",
                      "delta", "delta ci_low", "delta ci_high", "p", "adjusted p", "role", "% change")


def wandb_table(rows: list[JobRow]) -> tuple[list[str], list[list]]:
    """The same table with typed cells (numbers stay numbers), so W&B can sort and chart it."""
    pairs = metric_columns(rows)
    header = ["job", "model", "family", "dataset", "domain", "objective", "s_per_step", "finetune", "lora_rank", "trainable_params", "trainable_pct",
              "wall_time_s", "gpu_hours", "peak_mem_mb", "final_loss"]
    for m, k in pairs:
        header += [f"{m}/{k} {field}" for field in WANDB_SCORE_FIELDS]
    header += ["status", "error"]
    data = []
    for r in rows:
        line = [r.name, r.model, r.family, r.dataset, r.domain, r.objective, r.s_per_step, r.finetune, r.lora_rank, r.trainable, r.trainable_pct,
                r.wall_time_s, r.gpu_hours, r.peak_mem_mb, r.final_loss]
        for m, k in pairs:
            before, after = r.before.get(m, {}).get(k), r.after.get(m, {}).get(k)
            delta = r.deltas.get(m, {}).get(k) or {}
            # adjusted p: the primary's own p in one run (Holm applies across models: the pooled table),
            # BH q for the exploratory scores; % change only where the score is ratio-scale.
            adjusted = _first_number(delta.get("adjusted_p"), delta.get("q_value"))
            line += [*_score_cells(before), *_score_cells(after),
                     _first_number(delta.get("mean_delta"), delta.get("delta")), delta.get("ci_low"), delta.get("ci_high"),
                     delta.get("p_value"), adjusted, delta.get("role"), delta.get("pct_change")]
        data.append([*line, r.status, r.error])
    return header, data


def _score_cells(score: Score | None) -> list[float | None]:
    return [None, None, None] if score is None else [score.value, score.ci_low, score.ci_high]


def _first_number(*values: float | None) -> float | None:
    return next((v for v in values if v is not None), None)
