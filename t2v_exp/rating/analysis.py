"""Analyse a study's ratings into results.json (and, through ``render``, Markdown and HTML).

Per comparison (a = reference, e.g. the base; b = challenger, e.g. fine-tuned) and question:
- pairwise mode: b's win rate with ties counted half, the win/tie/loss counts, an interval over
  prompts and raters (``inference.two_way_interval``), and the exact sign test on per-prompt
  majorities (Holm-adjusted across comparisons for the first question, the primary one;
  Benjamini-Hochberg q-values for the others, which are exploratory);
- 1-10 mode: each system's mean score and the paired mean change b - a with the same interval
  and the sign test on per-prompt mean changes.
Only each rater's first showing of a pair counts: repeats measure consistency and identical pairs
side bias. With more than two systems, Bradley-Terry strengths with the same interval.
Agreement: Krippendorff's alpha. Position bias: left vs right choices. Raters who favour a side on
identical pairs (or overall, far beyond chance) are flagged, and every comparison is also shown
without them. Consistency on repeats is reported, not flagged: an honest rater facing two videos of
nearly equal quality agrees with themselves about half the time.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats as scipy_stats

from . import inference
from .render import analysis_html, analysis_markdown
from .store import DATABASE, Store
from .study import load_manifest

log = logging.getLogger(__name__)

RESULTS = "results.json"
FORMAT = 1
ALPHA = 0.05
BT_DRAWS = 300  # each Bradley-Terry draw is a refit; 300 x 3 one-way resamples keeps a sweep study in seconds
MIN_IDENTICAL = 2  # non-"same" answers on identical pairs, all one side, before a rater is flagged
# A rater whose on-screen choices are this one-sided over this many decided answers is flagged too
# (binomial p; sides are random, so an honest rater's choices split about evenly whatever they prefer).
MIN_SIDE_ANSWERS = 10
SIDE_P = 0.001


def analyze(study_dir: Path, *, write: bool = True, draws: int = inference.DRAWS, seed: int = 0) -> dict[str, Any]:
    """Everything the ratings say, as a JSON-able dict; written to <study_dir>/results.json
    (with results.md and results.html) when ``write``."""
    study_dir = Path(study_dir).expanduser()
    manifest = load_manifest(study_dir)
    store = Store(study_dir, manifest)
    data = Ratings(store)
    results = {"format": FORMAT, "analysed_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
               "study": data.summary(), "method": {
                   "interval": inference.INTERVAL_METHOD, "confidence": inference.CONFIDENCE,
                   "sign_test": inference.SIGN_TEST, "bradley_terry": inference.BT_METHOD,
                   "counted": "each rater's first showing of each pair (repeats: consistency; identical pairs: "
                              "side bias)",
                   "multiplicity": "Holm across comparisons for the primary (first) question; Benjamini-Hochberg "
                                   "q-values for the other questions (exploratory)"}}
    results["raters"] = data.rater_quality()
    flagged = {r["id"] for r in results["raters"] if r["flagged"]}
    results["flagged_raters"] = [r["name"] for r in results["raters"] if r["flagged"]]
    results["comparisons"] = [data.comparison(c, draws=draws, seed=seed, flagged=flagged)
                              for c in manifest["comparisons"]]
    adjust(results["comparisons"], data.questions)
    results["bradley_terry"] = data.bradley_terry(draws=min(draws, BT_DRAWS), seed=seed)
    results["agreement"] = data.agreement()
    results["position_bias"] = data.position_bias()
    if write:
        write_text(study_dir / RESULTS, json.dumps(results, indent=2))
        write_text(study_dir / "results.md", analysis_markdown(results))
        write_text(study_dir / "results.html", analysis_html(results, standalone=True))
    return results


def write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def load_results(study_dir: Path) -> dict[str, Any] | None:
    """results.json of a study, or None when it was not analysed yet (or is unreadable)."""
    try:
        value = json.loads((Path(study_dir) / RESULTS).read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


class Ratings:
    """The database joined into one row per answer, with the manifest's labels."""

    def __init__(self, store: Store):
        self.store, self.manifest = store, store.manifest
        self.mode = store.settings["mode"]
        self.questions = store.questions
        self.labels = {s["id"]: s["label"] for s in self.manifest["systems"]}
        self.raters = {r["id"]: r for r in store.table("raters")}
        assignments = {a["id"]: a for a in store.table("assignments")}
        self.assignments = assignments
        self.rows = []
        for answer in store.table("answers"):
            assignment = assignments[answer["assignment_id"]]
            item = store.items[answer["item_id"]]
            row = {**answer, "assignment_kind": assignment["kind"], "repeat_of": assignment["repeat_of"],
                   "item_kind": item["kind"], "comparison": item["comparison"], "prompt": item["prompt"]}
            if self.mode == "score":
                b_left = answer["left_system"] == "b"
                row["score_b"] = answer["score_left"] if b_left else answer["score_right"]
                row["score_a"] = answer["score_right"] if b_left else answer["score_left"]
                row["delta"] = row["score_b"] - row["score_a"]
                row["preferred"] = "b" if row["delta"] > 0 else "a" if row["delta"] < 0 else "same"
            self.rows.append(row)

    def counted(self, comparison: str | None = None, question: str | None = None,
                exclude: set[int] | frozenset = frozenset()) -> list[dict]:
        return [r for r in self.rows if r["item_kind"] == "pair" and r["assignment_kind"] == "first"
                and (comparison is None or r["comparison"] == comparison)
                and (question is None or r["question"] == question) and r["rater_id"] not in exclude]

    def summary(self) -> dict[str, Any]:
        m = self.manifest
        return {"study_id": m["study_id"], "mode": self.mode, "questions": m["settings"]["questions"],
                "primary_question": self.questions[0], "source": m.get("source"),
                "systems": [{"id": s["id"], "label": s["label"], "role": s["role"], "eval_dirs": s["eval_dirs"]}
                            for s in m["systems"]],
                "items": sum(i["kind"] == "pair" for i in m["items"]),
                "identical_items": sum(i["kind"] == "identical" for i in m["items"]),
                "raters": len(self.raters), "answers": len({r["assignment_id"] for r in self.rows}),
                "ratings_fingerprint": fingerprint_of(self.rows)}

    # -- one comparison ----------------------------------------------------------------------------
    def comparison(self, comparison: dict, *, draws: int, seed: int, flagged: set[int]) -> dict[str, Any]:
        out = {"id": comparison["id"], "a": self.labels[comparison["a"]], "b": self.labels[comparison["b"]],
               "a_id": comparison["a"], "b_id": comparison["b"], "questions": {}}
        for question in self.questions:
            rows = self.counted(comparison["id"], question)
            entry = self.estimate(rows, draws=draws, seed=seed)
            if flagged and {r["rater_id"] for r in rows} & flagged:
                kept = self.estimate(self.counted(comparison["id"], question, flagged), draws=draws, seed=seed)
                entry["without_flagged"] = {k: kept.get(k) for k in (
                    "n_answers", "n_raters", "value", "ci_low", "ci_high", "win_rate_b")}
                if kept.get("value") is not None and entry.get("value") is not None:
                    entry["without_flagged"]["change"] = kept["value"] - entry["value"]
            out["questions"][question] = entry
        return out

    def estimate(self, rows: list[dict], *, draws: int, seed: int) -> dict[str, Any]:
        prompts = index_of([r["prompt"] for r in rows])
        raters = index_of([r["rater_id"] for r in rows])
        counts = {"wins_b": sum(r["preferred"] == "b" for r in rows), "ties": sum(r["preferred"] == "same" for r in rows),
                  "wins_a": sum(r["preferred"] == "a" for r in rows)}
        entry: dict[str, Any] = {"n_answers": len(rows), "n_prompts": len(set(prompts)), "n_raters": len(set(raters)),
                                 **counts}
        if not rows:
            entry.update(value=None, ci_low=None, ci_high=None, win_rate_b=None)
            return entry
        s = np.array([1.0 if r["preferred"] == "b" else 0.5 if r["preferred"] == "same" else 0.0 for r in rows])
        decided = counts["wins_a"] + counts["wins_b"]
        entry["win_rate_b"] = float(s.mean())
        entry["share_b_of_decided"] = counts["wins_b"] / decided if decided else None
        entry["tie_share"] = counts["ties"] / len(rows)
        if self.mode == "score":
            values = np.array([r["delta"] for r in rows], dtype=np.float64)
            entry["statistic"] = "paired mean change of the 1-10 score (b - a)"
            entry["mean_a"] = float(np.mean([r["score_a"] for r in rows]))
            entry["mean_b"] = float(np.mean([r["score_b"] for r in rows]))
            centre, bounds = 0.0, (-9.0, 9.0)
        else:
            values = s
            entry["statistic"] = "win rate of b (ties count half)"
            centre, bounds = 0.5, (0.0, 1.0)
        interval = inference.two_way_interval(inference.mean_statistic(values), np.array(prompts), np.array(raters),
                                              draws=draws, seed=seed)
        entry.update(value=float(interval.estimate[0]), ci_low=float(max(bounds[0], interval.low[0])),
                     ci_high=float(min(bounds[1], interval.high[0])), df=float(interval.df[0]),
                     variance_parts={k: float(v[0]) for k, v in interval.parts.items()}, note=interval.note)
        if interval.variance[0] == 0 and self.mode == "pairwise" and entry["value"] in (0.0, 1.0):
            # Every answer preferred the same system: a bootstrap has nothing to resample. Take the
            # exact one-sided binomial bound with the fewer of prompts and raters as the units.
            units = max(1, min(entry["n_prompts"], entry["n_raters"]))
            bound = (1 - inference.CONFIDENCE) / 2
            low = bound ** (1 / units)
            entry.update(ci_low=low if entry["value"] == 1.0 else 0.0, ci_high=1.0 if entry["value"] == 1.0 else 1 - low,
                         note=f"every answer preferred one system: exact binomial bound over {units} units")
        entry["sign_test"] = inference.sign_test(np.array(prompts), values, centre)
        entry["centre"] = centre
        return entry

    # -- more than two systems -----------------------------------------------------------------------
    def bradley_terry(self, *, draws: int, seed: int) -> dict[str, Any]:
        """Strengths per connected group of three or more systems (only linked systems compare)."""
        found: dict[str, Any] = {}
        groups = components([(c["a"], c["b"]) for c in self.manifest["comparisons"]])
        groups = [g for g in groups if len(g) >= 3]
        if not groups:
            return found
        by_comparison = {c["id"]: c for c in self.manifest["comparisons"]}
        for question in self.questions:
            fits = []
            for group in groups:
                index = {system: k for k, system in enumerate(group)}
                rows = [r for r in self.counted(question=question) if by_comparison[r["comparison"]]["a"] in index]
                if not rows:
                    continue
                first = np.array([index[by_comparison[r["comparison"]]["b"]] for r in rows])
                second = np.array([index[by_comparison[r["comparison"]]["a"]] for r in rows])
                score = np.array([1.0 if r["preferred"] == "b" else 0.5 if r["preferred"] == "same" else 0.0
                                  for r in rows])
                statistic = inference.bradley_terry_statistic(first, second, score, len(group))
                interval = inference.two_way_interval(statistic, np.array(index_of([r["prompt"] for r in rows])),
                                                      np.array(index_of([r["rater_id"] for r in rows])),
                                                      draws=draws, seed=seed)
                if not np.all(np.isfinite(interval.estimate)):
                    fits.append({"systems": [self.labels[s] for s in group], "strengths": None,
                                 "note": "no finite fit: a system won or lost every comparison it was in"})
                    continue
                fits.append({"strengths": sorted(({
                    "id": system, "label": self.labels[system], "strength": float(interval.estimate[k]),
                    "ci_low": float(interval.low[k]), "ci_high": float(interval.high[k])}
                    for system, k in index.items()), key=lambda e: -e["strength"]),
                    "n_answers": len(rows), "n_prompts": interval.n_prompts, "n_raters": interval.n_raters,
                    "note": interval.note})
            found[question] = fits
        return found

    # -- agreement, position, raters -----------------------------------------------------------------
    def agreement(self) -> dict[str, Any]:
        raters = sorted(self.raters)
        row_of = {r: k for k, r in enumerate(raters)}
        found = {}
        for question in self.questions:
            rows = self.counted(question=question)
            if self.mode == "score":
                units = index_of([(r["item_id"], side) for r in rows for side in ("a", "b")])
                matrix = np.full((len(raters), max(units, default=-1) + 1), np.nan)
                k = 0
                for r in rows:
                    for side in ("a", "b"):
                        matrix[row_of[r["rater_id"]], units[k]] = r[f"score_{side}"]
                        k += 1
                found[question] = {"alpha_interval": inference.krippendorff_alpha(matrix, "interval"),
                                   "units": matrix.shape[1], "raters": len(raters),
                                   "values": "each video's 1-10 score"}
                continue
            units = index_of([r["item_id"] for r in rows])
            matrix = np.full((len(raters), max(units, default=-1) + 1), np.nan)
            for r, unit in zip(rows, units, strict=True):
                matrix[row_of[r["rater_id"]], unit] = {"a": -1.0, "same": 0.0, "b": 1.0}[r["preferred"]]
            found[question] = {"alpha_ordinal": inference.krippendorff_alpha(matrix, "ordinal"),
                               "alpha_nominal": inference.krippendorff_alpha(matrix, "nominal"),
                               "units": matrix.shape[1], "raters": len(raters),
                               "values": "a better < same < b better (systems, not screen sides)"}
        return found

    def position_bias(self) -> dict[str, Any]:
        """Left vs right on real pairs (sides are random, so a fair rater picks each about equally
        often whatever the systems) and on identical pairs."""
        question = self.questions[0]
        def tally(rows: list[dict]) -> dict[str, Any]:
            if self.mode == "score":
                sides = ["left" if r["score_left"] > r["score_right"] else "right" if r["score_right"] > r["score_left"]
                         else "same" for r in rows]
            else:
                sides = [r["choice"] for r in rows]
            left, right, same = sides.count("left"), sides.count("right"), sides.count("same")
            decided = left + right
            return {"left": left, "right": right, "same": same,
                    "left_share": left / decided if decided else None,
                    "p_value": float(scipy_stats.binomtest(left, decided, 0.5).pvalue) if decided else None}
        pairs = [r for r in self.rows if r["question"] == question and r["item_kind"] == "pair"]
        identical = [r for r in self.rows if r["question"] == question and r["item_kind"] == "identical"]
        return {"question": question, "pairs": tally(pairs), "identical_pairs": tally(identical),
                "test": "exact two-sided binomial test of left vs right among decided answers"}

    def rater_quality(self) -> list[dict[str, Any]]:
        by_rater: dict[int, list[dict]] = defaultdict(list)
        for row in self.rows:
            by_rater[row["rater_id"]].append(row)
        totals = defaultdict(int)
        for assignment in self.assignments.values():
            totals[assignment["rater_id"]] += 1
        first_answer = {(r["assignment_id"], r["question"]): r for r in self.rows}
        out = []
        for rater_id, rater in sorted(self.raters.items()):
            rows = by_rater.get(rater_id, [])
            identical = [r for r in rows if r["item_kind"] == "identical"]
            sides = [side_of(r, self.mode) for r in identical]
            left, right, same = sides.count("left"), sides.count("right"), sides.count("same")
            repeats = [(r, first_answer.get((r["repeat_of"], r["question"]))) for r in rows
                       if r["assignment_kind"] == "repeat"]
            repeats = [(r, o) for r, o in repeats if o is not None]
            agree = sum(r["preferred"] == o["preferred"] for r, o in repeats)
            pairs = [side_of(r, self.mode) for r in rows if r["item_kind"] == "pair"]
            decided = pairs.count("left") + pairs.count("right")
            reasons = []
            if left + right >= MIN_IDENTICAL and (left == 0 or right == 0):
                side = "left" if left else "right"
                reasons.append(f"chose the {side} video on {left + right} of {len(identical)} identical-pair answers")
            left_pairs = pairs.count("left")
            if decided >= MIN_SIDE_ANSWERS and scipy_stats.binomtest(left_pairs, decided, 0.5).pvalue < SIDE_P:
                reasons.append(f"chose the {'left' if 2 * left_pairs > decided else 'right'} video in "
                               f"{max(left_pairs, decided - left_pairs)} of {decided} decided answers (sides are random)")
            out.append({"id": rater_id, "name": rater["name"], "answered": len({r["assignment_id"] for r in rows}),
                        "assigned": totals[rater_id],
                        "identical": {"left": left, "right": right, "same": same},
                        "consistency": {"repeats": len(repeats), "agreed": agree,
                                        "share": agree / len(repeats) if repeats else None},
                        "left_share": pairs.count("left") / decided if decided else None,
                        "flagged": bool(reasons), "reasons": reasons})
        return out


