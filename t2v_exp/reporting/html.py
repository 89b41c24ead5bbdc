"""report.html: the table, the plots and base vs fine-tuned videos side by side; no server needed."""

from __future__ import annotations

import html
import os
from pathlib import Path

from .collect import JobRow, metric_columns
from .markdown import fmt, fmt_params, score_cell

STYLE = """
body{font-family:system-ui,sans-serif;margin:24px;color:#222}
table{border-collapse:collapse;font-size:13px;margin-bottom:24px}
th,td{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f2f4f7} tr.failed td{background:#fdecec}
.pair{display:flex;gap:16px;align-items:flex-start;margin:8px 0 16px}
.pair > div{width:300px;overflow-wrap:anywhere} .pair figure{margin:0}
.scroll{overflow-x:auto} figcaption{font-size:12px;color:#555}
video{width:256px;image-rendering:pixelated;background:#000}
img.plot{max-width:100%;border:1px solid #ddd;margin:8px 0}
"""


def rel(path: Path, start: Path) -> str:
    return html.escape(os.path.relpath(path, start).replace(os.sep, "/"))


def video_cell(path: Path | None, out_dir: Path, label: str) -> str:
    if path is None:
        return f"<figure><figcaption>{label}: missing</figcaption></figure>"
    return (f'<figure><video controls loop muted autoplay playsinline src="{rel(path, out_dir)}"></video>'
            f"<figcaption>{label}</figcaption></figure>")


def render_html(rows: list[JobRow], plots: dict[str, Path | None], out_dir: Path) -> str:
    esc = html.escape
    columns = metric_columns(rows)
    head = ["job", "model", "dataset", "fine-tune", "trainable (% of base)", "wall time (min)", "GPU-hours",
            "peak mem (MB)", "final loss", *[f"{m}/{k}" for m, k in columns], "status"]
    body = []
    for row in rows:
        status = row.status if row.status == "ok" else f"{row.status.upper()}: {row.error or ''}"
        finetune = f"{row.finetune} r{row.lora_rank}" if row.lora_rank else row.finetune
        cells = [row.name, row.model, row.dataset, finetune, fmt_params(row),
                 fmt(row.wall_time_s / 60 if row.wall_time_s is not None else None, 3), fmt(row.gpu_hours, 3),
                 fmt(row.peak_mem_mb, 5), fmt(row.final_loss), *[score_cell(row, m, k) for m, k in columns], status]
        css = "" if row.status == "ok" else ' class="failed"'
        body.append(f"<tr{css}>" + "".join(f"<td>{esc(str(c))}</td>" for c in cells) + "</tr>")
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>Sweep report</title><style>{STYLE}</style>"
             "</head><body><h1>Sweep report</h1>",
             "<div class='scroll'><table><thead><tr>" + "".join(f"<th>{esc(h)}</th>" for h in head) + "</tr></thead><tbody>",
             *body, "</tbody></table></div>"]
    for title, path in plots.items():
        if path:
            parts.append(f'<h2>{esc(title)}</h2><img class="plot" alt="{esc(title)}" src="{rel(path, out_dir)}">')
    parts.append("<h2>Samples: base vs fine-tuned (same prompt, same seed)</h2>")
    for row in rows:
        if not row.videos:
            continue
        parts.append(f"<h3>{esc(row.model)} / {esc(row.dataset)}</h3>")
        for name, base, tuned in row.videos:
            parts.append(f"<div class='pair'><div><b>{esc(name)}</b></div>"
                         f"{video_cell(base, out_dir, 'base')}{video_cell(tuned, out_dir, 'fine-tuned')}</div>")
    parts.append("</body></html>")
    return "\n".join(parts)
