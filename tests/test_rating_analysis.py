"""Rating analysis against known truths and outside implementations: the interval's coverage with
simulated raters, Krippendorff's alpha against the `krippendorff` package, Bradley-Terry against
statsmodels' logistic GLM and choix, the sign test by hand; then a whole study analysed (flags,
exclusion effect, Markdown/HTML/W&B/model-card output, 1-10 mode)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from t2v_exp.rating import (
    analysis_html,
    analysis_markdown,
    analyze,
    find_study,
    inference,
    model_card_lines,
    simulate,
    study_results,
    wandb_summary,
    wandb_table_rows,
)
from t2v_exp.rating.store import Store
from t2v_exp.rating.study import Settings, prepare
from tests.test_rating_fixtures import make_run, make_sweep


def coverage(design: simulate.Design, replicates: int, *, draws: int = 500, seed: int = 0) -> float:
    rng = np.random.default_rng(seed)
    hits = 0
    for _ in range(replicates):
        answers = simulate.answers(design, rng)
        interval = inference.two_way_interval(inference.mean_statistic(answers["score_b"]), answers["prompt"],
                                              answers["rater"], draws=draws, seed=int(rng.integers(2 ** 31)))
        hits += bool(interval.low[0] <= design.truth <= interval.high[0])
    return hits / replicates


def test_interval_covers_a_known_preference_95_percent_of_the_time():
    # 70% preference for a among decided answers, 15% ties, per-prompt, per-(prompt, seed), per-rater
    # effects and per-rater side pulls: 24 prompts x 2 seeds x 8 raters, 2000 simulated studies
    # (Monte Carlo standard error of the coverage: 0.005).
    design = simulate.Design()
    assert design.truth == pytest.approx(0.85 * 0.3 + 0.075)
    measured = coverage(design, 2000)
    print(f"\ncoverage of the 95% interval, 24 prompts x 2 seeds x 8 raters, truth {design.truth:.3f}, "
          f"2000 replicates: {measured:.4f}")
    assert 0.93 <= measured <= 0.97, measured


@pytest.mark.slow
@pytest.mark.parametrize(("design", "upper"), [
    (simulate.Design(prompts=32, seeds=1, raters=12), 0.97),
    (simulate.Design(preference_a=0.6, prompt_spread=0.2, rater_spread=0.15, item_spread=0.0, side_spread=0.0), 0.97),
    # With few raters the rater variance is poorly known and the interval errs wide (measured
    # 0.963-0.972 at 5 raters, 0.967-0.969 at 3): never below 95%, at most a little above 97%.
    (simulate.Design(prompts=16, raters=5), 0.98),
    (simulate.Design(raters=3), 0.98)], ids=["32x12", "strong-effects", "16x5", "3raters"])
def test_interval_coverage_in_other_designs(design, upper):
    measured = coverage(design, 2000, seed=1)
    print(f"\ncoverage of the 95% interval, {design}: {measured:.4f}")
    assert 0.93 <= measured <= upper


def test_naive_pigeonhole_bootstrap_would_over_cover():
    """Why the interval is not the plain two-way bootstrap: drawing prompts and raters at once and
    keeping every drawn cell counts the answer noise about three times (measured here)."""
    design, rng, hits = simulate.Design(), np.random.default_rng(5), 0
    for _ in range(300):
        a = simulate.answers(design, rng)
        weights = (inference.resample_counts(rng, design.prompts, 400)[:, a["prompt"]]
                   * inference.resample_counts(rng, design.raters, 400)[:, a["rater"]])
        means = (weights @ a["score_b"]) / weights.sum(axis=1)
        low, high = np.quantile(means, [0.025, 0.975])
        hits += bool(low <= design.truth <= high)
    print(f"\ncoverage of the plain pigeonhole bootstrap's 95% interval, 300 replicates: {hits / 300:.3f}")
    assert hits / 300 > 0.975


def test_krippendorff_alpha_equals_the_krippendorff_package():
    krippendorff = pytest.importorskip("krippendorff")
    rng = np.random.default_rng(0)
    worst = 0.0
    for trial in range(6):
        raters, units = 3 + trial % 3, 15 + 4 * trial
        truth = rng.integers(-1, 2, units)
        data = np.where(rng.random((raters, units)) < 0.7, truth, rng.integers(-1, 2, (raters, units))).astype(float)
        data[rng.random(data.shape) < 0.2] = np.nan  # raters skip some units
        for level in ("nominal", "ordinal", "interval"):
            ours = inference.krippendorff_alpha(data, level)
            theirs = krippendorff.alpha(reliability_data=data, level_of_measurement=level)
            assert ours == pytest.approx(theirs, abs=1e-10), (trial, level)
            worst = max(worst, abs(ours - theirs))
    scores = rng.integers(1, 11, (4, 20)).astype(float)
    ours = inference.krippendorff_alpha(scores, "interval")
    theirs = krippendorff.alpha(reliability_data=scores, level_of_measurement="interval")
    assert ours == pytest.approx(theirs, abs=1e-10)
    worst = max(worst, abs(ours - theirs))
    print(f"\nKrippendorff's alpha vs the krippendorff package, 6 data sets x 3 levels + 1 interval set: "
          f"largest |difference| {worst:.2e}")


def bt_data(rng: np.random.Generator, strengths: np.ndarray, n: int, ties: float):
    first = rng.integers(0, strengths.size, n)
    second = (first + rng.integers(1, strengths.size, n)) % strengths.size
    p = 1 / (1 + np.exp(-(strengths[first] - strengths[second])))
    score = np.where(rng.random(n) < ties, 0.5, (rng.random(n) < p).astype(float))
    return first, second, score


def test_bradley_terry_equals_statsmodels_logistic_fit():
    sm = pytest.importorskip("statsmodels.api")
    rng = np.random.default_rng(1)
    strengths = np.array([0.8, 0.1, -0.3, -0.6])
    first, second, score = bt_data(rng, strengths, 400, ties=0.15)
    ours = inference.bradley_terry(first, second, score, 4)
    # Logistic GLM on the strength differences, the last system as reference, ties as y = 0.5.
    design = np.zeros((first.size, 4))
    design[np.arange(first.size), first] += 1
    design[np.arange(first.size), second] -= 1
    fit = sm.GLM(score, design[:, :3], family=sm.families.Binomial()).fit(tol=1e-14, maxiter=200)
    theirs = np.append(fit.params, 0.0)
    difference = np.max(np.abs(ours - (theirs - theirs.mean())))
    print(f"\nBradley-Terry vs statsmodels logistic GLM (ties as y=0.5), 4 systems, 400 answers: "
          f"largest |difference| {difference:.2e}")
    assert difference < 1e-6


def test_bradley_terry_equals_choix_without_ties():
    choix = pytest.importorskip("choix")
    rng = np.random.default_rng(2)
    first, second, score = bt_data(rng, np.array([1.0, 0.4, 0.0, -0.5, -0.9]), 600, ties=0.0)
    ours = inference.bradley_terry(first, second, score, 5)
    comparisons = [(int(a), int(b)) if s == 1 else (int(b), int(a)) for a, b, s in zip(first, second, score, strict=True)]
    theirs = choix.ilsr_pairwise(5, comparisons, alpha=0.0, tol=1e-13, max_iter=10_000)
    difference = np.max(np.abs(ours - (theirs - theirs.mean())))
    print(f"\nBradley-Terry vs choix.ilsr_pairwise, 5 systems, 600 answers: largest |difference| {difference:.2e}")
    assert difference < 1e-6


def test_holm_and_benjamini_hochberg_equal_statsmodels():
    multitest = pytest.importorskip("statsmodels.stats.multitest")
    rng = np.random.default_rng(6)
    for size in (1, 2, 5, 11):
        p_values = list(rng.random(size) ** 2)
        for ours, method in ((inference.holm, "holm"), (inference.benjamini_hochberg, "fdr_bh")):
            theirs = multitest.multipletests(p_values, method=method)[1]
            assert np.allclose(ours(p_values), theirs, atol=1e-12), (size, method)
    assert inference.holm([None, 0.01, None, 0.04]) == [None, 0.02, None, 0.04]


def test_bradley_terry_without_a_finite_fit_says_so():
    assert np.all(np.isnan(inference.bradley_terry(np.array([0, 0, 1]), np.array([1, 2, 2]), np.ones(3), 3)))


def test_sign_test_on_per_prompt_majorities_by_hand():
    prompts = np.array([0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4])
    values = np.array([1, 1, 0, 1, 0.5, 1, 1, 0, 0, 1, 0])  # prompt 0: b; 1: b; 2: b; 3: a; 4: tied
    result = inference.sign_test(prompts, values, 0.5)
    assert (result["prompts_b"], result["prompts_a"], result["prompts_tied"]) == (3, 1, 1)
    assert result["p_value"] == pytest.approx(2 * (1 + 4) / 16)  # two-sided binomial, 3 of 4


def test_one_rater_interval_resamples_prompts_only():
    rng = np.random.default_rng(3)
    values = rng.random(20).round()
    interval = inference.two_way_interval(inference.mean_statistic(values), np.arange(20), np.zeros(20, int), draws=200)
    assert interval.note and "prompts only" in interval.note and interval.df[0] == 19


def test_a_study_analysed_end_to_end(tmp_path):
    run = make_run(tmp_path, seeds_per_prompt=3)
    study_dir, manifest = prepare(None, run_dir=str(run), settings=Settings(
        questions=[{"id": "overall", "text": "Which is better?"}, {"id": "motion", "text": "Which moves better?"}]))
    store = Store(study_dir, manifest)
    simulate.rate_study(store, raters=6, strengths={"s0": 0.0, "s1": 1.2}, biased=1, seed=4)
    assert find_study(run) == study_dir and find_study(study_dir) == study_dir and find_study(tmp_path) is None
    results = analyze(study_dir, draws=300)
    for name in ("results.json", "results.md", "results.html"):
        assert (study_dir / name).is_file()
    assert json.loads((study_dir / "results.json").read_text())["study"]["study_id"] == manifest["study_id"]
    # The side-biased rater is flagged; an unbiased one can be too, rarely, by chance (each study draws
    # its own sides: a run of one side beyond p 0.001, or a "different" answer on both identical pairs).
    assert "simulated rater 1" in results["flagged_raters"] and len(results["flagged_raters"]) <= 2
    flagged = next(r for r in results["raters"] if r["name"] == "simulated rater 1")
    assert any("identical-pair" in reason for reason in flagged["reasons"])
    overall = results["comparisons"][0]["questions"]["overall"]
    assert overall["n_answers"] == 6 * 12 and overall["n_prompts"] == 4 and overall["n_raters"] == 6
    assert overall["wins_b"] + overall["ties"] + overall["wins_a"] == overall["n_answers"]
    assert overall["value"] == pytest.approx((overall["wins_b"] + overall["ties"] / 2) / overall["n_answers"])
    assert overall["ci_low"] < overall["value"] < overall["ci_high"] and overall["value"] > 0.5
    assert overall["sign_test"]["adjustment"] == "holm"
    assert results["comparisons"][0]["questions"]["motion"]["sign_test"]["adjustment"] == "benjamini-hochberg"
    assert overall["without_flagged"]["n_raters"] == 6 - len(results["flagged_raters"])
    assert results["position_bias"]["pairs"]["left"] > 0 and results["agreement"]["overall"]["alpha_ordinal"] is not None
    markdown = analysis_markdown(results)
    assert "| fine-tuned vs base | overall |" in markdown and "simulated rater 1" in markdown
    assert "Without them" in markdown and "Krippendorff" in markdown
    assert "<table>" in analysis_html(results) and "<script" not in analysis_html(results)
    summary = wandb_summary(results)
    assert summary["rating/fine-tuned_vs_base/overall/value"] == overall["value"]
    assert all(isinstance(v, float) and math.isfinite(v) for v in summary.values())
    columns, rows = wandb_table_rows(results)
    assert len(rows) == 2 and all(len(r) == len(columns) for r in rows)
    lines = model_card_lines(results)
    assert lines[0].startswith("- Human preference, Which is better?: fine-tuned preferred over base in ")
    assert study_results(run)["study"]["answers"] == results["study"]["answers"]


def test_score_mode_paired_mean_change(tmp_path):
    study_dir, manifest = prepare(None, run_dir=str(make_run(tmp_path, seeds_per_prompt=2)),
                                  settings=Settings(mode="score"))
    store = Store(study_dir, manifest)
    simulate.rate_study(store, raters=4, strengths={"s0": 0.0, "s1": 1.0}, scores=True, seed=1)
    results = analyze(study_dir, draws=300)
    entry = results["comparisons"][0]["questions"]["overall"]
    assert entry["mean_b"] > entry["mean_a"]
    assert entry["value"] == pytest.approx(entry["mean_b"] - entry["mean_a"])
    assert entry["ci_low"] < entry["value"] < entry["ci_high"]
    assert results["agreement"]["overall"]["alpha_interval"] is not None
    assert "mean a" in analysis_markdown(results)
    assert "(1-10)" in model_card_lines(results)[0]


def test_bradley_terry_over_a_sweep_of_three_models(tmp_path):
    sweep = make_sweep(tmp_path, jobs=3)
    study_dir, manifest = prepare(None, sweep_dir=str(sweep), settings=Settings(pairs="all", seed=1))
    store = Store(study_dir, manifest)
    tuned = [s["id"] for s in manifest["systems"] if s["role"] == "fine-tuned"]
    truth = dict(zip(tuned, (1.5, 0.0, -1.5), strict=True))
    simulate.rate_study(store, raters=6, strengths={**truth, **{s["id"]: 0.0 for s in manifest["systems"]
                                                                  if s["id"] not in truth}}, seed=2)
    results = analyze(study_dir, draws=200)
    fit = results["bradley_terry"]["overall"][0]
    assert [s["id"] for s in fit["strengths"]] == tuned  # ranked as simulated
    assert all(s["ci_low"] < s["strength"] < s["ci_high"] for s in fit["strengths"])
    assert "Bradley-Terry strengths" in analysis_markdown(results)


def test_a_unanimous_comparison_gets_an_exact_bound_not_a_zero_width_interval(tmp_path):
    study_dir, manifest = prepare(None, run_dir=str(make_run(tmp_path)), settings=Settings(repeats=0, identical=0))
    store = Store(study_dir, manifest)
    for name in ("u1", "u2", "u3"):
        rater = store.rater(name)
        while (assignment := store.next_assignment(rater["id"])) is not None:
            side = "left" if assignment["left_system"] == "b" else "right"
            store.answer(rater, {"assignment": assignment["id"], "answers": {"overall": side}})
    entry = analyze(study_dir, draws=100, write=False)["comparisons"][0]["questions"]["overall"]
    assert entry["value"] == 1.0 and entry["ci_high"] == 1.0
    assert entry["ci_low"] == pytest.approx(0.025 ** (1 / 3)) and "exact binomial" in entry["note"]


def test_report_api_finds_a_sweep_study_from_a_job_and_reanalyses_only_new_answers(tmp_path):
    sweep = make_sweep(tmp_path, jobs=2)
    job = sweep / "1_cogvideox_tiny_shapes"
    assert find_study(sweep) is None and study_results(sweep) is None  # no study yet
    study_dir, manifest = prepare(None, sweep_dir=str(sweep))
    store = Store(study_dir, manifest)
    assert study_results(sweep) is None  # a study nobody answered: nothing to quote
    simulate.rate_study(store, raters=2, strengths={s["id"]: 0.0 for s in manifest["systems"]}, seed=3)
    assert find_study(job) == study_dir == find_study(sweep)
    assert find_study(tmp_path / "elsewhere") is None
    first = study_results(sweep)
    written = (study_dir / "results.json").stat().st_mtime_ns
    again = study_results(job)  # the ratings did not change: results.json is read, not rewritten
    assert again == first and (study_dir / "results.json").stat().st_mtime_ns == written
    simulate.rate_study(store, raters=1, strengths={s["id"]: 0.0 for s in manifest["systems"]}, seed=4, first=3)
    assert study_results(sweep)["study"]["raters"] == 3  # new answers: analysed again
    assert study_results(sweep, refresh=False)["study"]["raters"] == 3
    card = model_card_lines(first, run_dir=job)
    assert len(card) == 1 and "1_cogvideox_tiny_shapes preferred over 1_cogvideox_tiny_shapes (base)" in card[0]
    assert len(model_card_lines(first)) == 2