def fingerprint_of(rows: list[dict]) -> str:
    """Answers are only ever added, never changed or deleted: their count and last id tell whether
    results.json still describes the database."""
    return f"{len(rows)}:{max((r['id'] for r in rows), default=0)}"


def current_fingerprint(study_dir: Path) -> str | None:
    """The database's fingerprint, read without creating or changing anything (None: no database)."""
    path = Path(study_dir) / DATABASE
    if not path.is_file():
        return None
    try:
        # Read-only URI: a report must not leave a database (or a WAL) behind where none was.
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=30)
        try:
            count, last = db.execute("SELECT COUNT(*), COALESCE(MAX(id), 0) FROM answers").fetchone()
        finally:
            db.close()
    except sqlite3.Error:
        return None
    return f"{count}:{last}"


def side_of(row: dict, mode: str) -> str:
    if mode == "score":
        return ("left" if row["score_left"] > row["score_right"] else "right" if row["score_right"] > row["score_left"]
                else "same")
    return row["choice"]


def index_of(values: list) -> list[int]:
    """Each value's index among the distinct values, in first-seen order."""
    seen: dict[Any, int] = {}
    return [seen.setdefault(v, len(seen)) for v in values]


def components(edges: list[tuple[str, str]]) -> list[list[str]]:
    """Connected groups of systems (in first-seen order)."""
    parent: dict[str, str] = {}

    def root(x: str) -> str:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x
    for a, b in edges:
        parent[root(a)] = root(b)
    groups: dict[str, list[str]] = {}
    for system in dict.fromkeys(s for edge in edges for s in edge):
        groups.setdefault(root(system), []).append(system)
    return list(groups.values())


