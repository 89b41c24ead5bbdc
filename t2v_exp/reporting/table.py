"""The comparison table, defined once: markdown, HTML and W&B all render these columns."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .collect import JobRow, metric_columns, pct_change

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


def score_cell(row: JobRow, metric: str, key: str) -> str:
    before = row.before.get(metric, {}).get(key)
    after = row.after.get(metric, {}).get(key)
    if before is None and after is None:
        return DASH
    change = pct_change(before, after)
    suffix = f" ({change:+.1f}%)" if change is not None else ""
    return f"{fmt(before)} → {fmt(after)}{suffix}"


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
        Column("dataset", lambda r: r.dataset),
        Column("fine-tune", lambda r: r.finetune_label),
        Column("trainable params (% of base)", fmt_params),
        Column("wall time", lambda r: fmt_duration(r.wall_time_s)),
        Column("GPU-hours", fmt_gpu_hours),
        Column("peak mem (MB)", lambda r: fmt(round(r.peak_mem_mb)) if r.peak_mem_mb is not None else DASH),
        Column("final loss", lambda r: fmt(r.final_loss)),
    ]
    scores = [Column(f"{m}/{k} base → tuned", lambda r, m=m, k=k: score_cell(r, m, k))
              for m, k in metric_columns(rows)]
    return [*fixed, *scores]


def wandb_table(rows: list[JobRow]) -> tuple[list[str], list[list]]:
    """The same table with typed cells (numbers stay numbers), so W&B can sort and chart it."""
    pairs = metric_columns(rows)
    header = ["job", "model", "family", "dataset", "finetune", "lora_rank", "trainable_params", "trainable_pct",
              "wall_time_s", "gpu_hours", "peak_mem_mb", "final_loss"]
    for m, k in pairs:
        header += [f"{m}/{k} base", f"{m}/{k} tuned", f"{m}/{k} % change"]
    header += ["status", "error"]
    data = []
    for r in rows:
        line = [r.name, r.model, r.family, r.dataset, r.finetune, r.lora_rank, r.trainable, r.trainable_pct,
                r.wall_time_s, r.gpu_hours, r.peak_mem_mb, r.final_loss]
        for m, k in pairs:
            before, after = r.before.get(m, {}).get(k), r.after.get(m, {}).get(k)
            line += [before, after, pct_change(before, after)]
        data.append([*line, r.status, r.error])
    return header, data
