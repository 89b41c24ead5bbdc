"""report.md: one row per job, every score before -> after with % change."""

from __future__ import annotations

from .collect import JobRow, metric_columns, pct_change


def fmt(value, digits: int = 4) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def fmt_params(row: JobRow) -> str:
    if row.trainable is None:
        return "–"
    pct = f" ({row.trainable_pct:.2f}%)" if row.trainable_pct is not None else ""
    return f"{row.trainable:,}{pct}"


def score_cell(row: JobRow, metric: str, key: str) -> str:
    before = row.before.get(metric, {}).get(key)
    after = row.after.get(metric, {}).get(key)
    if before is None and after is None:
        return "–"
    change = pct_change(before, after)
    suffix = f" ({change:+.1f}%)" if change is not None else ""
    return f"{fmt(before)} → {fmt(after)}{suffix}"


def status_cell(row: JobRow) -> str:
    if row.status == "ok":
        return "ok"
    return f"**{row.status.upper()}**" + (f": {row.error}" if row.error else "")


def render_markdown(rows: list[JobRow], plots: dict[str, str | None]) -> str:
    columns = metric_columns(rows)
    header = ["job", "model", "dataset", "fine-tune", "trainable params (% of base)", "wall time (min)",
              "GPU-hours", "peak mem (MB)", "final loss", *[f"{m}/{k} before → after" for m, k in columns], "status"]
    lines = ["# Sweep report", "", f"{len(rows)} job(s); {sum(r.status == 'ok' for r in rows)} ok.", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        finetune = f"{row.finetune} r{row.lora_rank}" if row.lora_rank else row.finetune
        cells = [row.name, row.model, row.dataset, finetune, fmt_params(row),
                 fmt(row.wall_time_s / 60 if row.wall_time_s is not None else None, 3), fmt(row.gpu_hours, 3),
                 fmt(row.peak_mem_mb, 5), fmt(row.final_loss), *[score_cell(row, m, k) for m, k in columns],
                 status_cell(row)]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    lines += ["", "## Protocol", ""]
    for row in rows:
        if row.eval_protocol:
            p = row.eval_protocol
            lines.append(f"- {row.name}: {p.get('num_videos')} videos, {p.get('frames')} frames, "
                         f"{p.get('resolution')} px; base and fine-tuned share prompts and seeds.")
        for metric, reason in row.skipped.items():
            lines.append(f"- {row.name}: `{metric}` not computed: {reason}")
    lines += ["", "## Plots", ""]
    for title, path in plots.items():
        lines.append(f"![{title}]({path})" if path else f"- {title}: no data to plot.")
    return "\n".join(lines) + "\n"