def adjust(comparisons: list[dict], questions: list[str]) -> None:
    """Holm across comparisons for the primary question; BH across the rest (exploratory)."""
    def rows_of(selected: list[str]) -> list[dict]:
        return [c["questions"][q] for c in comparisons for q in selected if "sign_test" in c["questions"][q]]

    primary = rows_of(questions[:1])
    for row, p in zip(primary, inference.holm([r["sign_test"]["p_value"] for r in primary]), strict=True):
        row["sign_test"].update(p_adjusted=p, adjustment="holm", role="primary")
    others = rows_of(questions[1:])
    for row, q in zip(others, inference.benjamini_hochberg([r["sign_test"]["p_value"] for r in others]), strict=True):
        row["sign_test"].update(p_adjusted=q, adjustment="benjamini-hochberg", role="exploratory")
    for comparison in comparisons:
        for row in comparison["questions"].values():
            row["verdict"] = verdict(row)


def verdict(row: dict) -> str:
    """'b preferred' / 'a preferred' only when the adjusted sign test and the interval agree."""
    test = row.get("sign_test") or {}
    p = test.get("p_adjusted")
    if row.get("value") is None:
        return "no answers yet"
    if p is None or row.get("ci_low") is None:
        return "no decided prompt"
    centre = row.get("centre", 0.5)
    if p < ALPHA and row["ci_low"] > centre:
        return "b preferred"
    if p < ALPHA and row["ci_high"] < centre:
        return "a preferred"
    return "no clear preference"
