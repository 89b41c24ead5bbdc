"""Across training runs: one row per model, pooling the jobs that differ only in the training seed.

One training run per model answers "did this run improve?", not "does this recipe improve this
model?": a reviewer asks for several training seeds. Jobs of one model, dataset and fine-tune
setting are pooled here. Each job's evaluation pairs base and fine-tuned videos by (prompt, seed);
every job uses the same evaluation prompts and seeds (the evaluation seed is not the training
seed), so the per-prompt deltas form a runs x prompts table, and `stats.crossed_delta` gives the
mean change with an interval that counts both the prompts and the spread between runs.

Multiplicity: the sweep's primary score is Holm-adjusted across the models compared; every other
score gets a Benjamini-Hochberg q-value over all the models' other tests and is exploratory.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..metrics import stats
from ..scoring.comparison import change_text, p_text, verdict
from .collect import JobRow


@dataclass
class ModelSummary:
    """The pooled runs of one model (same dataset, domain and fine-tune setting)."""

    model: str
    dataset: str
    domain: str | None
    finetune: str
    jobs: list[str]
    seeds: list[int | None]
    objective: str | None = None
    # (metric, score) -> the pooled row: base, tuned, mean_delta, ci_low, ci_high, p_value, ...
    rows: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)

    @property
    def runs(self) -> int:
        return len(self.jobs)


def group_key(row: JobRow) -> tuple:
    return (row.model, row.dataset, row.domain, row.finetune_label)


def _mean_score(rows: list[JobRow], side: str, metric: str, score: str) -> float | None:
    values = [s.value for r in rows if (s := getattr(r, side).get(metric, {}).get(score)) is not None]
    return float(np.mean(values)) if values else None


def pooled_paired(rows: list[JobRow], metric: str, score: str) -> dict[str, Any] | None:
    """The runs x prompts change of a per-video score, over the prompts every run scored."""
    tables = [r.prompt_deltas.get((metric, score)) for r in rows]
    if any(t is None for t in tables):
        return None
    prompts = sorted(set.intersection(*(set(t) for t in tables)))
    if not prompts:
        return None
    matrix = np.array([[t[p] for p in prompts] for t in tables])
    binary = all((metric, score) in r.binary for r in rows)
    row = stats.crossed_delta(matrix, binary=binary)
    return {"kind": "runs", **row, "unit": "pp" if binary else "points",
            "base": _mean_score(rows, "before", metric, score), "tuned": _mean_score(rows, "after", metric, score)}


def pooled_set_change(rows: list[JobRow], metric: str, score: str) -> dict[str, Any] | None:
    """A set metric's change (FVD, KVD) per run, pooled: mean over runs, t over the run-level changes."""
    deltas = [r.deltas.get(metric, {}).get(score) for r in rows]
    if any(d is None or d.get("kind") != "set_change" or d.get("delta") is None for d in deltas):
        return None
    values = np.array([d["delta"] for d in deltas], dtype=np.float64)
    low, high = stats.t_interval(values)
    p_value = None
    if values.size >= 2 and values.std(ddof=1) > 0:
        from scipy.stats import ttest_1samp  # deferred: scipy only when runs are pooled

        p_value = float(ttest_1samp(values, 0.0).pvalue)
    floors = [d["noise_floor"]["value"] for d in deltas if isinstance(d.get("noise_floor"), dict)
              and d["noise_floor"].get("value") is not None]
    return {"kind": "runs", "mean_delta": float(values.mean()), "ci_low": None if np.isnan(low) else low,
            "ci_high": None if np.isnan(high) else high, "p_value": p_value, "runs": int(values.size),
            "unit": "points", "base": float(np.mean([d["base"] for d in deltas])),
            "tuned": float(np.mean([d["tuned"] for d in deltas])),
            "noise_floor": {"value": float(np.mean(floors))} if floors else None,
            "method": "t-interval over the runs' paired changes", "test": "one-sample t-test over runs"}


def summarize_models(rows: list[JobRow]) -> tuple[list[ModelSummary], str | None]:
    """(one summary per model, the primary score); Holm on the primary across models, BH elsewhere."""
    groups: dict[tuple, list[JobRow]] = {}
    for row in rows:
        if row.ok and (row.prompt_deltas or row.deltas):
            groups.setdefault(group_key(row), []).append(row)
    primaries = Counter(r.primary for members in groups.values() for r in members if r.primary)
    primary = primaries.most_common(1)[0][0] if primaries else None
    summaries = []
    for (model, dataset, domain, finetune), members in groups.items():
        summary = ModelSummary(model, dataset, domain, finetune, [r.name for r in members],
                               [r.training_seed for r in members], members[0].objective)
        names = dict.fromkeys([key for r in members for key in r.prompt_deltas] +
                              [(m, s) for r in members for m, scores in r.deltas.items() for s in scores])
        for metric, score in names:
            pooled = pooled_paired(members, metric, score) or pooled_set_change(members, metric, score)
            if pooled is not None:
                summary.rows[(metric, score)] = pooled
        summaries.append(summary)
    adjust_across_models(summaries, primary)
    return summaries, primary


