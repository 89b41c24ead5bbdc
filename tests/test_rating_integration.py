"""The rating study where its results are read: the sweep report (Markdown, HTML, W&B offline) and
the model card of each rated run (written by ``python -m t2v_exp.rate analyze``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from t2v_exp.rating import simulate
from t2v_exp.rating.store import Store
from t2v_exp.rating.study import prepare
from t2v_exp.reporting.write import write_report
from t2v_exp.scoring.model_card import RATING_BEGIN, quote_rating
from tests.test_rating_fixtures import make_run, make_sweep

from .conftest import REPO

CARD = "---\nlicense: other\n---\n\n# a fine-tune\n\n## Evaluation\n\n- scores\n\n## How to load\n\n```python\n```\n"


def rated(directory, **where):
    study_dir, manifest = prepare(None, **where)
    strengths = {s["id"]: 0.5 * number for number, s in enumerate(manifest["systems"])}
    simulate.rate_study(Store(study_dir, manifest), raters=3, strengths=strengths, seed=5)
    return study_dir


def test_the_sweep_report_carries_the_study_in_markdown_html_and_wandb(tmp_path, monkeypatch):
    sweep = make_sweep(tmp_path, jobs=2)
    write_report(sweep, log_to_wandb=False)
    assert "Human rating" not in (sweep / "report.md").read_text()  # no study: no section
    rated(sweep, sweep_dir=str(sweep))
    monkeypatch.setenv("WANDB_MODE", "offline")
    result = write_report(sweep, log_to_wandb=True)
    markdown = (sweep / "report.md").read_text()
    assert "## Human rating study" in markdown and markdown.index("## Human rating study") < markdown.index("## Every job")
    assert "Krippendorff" in markdown
    html = (sweep / "report.html").read_text()
    assert "Human rating study" in html and html.index("Human rating study") < html.index("<h2>Every job</h2>")
    run = next((sweep / "wandb").glob("offline-run-*"))
    assert result["wandb"] == str(run)
    (table_file,) = run.glob("files/media/table/report/rating_*.table.json")
    table = json.loads(table_file.read_text())
    assert len(table["data"]) >= 2 and len(table["columns"]) == len(table["data"][0])


def test_analyze_quotes_the_study_in_each_rated_runs_model_card_once(tmp_path):
    run = make_run(tmp_path)
    (run / "final").mkdir()
    card = run / "final" / "README.md"
    card.write_text(CARD)
    study_dir = rated(run, run_dir=str(run))

    def analyze() -> str:
        out = subprocess.run([sys.executable, "-m", "t2v_exp.rate", "analyze", f"study_dir={study_dir}", "draws=200",
                              f"hydra.run.dir={tmp_path}/hydra"], cwd=REPO, capture_output=True, text=True,
                             timeout=300, env={**os.environ, "WANDB_MODE": "offline"})
        assert out.returncode == 0, out.stderr[-3000:]
        return card.read_text()

    first = analyze()
    assert first.count(RATING_BEGIN) == 1 and "## Human rating" in first
    assert first.index("## Human rating") < first.index("## How to load")
    assert "- Human preference" in first and "preferred over" in first
    again = analyze()  # a later analysis replaces the section; it never appends a second one
    assert again.count(RATING_BEGIN) == 1 and again.count("## How to load") == 1


@pytest.mark.parametrize("tail", ["## How to load\n", ""])
def test_quote_rating_places_the_section_before_how_to_load_or_at_the_end(tmp_path, tail):
    card = tmp_path / "README.md"
    card.write_text("# card\n\n" + tail)
    quote_rating(card, ["- one line"])
    quote_rating(card, ["- another line"])
    text = card.read_text()
    assert text.count(RATING_BEGIN) == 1 and "- another line" in text and "- one line" not in text
    if tail:
        assert text.index("- another line") < text.index("## How to load")
