"""Human judgement: a blind side-by-side rating study of evaluations the project wrote.

``python -m t2v_exp.rate sweep_dir=... | run_dir=... | eval_dirs=[a,b] study_dir=...`` builds a study
(``study``: manifest of items and file digests; ``store``: SQLite ratings) and serves a local page
(``server``, ``page/``); ``python -m t2v_exp.rate analyze study_dir=...`` writes results.json,
results.md and results.html (``analysis``, ``inference``, ``render``).

For the sweep report, W&B and the model card (they read results, never the ratings themselves):

    results = study_results(sweep_or_run_dir)     # dict | None (None: no study, or no answer yet)
    if results:
        analysis_markdown(results) / analysis_html(results)
        wandb_summary(results); wandb_table_rows(results)
        model_card_lines(results, run_dir=run_dir)
"""

from __future__ import annotations

import json
import logging
import sqlite3
from pathlib import Path

from .analysis import RESULTS, analyze, current_fingerprint, load_results
from .render import (
    analysis_html,
    analysis_markdown,
    model_card_lines,
    rated_run_dirs,
    wandb_summary,
    wandb_table_rows,
)
from .store import DATABASE
from .study import MANIFEST, STUDY_SUBDIR

__all__ = ["RESULTS", "analysis_html", "analysis_markdown", "analyze", "find_study", "load_results",
           "model_card_lines", "rated_run_dirs", "study_results", "wandb_summary", "wandb_table_rows"]

log = logging.getLogger(__name__)


def _is_study(candidate: Path) -> bool:
    return (candidate / MANIFEST).is_file() and (candidate / DATABASE).is_file()


def _shows(study: Path, directory: Path) -> bool:
    """Whether the study rates an evaluation inside ``directory`` (a sweep job's own evals)."""
    try:
        manifest = json.loads((study / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    inside = str(directory.resolve()).rstrip("/") + "/"
    return any(str(d).startswith(inside) for s in manifest.get("systems", []) for d in s.get("eval_dirs", []))


def find_study(directory: str | Path) -> Path | None:
    """The study of a sweep, run or study dir: ``directory`` itself when it is a study, else
    ``<directory>/rating``, else (a sweep job's dir) the sweep's ``../rating`` when that study rates
    this job's evaluations. None when there is none or nobody has opened it yet (no database)."""
    directory = Path(directory).expanduser()
    for candidate in (directory, directory / STUDY_SUBDIR):
        if _is_study(candidate):
            return candidate
    parent = directory.parent / STUDY_SUBDIR
    if directory.is_dir() and _is_study(parent) and _shows(parent, directory):
        return parent
    return None


def study_results(directory: str | Path, *, refresh: bool | None = None) -> dict | None:
    """The analysis of the study of ``directory`` (a sweep, run, sweep job or study dir); None when
    there is no study or no answer yet.

    ``refresh``: None (default) reads results.json when it still describes the ratings and analyses
    again (rewriting results.json/.md/.html) when answers came in since; True always analyses
    again; False reads results.json whenever it exists.
    """
    study = find_study(directory)
    if study is None:
        return None
    cached = None if refresh else load_results(study)
    if cached is not None and (refresh is False or cached.get("study", {}).get("ratings_fingerprint")
                               == current_fingerprint(study)):
        return cached if cached["study"]["answers"] else None
    try:
        try:
            results = analyze(study)
        except OSError as exc:  # results cannot be written beside the study: analyse without writing
            log.warning("could not write the rating results into %s (%s); analysing without writing", study, exc)
            results = analyze(study, write=False)
    except (OSError, sqlite3.Error) as exc:  # a read-only copy: the last written results, if any
        log.warning("could not analyse the rating study %s (%s); using its results.json", study, exc)
        results = load_results(study)
    return results if results and results["study"]["answers"] else None