def adjust_across_models(summaries: list[ModelSummary], primary: str | None) -> None:
    primary_rows = [s.rows[key] for s in summaries if (key := _split(primary)) in s.rows] if primary else []
    for row, adjusted in zip(primary_rows, stats.holm([r.get("p_value") for r in primary_rows]), strict=True):
        row.update(role="primary", adjusted_p=adjusted, holm=True, significant=stats.decide(row, adjusted))
    others = [row for s in summaries for key, row in s.rows.items() if primary is None or key != _split(primary)]
    for row, q_value in zip(others, stats.benjamini_hochberg([r.get("p_value") for r in others]), strict=True):
        row.update(role="exploratory", q_value=q_value, significant=stats.decide(row, q_value))


def _split(name: str | None) -> tuple[str, str] | None:
    if not name or "/" not in name:
        return None
    metric, score = name.split("/", 1)
    return metric, score


def _runs_text(summary: ModelSummary) -> str:
    seeds = ", ".join(str(s) for s in summary.seeds if s is not None)
    return f"{summary.runs}" + (f" (seeds {seeds})" if seeds else "")


def _base_tuned(row: dict[str, Any]) -> str:
    scale = 100.0 if row.get("unit") == "pp" else 1.0
    if row.get("base") is None or row.get("tuned") is None:
        return "–"
    suffix = "%" if scale == 100.0 else ""
    return f"{row['base'] * scale:.3g}{suffix} → {row['tuned'] * scale:.3g}{suffix}"


def primary_table(summaries: list[ModelSummary], primary: str | None) -> tuple[list[str], list[list[str]]]:
    """Header and text cells of the primary endpoint's table: one line per model."""
    header = ["model", "dataset", "training runs", "base → fine-tuned", "change [95% CI]", "p (Holm)", "verdict"]
    key = _split(primary)
    lines = []
    for s in summaries:
        row = s.rows.get(key) if key else None
        if row is None:
            continue
        lines.append([s.model, s.dataset + (f" ({s.domain})" if s.domain else ""), _runs_text(s), _base_tuned(row),
                      change_text(row), p_text(row), verdict(row)])
    return header, lines


def exploratory_table(summaries: list[ModelSummary], primary: str | None) -> tuple[list[str], list[list[str]]]:
    """Every other score, one line per (model, score), with BH q-values: exploratory."""
    header = ["model", "score", "base → fine-tuned", "change [95% CI]", "p (BH q)", "verdict"]
    lines = []
    for s in summaries:
        for (metric, score), row in s.rows.items():
            if (metric, score) != _split(primary):
                lines.append([s.model, f"{metric}/{score}", _base_tuned(row), change_text(row), p_text(row),
                              verdict(row)])
    return header, lines


RUNS_NOTE = ("Each model's training runs differ only in the training seed; evaluation prompts and seeds are the same "
             "for every run, so base and fine-tuned pair by (prompt, seed). Per-video scores: each run's per-prompt "
             "mean change, pooled as a runs x prompts table ({method}); exact interval where every prompt moved the "
             "same way. FVD / KVD: each run's paired change from the detector features, t over runs. "
             "Accuracies change in percentage points (pp), other bounded scores in points; % only for FVD, KVD and IS.")
PRIMARY_NOTE = ("Primary endpoint `{primary}`, declared before the runs (evaluation.primary): Holm-adjusted across "
                "the {count} models; \"significantly higher/lower\" needs the adjusted p < 0.05 and the interval "
                "excluding 0. Every other score is exploratory (Benjamini-Hochberg q-values across all of them) and "
                "is worded no stronger than that.")


def notes(summaries: list[ModelSummary], primary: str | None) -> list[str]:
    count = sum(1 for s in summaries if _split(primary) in s.rows)
    return [RUNS_NOTE.format(method=stats.CROSSED_METHOD),
            PRIMARY_NOTE.format(primary=primary or "none", count=count) if primary else
            "No primary endpoint was declared or found: every score is exploratory."]


WANDB_COLUMNS = ["model", "dataset", "runs", "score", "role", "base", "tuned", "change", "ci_low", "ci_high", "unit",
                 "p", "adjusted p (Holm / BH q)", "verdict"]


def wandb_rows(summaries: list[ModelSummary]) -> list[list]:
    """The pooled table with typed cells, for W&B (numbers stay numbers, so it can sort and chart)."""
    return [[s.model, s.dataset, s.runs, f"{metric}/{score}", row.get("role"), row.get("base"), row.get("tuned"),
             row.get("mean_delta"), row.get("ci_low"), row.get("ci_high"), row.get("unit"), row.get("p_value"),
             row.get("adjusted_p", row.get("q_value")), verdict(row)]
            for s in summaries for (metric, score), row in s.rows.items()]
