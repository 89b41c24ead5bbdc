"""report.md: one row per job, every score base → fine-tuned with CIs and the paired delta, then the protocol."""

from __future__ import annotations

from .aggregate import exploratory_table, notes, primary_table, summarize_models
from .collect import JobRow
from .table import STATUS, columns


def md_cell(text: str) -> str:
    # A pipe would split the cell, a newline would end the row, and <...> from an error message
    # would be read as an HTML tag and vanish.
    return escape_md(" ".join(text.split("\n"))).replace("|", "\\|")


def escape_md(text: str) -> str:
    return text.replace("<", "\\<").replace(">", "\\>")


def md_table(rows: list[JobRow]) -> list[str]:
    cols = columns(rows)
    lines = ["| " + " | ".join(md_cell(c.header) for c in cols) + " |", "|" + "---|" * len(cols)]
    for row in rows:
        # Bold status so a failed job cannot pass for a finished one at a glance.
        cells = [md_cell(c.text(row)) if row.ok or c.header != STATUS else f"**{md_cell(c.text(row))}**"
                 for c in cols]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def grouped(pairs: list[tuple[str, str]]) -> dict[str, list[str]]:
    """{value: [job names]} in first-seen order, so identical notes are written once."""
    groups: dict[str, list[str]] = {}
    for job, value in pairs:
        groups.setdefault(value, []).append(job)
    return groups


INTERVALS = ("[a, b] = {confidence:.0%} {method}, {n_prompts} prompts; Δ = fine-tuned minus base, paired by "
             "(prompt, seed), each prompt's seeds averaged, with the t-interval of the mean Δ over prompts and the exact "
             "sign-flip p; the primary score's verdict is a claim, every other score's is exploratory (BH q). FVD and "
             "KVD changes come from the detector features, prompts resampled jointly, beside the reference's own "
             "noise floor.")


def protocol_notes(rows: list[JobRow]) -> list[str]:
    """Plain-text notes (with `code` marks) on what was evaluated and what was skipped, and why."""
    notes = []
    described = []
    for row in rows:
        p = row.protocol
        if p:
            size = "×".join(str(s) for s in p.get("resolution") or []) or "?"
            described.append((row.name, f"{p.get('num_videos', '?')} videos of {p.get('frames', '?')} frames at {size} px"))
    for text, jobs in grouped(described).items():
        notes.append(f"{text} ({', '.join(jobs)}); base and fine-tuned use the same prompts and seeds.")
    boots = [(row.name, row.protocol["interval"]) for row in rows if row.protocol.get("interval")]
    for text, jobs in grouped([(name, INTERVALS.format(**b)) for name, b in boots]).items():
        notes.append(f"{text} ({', '.join(jobs)})")
    refused = [(row.name, f"base vs fine-tuned not compared: {row.refused}") for row in rows if row.refused]
    for text, jobs in grouped(refused).items():
        notes.append(f"{text} ({', '.join(jobs)}); see `eval/metrics.json` `comparison_refused`")
    flagged = [row.name for row in rows if any(s.indicative_only for side in (row.before, row.after)
                                              for scores in side.values() for s in scores.values())]
    if flagged:
        notes.append(f"FVD from fewer than 256 videos is indicative only: its small-sample bias is of the order of "
                     f"the differences it would show ({', '.join(flagged)}).")
    skipped = [(row.name, f"`{metric}` skipped: {reason}") for row in rows for metric, reason in row.skipped.items()]
    for text, jobs in grouped(skipped).items():
        notes.append(f"{text} ({', '.join(jobs)})")
    return notes or ["No job reached evaluation."]


def plain_table(header: list[str], lines: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(md_cell(h) for h in header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(md_cell(c) for c in line) + " |" for line in lines)]


def across_runs_markdown(rows: list[JobRow]) -> list[str]:
    """The headline: the primary endpoint per model over its training runs, then the exploratory scores."""
    summaries, primary = summarize_models(rows)
    if not summaries:
        return []
    lines = ["", "## Across training runs", ""]
    header, body = primary_table(summaries, primary)
    if body:
        lines += [f"### Primary endpoint: `{primary}`", "", *plain_table(header, body), ""]
    header, body = exploratory_table(summaries, primary)
    if body:
        lines += ["### Exploratory scores", "", *plain_table(header, body), ""]
    return lines + [f"- {escape_md(note)}" for note in notes(summaries, primary)]


def render_markdown(rows: list[JobRow], plots: dict[str, str | None], sweep: dict[str, str] | None = None,
                    rating: str | None = None) -> str:
    """``plots``: title -> file name relative to report.md, or None when there was nothing to plot;
    ``rating``: the human rating study's section (Markdown), when the sweep has one."""
    ok = sum(r.ok for r in rows)
    lines = ["# Sweep report", "", f"{len(rows)} job(s): {ok} ok, {len(rows) - ok} not ok."]
    if sweep:
        lines.append("Swept: " + "; ".join(f"`{k}={v}`" for k, v in sweep.items()) + ".")
    lines += across_runs_markdown(rows)
    if rating:
        lines += ["", rating.strip()]
    lines += ["", "## Every job", "", *md_table(rows), "",
              "Scores read `base [95% CI] → fine-tuned [95% CI]`, then `Δ [95% CI], p (adjusted)` with the verdict.",
              "", "## Protocol", "",
              *(f"- {escape_md(note)}" for note in protocol_notes(rows))]
    failed = [row for row in rows if not row.ok]
    if failed:
        lines += ["", "## Jobs that did not finish", ""]
        lines += [f"- {row.name}: {row.status} ({escape_md(row.error or 'no error recorded')}); " + (
            f"traceback in `{row.name}/status.json`" if row.traceback else f"see the job's log in `{row.name}/`")
            for row in failed]
    lines += ["", "## Plots", ""]
    for title, path in plots.items():
        lines += [f"![{title}]({path})" if path else f"- {title}: skipped, no data to plot.", ""]
    return "\n".join(lines).rstrip() + "\n"
