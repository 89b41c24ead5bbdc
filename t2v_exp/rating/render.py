"""results.json -> a Markdown / HTML section, W&B scalars and table rows, model-card lines.

These read the analysis dict only (never the database), so the sweep report, the W&B logger and the
model card can include a study by reading ``<study_dir>/results.json``.
"""

from __future__ import annotations

import html
import re
from pathlib import Path
from typing import Any

MEANING = ("What the numbers mean: the win rate is the share of answers preferring b, a tie counting half; "
           "0.5 is no preference. The interval treats prompts and raters as samples from larger populations "
           "(other prompts, other raters would give other numbers) and is wide when either is few. The sign "
           "test asks whether b won the majority on more prompts than chance allows. What they do not mean: "
           "a preference among these raters for these prompts, not a property of every use of the model; "
           "alpha near 0 says raters disagree, so a win rate near 0.5 may be disagreement rather than parity.")


def _pct(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{100 * value:.{digits}f}%"


def _num(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _p(value: float | None) -> str:
    if value is None:
        return "-"
    return "<0.001" if value < 0.001 else f"{value:.3f}"


def _question_text(results: dict, question: str) -> str:
    return next((q["text"] for q in results["study"]["questions"] if q["id"] == question), question)


def involving(results: dict, run_dir: str | Path | None) -> set[str] | None:
    """Ids of the systems whose evaluations lie inside ``run_dir`` (None: no filter)."""
    if run_dir is None:
        return None
    inside = str(Path(run_dir).expanduser().resolve()).rstrip("/") + "/"
    return {s["id"] for s in results["study"]["systems"]
            if any(str(d).startswith(inside) for d in s.get("eval_dirs") or [])}


def rated_run_dirs(results: dict) -> list[Path]:
    """The training runs whose evaluations the study rates (an evaluation dir's parent holding a
    written model card, final/README.md): where the analysis is quoted."""
    runs = {Path(d).parent for s in results["study"]["systems"] for d in s.get("eval_dirs") or []}
    return sorted(run for run in runs if (run / "final" / "README.md").is_file())


def comparison_rows(results: dict, systems: set[str] | None = None) -> list[dict[str, Any]]:
    """One flat row per (comparison, question): what every renderer shows; ``systems``: only the
    comparisons with one of these systems on either side."""
    score = results["study"]["mode"] == "score"
    rows = []
    for comparison in results.get("comparisons", []):
        if systems is not None and not {comparison.get("a_id"), comparison.get("b_id")} & systems:
            continue
        for question, entry in comparison["questions"].items():
            test = entry.get("sign_test") or {}
            row = {"comparison": f"{comparison['b']} vs {comparison['a']}", "a": comparison["a"], "b": comparison["b"],
                   "question": question, "statistic": entry.get("statistic"), "value": entry.get("value"),
                   "ci_low": entry.get("ci_low"), "ci_high": entry.get("ci_high"), "wins_b": entry.get("wins_b"),
                   "ties": entry.get("ties"), "wins_a": entry.get("wins_a"), "n_answers": entry.get("n_answers"),
                   "n_prompts": entry.get("n_prompts"), "n_raters": entry.get("n_raters"),
                   "prompts_b": test.get("prompts_b"), "prompts_a": test.get("prompts_a"),
                   "prompts_tied": test.get("prompts_tied"), "p_value": test.get("p_value"),
                   "p_adjusted": test.get("p_adjusted"), "adjustment": test.get("adjustment"),
                   "verdict": entry.get("verdict"), "note": entry.get("note"),
                   "without_flagged": (entry.get("without_flagged") or {}).get("value")}
            if score:
                row.update(mean_a=entry.get("mean_a"), mean_b=entry.get("mean_b"))
            rows.append(row)
    return rows


def _value_text(row: dict, score: bool) -> tuple[str, str]:
    if row["value"] is None:
        return "-", "-"
    if score:
        return f"{row['value']:+.2f}", f"[{row['ci_low']:+.2f}, {row['ci_high']:+.2f}]"
    return _pct(row["value"], 1), f"[{_pct(row['ci_low'], 1)}, {_pct(row['ci_high'], 1)}]"


def analysis_markdown(results: dict, heading: str = "##") -> str:
    """The study's section for a Markdown report (heading level ``heading``)."""
    study = results["study"]
    score = study["mode"] == "score"
    lines = [f"{heading} Human rating study", "",
             f"{study['raters']} rater(s), {study['answers']} answered screens, {study['items']} pairs "
             f"({'1-10 scores' if score else 'side-by-side preference'}); blind, sides randomised per item. "
             f"Questions: " + "; ".join(f"`{q['id']}` {q['text']}" for q in study["questions"])
             + f" (primary: `{study['primary_question']}`).", ""]
    rows = comparison_rows(results)
    if score:
        lines += ["| b vs a | question | mean a | mean b | change b - a | 95% interval | prompts up:down (tied) | "
                  "sign test p (adj.) | verdict |", "|---|---|---|---|---|---|---|---|---|"]
    else:
        lines += ["| b vs a | question | b wins / ties / a wins | win rate of b | 95% interval | "
                  "prompts b:a (tied) | sign test p (adj.) | verdict |", "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        value, interval = _value_text(row, score)
        prompts = f"{row['prompts_b'] or 0}:{row['prompts_a'] or 0} ({row['prompts_tied'] or 0})"
        p = f"{_p(row['p_value'])} ({_p(row['p_adjusted'])})"
        if score:
            lines.append(f"| {row['comparison']} | {row['question']} | {_num(row.get('mean_a'), 2)} | "
                         f"{_num(row.get('mean_b'), 2)} | {value} | {interval} | {prompts} | {p} | {row['verdict']} |")
        else:
            lines.append(f"| {row['comparison']} | {row['question']} | {row['wins_b']} / {row['ties']} / "
                         f"{row['wins_a']} | {value} | {interval} | {prompts} | {p} | {row['verdict']} |")
    lines.append("")
    for kind, content in notes(results):
        if kind == "table":
            title, header, table = content
            lines += [title, "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            lines += ["| " + " | ".join(cells) + " |" for cells in table]
        elif kind == "list":
            title, items = content
            lines += [title] + [f"- {item}" for item in items]
        else:
            lines.append(content)
        lines.append("")
    return "\n".join(lines)


def notes(results: dict) -> list[tuple[str, Any]]:
    """What follows the comparison table, as ("text", str) / ("table", (title, header, rows)) /
    ("list", (title, items)) blocks that both renderers lay out."""
    score = results["study"]["mode"] == "score"
    rows = comparison_rows(results)
    blocks: list[tuple[str, Any]] = []
    method = results.get("method", {})
    blocks.append(("text", f"Interval: {method.get('interval')}. Test: {method.get('sign_test')}. "
                           f"{method.get('multiplicity', '')}. Counted: {method.get('counted')}."))
    for question, fits in (results.get("bradley_terry") or {}).items():
        for fit in fits:
            if not fit.get("strengths"):
                blocks.append(("text", f"Bradley-Terry (`{question}`): {fit.get('note')}"))
                continue
            blocks.append(("table", (
                f"Bradley-Terry strengths (`{question}`, log-odds, mean 0; {fit['n_answers']} answers, "
                f"{fit['n_prompts']} prompts x {fit['n_raters']} raters):", ["system", "strength", "95% interval"],
                [[s["label"], f"{s['strength']:+.3f}", f"[{s['ci_low']:+.3f}, {s['ci_high']:+.3f}]"]
                 for s in fit["strengths"]])))
    agreement = results.get("agreement") or {}
    if agreement:
        parts = []
        for question, entry in agreement.items():
            alpha = entry.get("alpha_interval") if score else entry.get("alpha_ordinal")
            parts.append(f"`{question}` {'-' if alpha is None else f'{alpha:.3f}'} ({entry['units']} units)")
        blocks.append(("text", "Agreement between raters (Krippendorff's alpha, "
                               + ("interval" if score else "ordinal: a better < same < b better") + "): "
                               + "; ".join(parts) + ". 1 is perfect agreement, 0 is what chance gives."))
    bias = results.get("position_bias") or {}
    if bias.get("pairs"):
        pairs, identical = bias["pairs"], bias["identical_pairs"]
        chosen = "scored higher" if score else "chosen"
        blocks.append(("text", f"Position bias (`{bias['question']}`): the left video was {chosen} in "
                               f"{_pct(pairs['left_share'], 1)} of {pairs['left'] + pairs['right']} decided answers "
                               f"(p {_p(pairs['p_value'])}); on identical pairs: {identical['left']} left, "
                               f"{identical['right']} right, {identical['same']} same. Sides are random, so a bias "
                               "widens the interval but does not favour either system."))
    repeats = sum(r["consistency"]["repeats"] for r in results.get("raters", []))
    if repeats:
        agreed = sum(r["consistency"]["agreed"] for r in results.get("raters", []))
        blocks.append(("text", f"Consistency: raters gave the same answer to a repeated pair (sides swapped) "
                               f"{agreed} of {repeats} times ({_pct(agreed / repeats)})."))
    flagged = [r for r in results.get("raters", []) if r["flagged"]]
    if flagged:
        blocks.append(("list", (f"Flagged raters ({len(flagged)} of {len(results['raters'])}):",
                                [f"{r['name']}: {'; '.join(r['reasons'])}" for r in flagged])))
        changes = [f"{row['comparison']} `{row['question']}` {_value_text(row, score)[0]} -> "
                   + (f"{100 * row['without_flagged']:.1f}%" if not score else f"{row['without_flagged']:+.2f}")
                   for row in rows if row["without_flagged"] is not None]
        if changes:
            blocks.append(("text", "Without them: " + "; ".join(changes) + "."))
    else:
        blocks.append(("text", "No rater flagged (none chose one side on identical pairs, or overall beyond chance)."))
    blocks.append(("text", MEANING))
    return blocks


def analysis_html(results: dict, *, standalone: bool = False) -> str:
    """The same section as HTML (escaped); ``standalone`` wraps it in a page."""
    study = results["study"]
    score = study["mode"] == "score"
    e = html.escape
    head = (["b vs a", "question", "mean a", "mean b", "change b - a", "95% interval", "prompts up:down (tied)",
             "sign test p (adj.)", "verdict"] if score else
            ["b vs a", "question", "b wins / ties / a wins", "win rate of b", "95% interval", "prompts b:a (tied)",
             "sign test p (adj.)", "verdict"])
    body = []
    for row in comparison_rows(results):
        value, interval = _value_text(row, score)
        cells = [row["comparison"], row["question"]]
        cells += ([_num(row.get("mean_a"), 2), _num(row.get("mean_b"), 2)] if score
                  else [f"{row['wins_b']} / {row['ties']} / {row['wins_a']}"])
        cells += [value, interval, f"{row['prompts_b'] or 0}:{row['prompts_a'] or 0} ({row['prompts_tied'] or 0})",
                  f"{_p(row['p_value'])} ({_p(row['p_adjusted'])})", row["verdict"] or ""]
        body.append("<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in cells) + "</tr>")
    extra = []
    for kind, content in notes(results):
        if kind == "table":
            title, header, table = content
            extra.append(f"<p>{e(title)}</p><table><thead><tr>" + "".join(f"<th>{e(h)}</th>" for h in header)
                         + "</tr></thead><tbody>" + "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in cells)
                                                            + "</tr>" for cells in table) + "</tbody></table>")
        elif kind == "list":
            title, items = content
            extra.append(f"<p>{e(title)}</p><ul>" + "".join(f"<li>{e(i)}</li>" for i in items) + "</ul>")
        else:
            extra.append(f"<p>{e(content)}</p>")
    section = (f"<section class=\"rating-study\"><h2>Human rating study</h2>"
               f"<p>{e(str(study['raters']))} rater(s), {e(str(study['answers']))} answered screens, "
               f"{e(str(study['items']))} pairs; questions: {e('; '.join(q['text'] for q in study['questions']))}</p>"
               "<table><thead><tr>" + "".join(f"<th>{e(h)}</th>" for h in head) + "</tr></thead><tbody>"
               + "".join(body) + "</tbody></table>" + "".join(extra) + "</section>")
    if not standalone:
        return section
    return ("<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Human rating study</title>"
            "<style>body{font-family:system-ui,sans-serif;max-width:1100px;margin:2rem auto;padding:0 1rem}"
            "table{border-collapse:collapse}td,th{border:1px solid #bbb;padding:.3rem .5rem;text-align:left}"
            "</style></head><body>" + section + "</body></html>")


def _key(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "x"


def wandb_summary(results: dict) -> dict[str, float]:
    """Scalars: rating/<b vs a>/<question>/{value,ci_low,ci_high,p_adjusted}, alpha, position, raters."""
    flat: dict[str, float] = {"rating/raters": float(results["study"]["raters"]),
                              "rating/answers": float(results["study"]["answers"]),
                              "rating/flagged_raters": float(len(results.get("flagged_raters") or []))}
    for row in comparison_rows(results):
        prefix = f"rating/{_key(row['comparison'])}/{_key(row['question'])}"
        for field in ("value", "ci_low", "ci_high", "p_adjusted", "without_flagged"):
            if isinstance(row.get(field), int | float):
                flat[f"{prefix}/{field}"] = float(row[field])
    for question, entry in (results.get("agreement") or {}).items():
        for field in ("alpha_ordinal", "alpha_nominal", "alpha_interval"):
            if isinstance(entry.get(field), int | float):
                flat[f"rating/agreement/{_key(question)}/{field}"] = float(entry[field])
    share = ((results.get("position_bias") or {}).get("pairs") or {}).get("left_share")
    if isinstance(share, int | float):
        flat["rating/position/left_share"] = float(share)
    return flat


TABLE_COLUMNS = ["comparison", "a", "b", "question", "statistic", "value", "ci_low", "ci_high", "wins_b", "ties",
                 "wins_a", "n_prompts", "n_raters", "p_value", "p_adjusted", "verdict", "without_flagged"]


def wandb_table_rows(results: dict) -> tuple[list[str], list[list[Any]]]:
    """(columns, rows) for a wandb.Table: one row per (comparison, question)."""
    return list(TABLE_COLUMNS), [[row.get(c) for c in TABLE_COLUMNS] for row in comparison_rows(results)]


def model_card_lines(results: dict, run_dir: str | Path | None = None) -> list[str]:
    """Markdown bullet lines quoting the study for a model card (one per comparison and question);
    ``run_dir``: only the comparisons of that run's evaluations (a sweep study rates every job)."""
    score = results["study"]["mode"] == "score"
    lines = []
    for row in comparison_rows(results, involving(results, run_dir)):
        if row["value"] is None:
            continue
        size = f"{row['n_prompts']} prompts x {row['n_raters']} raters, {row['n_answers']} answers"
        test = f"sign test on per-prompt majorities p = {_p(row['p_adjusted'])} ({row['adjustment']})"
        text = _question_text(results, row["question"])
        if score:
            lines.append(f"- Human rating, {text} (1-10): {row['a']} {row['mean_a']:.1f} -> {row['b']} "
                         f"{row['mean_b']:.1f}, paired change {row['value']:+.2f} (95% CI {row['ci_low']:+.2f} to "
                         f"{row['ci_high']:+.2f}; {size}; {test}): {row['verdict']}.")
        else:
            lines.append(f"- Human preference, {text}: {row['b']} preferred over {row['a']} in {_pct(row['value'], 1)} "
                         f"of answers, ties counted half ({row['wins_b']} wins, {row['ties']} ties, {row['wins_a']} "
                         f"losses; 95% CI {_pct(row['ci_low'], 1)} to {_pct(row['ci_high'], 1)}; {size}; {test}): "
                         f"{row['verdict']}.")
    flagged = results.get("flagged_raters") or []
    if flagged:
        lines.append(f"- {len(flagged)} rater(s) flagged by the quality checks; the numbers above include them "
                     "(the study's results.md shows them without).")
    return lines
