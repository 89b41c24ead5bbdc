"""report.html: the table, the plots, the models side by side per prompt, and base vs fine-tuned videos.

One self-contained file: inline CSS, no scripts, every link relative to the page, so the sweep
directory can be zipped, copied or opened straight from disk (file://) without a server.
"""

from __future__ import annotations

import html
import os
from pathlib import Path
from urllib.parse import quote

from .aggregate import exploratory_table, notes, primary_table, summarize_models
from .collect import JobRow, prompt_label, videos_by_prompt
from .markdown import protocol_notes
from .table import STATUS, columns

STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:24px 32px;color:#1f2933;max-width:1600px}
h1{margin:0 0 4px} h2{margin:28px 0 8px;border-bottom:1px solid #e1e5ea;padding-bottom:4px} h3{margin:18px 0 6px}
p.sub{color:#52606d;margin:0 0 16px}
.scroll{overflow-x:auto;border:1px solid #d3d9e0;border-radius:4px}
table{border-collapse:collapse;font-size:13px;white-space:nowrap}
th,td{border-bottom:1px solid #e1e5ea;padding:5px 10px;text-align:left;vertical-align:top}
th{background:#f2f4f7;white-space:normal;min-width:7em;max-width:11em;vertical-align:bottom}
td.status{white-space:normal;min-width:12em;max-width:22em}
tr.failed td{background:#fdecec} tr.failed td.status{color:#a61b1b;font-weight:600}
ul.notes{font-size:14px;color:#323f4b} code{background:#f2f4f7;padding:0 3px;border-radius:3px}
details{margin:6px 0} details pre{background:#f7f8fa;border:1px solid #e1e5ea;padding:8px;overflow-x:auto;font-size:12px}
img.plot{max-width:100%;border:1px solid #e1e5ea;margin:4px 0}
.samples{display:grid;grid-template-columns:minmax(160px,260px) 220px 220px;gap:6px 16px;align-items:center}
.samples .head{font-weight:600;font-size:13px;color:#52606d}
.prompt{font-size:13px;overflow-wrap:anywhere} .prompt small{color:#7b8794}
video,.missing{width:208px;height:208px;image-rendering:pixelated;background:#111;border-radius:3px;display:block}
.missing{background:#eef0f3;color:#7b8794;font-size:12px;display:flex;align-items:center;justify-content:center}
"""

esc = html.escape


def rel(path: Path, start: Path) -> str:
    """A link from the page's folder: works from file:// and after moving the whole sweep dir.
    Percent-encoded, so a prompt slug or run name with '#', '?', '%' or spaces still links to its file."""
    return esc(quote(os.path.relpath(path, start).replace(os.sep, "/"), safe="/"), quote=True)


def video_tag(path: Path | None, out_dir: Path, what: str) -> str:
    if path is None:
        return f"<div class='missing'>no {what} video</div>"
    return f'<video controls loop muted autoplay playsinline preload="metadata" src="{rel(path, out_dir)}"></video>'


def table_html(rows: list[JobRow]) -> str:
    cols = columns(rows)
    # <wbr> lets long headers like shapes_oracle/direction_acc break after the slash and
    # underscores, never mid-word, however narrow the column's values are.
    head = "".join(f"<th>{esc(c.header).replace('/', '/<wbr>').replace('_', '_<wbr>')}</th>" for c in cols)
    body = []
    for row in rows:
        cells = [f"<td class='status'>{esc(c.text(row))}</td>" if c.header == STATUS else f"<td>{esc(c.text(row))}</td>"
                 for c in cols]
        css = "" if row.ok else " class='failed'"
        body.append(f"<tr{css}>{''.join(cells)}</tr>")
    return f"<div class='scroll'><table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table></div>"


def plain_table_html(header: list[str], lines: list[list[str]]) -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in line) + "</tr>" for line in lines)
    return f"<div class='scroll'><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>"


def across_runs_html(rows: list[JobRow]) -> str:
    """The primary endpoint per model over its training runs (the headline), then the exploratory scores."""
    summaries, primary = summarize_models(rows)
    if not summaries:
        return ""
    parts = ["<h2>Across training runs</h2>"]
    header, body = primary_table(summaries, primary)
    if body:
        parts.append(f"<h3>Primary endpoint: <code>{esc(primary or '')}</code></h3>{plain_table_html(header, body)}")
    header, body = exploratory_table(summaries, primary)
    if body:
        parts.append(f"<h3>Exploratory scores</h3>{plain_table_html(header, body)}")
    parts.append("<ul class='notes'>" + "".join(f"<li>{_code_spans(esc(n))}</li>" for n in notes(summaries, primary))
                 + "</ul>")
    return "".join(parts)


def samples_html(row: JobRow, out_dir: Path) -> str:
    parts = [f"<h3>{esc(row.model)} / {esc(row.dataset)} <small>({esc(row.name)})</small></h3>",
             "<div class='samples'><div class='head'>prompt</div><div class='head'>base</div>"
             "<div class='head'>fine-tuned</div>"]
    for name, base, tuned in row.videos:
        parts.append(f"<div class='prompt'>{esc(prompt_label(name))}<br><small>{esc(name)}</small></div>"
                     f"{video_tag(base, out_dir, 'base')}{video_tag(tuned, out_dir, 'fine-tuned')}")
    parts.append("</div>")
    return "".join(parts)


def across_models_html(rows: list[JobRow], out_dir: Path) -> str:
    """One row per prompt that several jobs generated, one column per job: the models side by side."""
    jobs, shared = videos_by_prompt(rows)
    if not shared:
        return "<p>No prompt was generated by two or more jobs (different datasets use different prompts).</p>"
    template = f"grid-template-columns:minmax(160px,260px) repeat({len(jobs)},220px)"
    parts = [f"<div class='samples' style='{template}'><div class='head'>prompt</div>",
             *[f"<div class='head'>{esc(row.model)} / {esc(row.dataset)}<br><small>{esc(row.name)}</small></div>"
               for row in jobs]]
    for prompt, videos in shared:
        parts.append(f"<div class='prompt'>{esc(prompt)}</div>")
        parts += [video_tag(videos.get(row.name), out_dir, "fine-tuned") for row in jobs]
    parts.append("</div>")
    return "".join(parts)


def render_html(rows: list[JobRow], plots: dict[str, Path | None], out_dir: Path,
                sweep: dict[str, str] | None = None, rating: str | None = None) -> str:
    """``rating``: the human rating study's section (escaped HTML), when the sweep has one."""
    ok = sum(r.ok for r in rows)
    swept = "; ".join(f"{k}={v}" for k, v in (sweep or {}).items())
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        f"<title>Sweep report: {esc(out_dir.name)}</title><style>{STYLE}</style></head><body>",
        "<h1>Sweep report</h1>",
        f"<p class='sub'>{len(rows)} job(s): {ok} ok, {len(rows) - ok} not ok."
        + (f" Swept: <code>{esc(swept)}</code>." if swept else "")
        + " Scores read <i>base [95% CI] → fine-tuned [95% CI]</i>, then <i>Δ [95% CI], p (adjusted)</i>"
          " and the verdict.</p>",
        across_runs_html(rows),
        rating or "",
        "<h2>Every job</h2>",
        table_html(rows),
        "<h2>Protocol</h2><ul class='notes'>",
        *[f"<li>{_code_spans(esc(note))}</li>" for note in protocol_notes(rows)],
        "</ul>",
    ]
    failed = [r for r in rows if not r.ok]
    if failed:
        parts.append("<h2>Jobs that did not finish</h2>")
        for row in failed:
            summary = f"{esc(row.name)}: {esc(row.status)}: {esc(row.error or 'no error recorded')}"
            if row.traceback:
                parts.append(f"<details><summary>{summary}</summary><pre>{esc(row.traceback)}</pre></details>")
            else:
                parts.append(f"<p>{summary}</p>")
    parts.append("<h2>Plots</h2>")
    for title, path in plots.items():
        if path:
            parts.append(f"<h3>{esc(title)}</h3><img class='plot' alt='{esc(title)}' src='{rel(path, out_dir)}'>")
        else:
            parts.append(f"<p>{esc(title)}: skipped, no data to plot.</p>")
    parts.append("<h2>Same prompt, each model (fine-tuned, same seed)</h2>")
    parts.append(across_models_html(rows, out_dir))
    parts.append("<h2>Samples: base vs fine-tuned (same prompt, same seed)</h2>")
    with_videos = [r for r in rows if r.videos]
    parts += [samples_html(r, out_dir) for r in with_videos] or ["<p>No job wrote sample videos.</p>"]
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _code_spans(text: str) -> str:
    """Turn markdown `code` spans of already-escaped text into <code> elements."""
    pieces = text.split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(pieces))
