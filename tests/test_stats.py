"""Inference with the prompt as the unit: exact tests against scipy, intervals by simulation with a known truth.

Every simulation draws a clustered design (prompts x seeds, or runs x prompts) whose true mean change is
known, and checks that the interval `paired_delta` / `crossed_delta` report covers it about 95% of the
time. Each coverage test also runs the interval this project used before (a percentile bootstrap over
videos, or a t over prompts that ignores training runs) on the same draws, and asserts it fails: the
simulation can tell a right interval from a wrong one.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import binomtest, false_discovery_control, permutation_test

from t2v_exp.metrics import stats

REPLICATES = 4000
COVERAGE = (0.93, 0.97)


# -- exact tests -----------------------------------------------------------------------------------
AUDIT_CASES = [  # the audit's cases: per-prompt deltas of a 0/1 score, one seed per prompt
    ([0] * 11 + [1] * 5, 0.0625),
    ([0] * 8 + [1] * 7 + [-1], 0.0703125),
    ([0] * 15 + [1], 1.0),
    ([1] * 16, 2 / 2 ** 16),
]


def _scipy_exact_paired(deltas: list[float]) -> float:
    """scipy's exact sign-flip test of the mean: every sign pattern of the deltas enumerated."""
    result = permutation_test((np.asarray(deltas, dtype=float),), np.mean, permutation_type="samples",
                              alternative="two-sided", n_resamples=np.inf)
    return float(result.pvalue)


@pytest.mark.parametrize(("deltas", "expected"), AUDIT_CASES)
def test_sign_flip_equals_exact_mcnemar_and_scipy_permutation(deltas, expected):
    p_value, how = stats.sign_flip_p_value(deltas)
    assert how == "exact"
    up, down = deltas.count(1), deltas.count(-1)
    mcnemar = binomtest(up, up + down, 0.5).pvalue  # exact McNemar: discordant pairs ~ Binomial(n, 1/2)
    assert abs(p_value - mcnemar) < 1e-9
    assert abs(p_value - _scipy_exact_paired(deltas)) < 1e-9
    assert abs(p_value - expected) < 1e-9


def test_sign_flip_equals_scipy_on_continuous_deltas():
    rng = np.random.default_rng(3)
    for size in (5, 9, 12):
        deltas = rng.normal(0.3, 1.0, size).round(2)  # rounding makes ties, which both must count
        assert abs(stats.sign_flip_p_value(deltas)[0] - _scipy_exact_paired(list(deltas))) < 1e-9


def test_sign_flip_beyond_sixteen_prompts_is_a_seeded_monte_carlo_near_the_exact_value():
    deltas = [1.0] * 15 + [-1.0] * 5 + [0.0] * 4  # 20 nonzero: binomial exact p is known
    p_value, how = stats.sign_flip_p_value(deltas, seed=1)
    assert how.startswith("monte carlo")
    exact = binomtest(15, 20, 0.5).pvalue
    assert abs(p_value - exact) < 4 * np.sqrt(exact * (1 - exact) / stats.MONTE_CARLO_FLIPS) + 1e-5
    assert stats.sign_flip_p_value(deltas, seed=1)[0] == p_value  # reproducible


def test_paired_delta_averages_seeds_within_a_prompt_before_testing():
    # Two prompts, two seeds each: one prompt moved by +1 on both seeds, the other not at all. As four
    # videos that looks like two independent +1s; as prompts it is one changed prompt: p = 1.
    row = stats.paired_delta([0, 0, 0, 0], [1, 1, 0, 0], ["a", "a", "b", "b"])
    assert row["n_prompts"] == 2 and row["n"] == 4
    assert row["p_value"] == 1.0
    assert row["mean_delta"] == 0.5


def test_binary_scores_without_a_discordant_prompt_get_an_exact_nonzero_interval():
    row = stats.paired_delta([1] * 8 + [0] * 8, [1] * 8 + [0] * 8)
    assert row["p_value"] is None
    assert row["ci_low"] < 0 < row["ci_high"]
    # (1 - |delta|)^16 >= 0.05: |delta| up to 1 - 0.05^(1/16)
    assert row["ci_high"] == pytest.approx(1 - 0.05 ** (1 / 16))
    every = stats.paired_delta([0] * 16, [1] * 16)
    assert every["ci_high"] == 1.0 and every["ci_low"] == pytest.approx(2 * 0.05 ** (1 / 16) - 1)


def test_exact_interval_for_constant_binary_outcomes_covers_at_least_its_level():
    """Simulated: prompts whose delta is 0 with probability 1 - |delta|: the interval drawn from the
    all-zero outcome must exclude a delta only when that outcome had probability below 5%."""
    rng = np.random.default_rng(5)
    for delta in (0.05, 0.15, 0.3):
        draws = rng.random((REPLICATES, 16)) < delta  # a prompt improves with probability delta, else no change
        low, high = stats.paired_intervals(draws.astype(float), True)
        assert ((low <= delta) & (delta <= high)).mean() >= 0.95


# -- coverage: one training run, clustered prompts x seeds -----------------------------------------
def _percentile_bootstrap_over_videos(deltas: np.ndarray, rng, resamples: int = 1000) -> tuple[np.ndarray, np.ndarray]:
    """The interval t2v_exp used before: resample videos (not prompts) with replacement, percentiles."""
    flat = deltas.reshape(deltas.shape[0], -1)
    low, high = np.empty(flat.shape[0]), np.empty(flat.shape[0])
    for i, row in enumerate(flat):
        means = row[rng.integers(0, row.size, size=(resamples, row.size))].mean(axis=1)
        low[i], high[i] = np.quantile(means, [0.025, 0.975])
    return low, high


@pytest.mark.parametrize("icc", [0.1, 0.4, 0.8])
@pytest.mark.parametrize(("prompts", "seeds"), [(8, 2), (16, 1)])
def test_continuous_interval_covers_the_truth(prompts, seeds, icc):
    rng = np.random.default_rng(11)
    truth = 0.3
    deltas = (truth + rng.normal(0, np.sqrt(icc), (REPLICATES, prompts, 1))
              + rng.normal(0, np.sqrt(1 - icc), (REPLICATES, prompts, seeds)))
    low, high = stats.paired_intervals(deltas.mean(axis=2), False)
    coverage = ((low <= truth) & (truth <= high)).mean()
    print(f"continuous {prompts}x{seeds} icc {icc}: coverage {coverage:.4f}")  # pytest -s shows the figures
    assert COVERAGE[0] <= coverage <= COVERAGE[1], coverage
    if seeds > 1 and icc >= 0.4:  # the old per-video bootstrap on the same draws
        old_low, old_high = _percentile_bootstrap_over_videos(deltas[:2000], rng)
        old = ((old_low <= truth) & (truth <= old_high)).mean()
        print(f"  old per-video percentile bootstrap: coverage {old:.4f}")
        assert old < 0.90, old


def _binary_design(rng, count: int, prompts: int, seeds: int, icc: float):
    """0/1 scores: each prompt has its own base and tuned success probability (logit-normal, shared
    prompt effect), each seed a Bernoulli draw; the true mean change is computed from 2 million prompts."""
    def probabilities(shape):
        effect = rng.normal(0, 2 * np.sqrt(icc), shape)
        return 1 / (1 + np.exp(1.0 - effect)), 1 / (1 + np.exp(-0.2 - effect))

    base_p, tuned_p = probabilities(2_000_000)
    truth = float((tuned_p - base_p).mean())
    base_p, tuned_p = probabilities((count, prompts, 1))
    base = rng.random((count, prompts, seeds)) < base_p
    tuned = rng.random((count, prompts, seeds)) < tuned_p
    return truth, base.astype(float), tuned.astype(float)


@pytest.mark.parametrize("icc", [0.1, 0.4])
@pytest.mark.parametrize(("prompts", "seeds"), [(8, 2), (16, 1)])
def test_binary_interval_covers_the_truth(prompts, seeds, icc):
    rng = np.random.default_rng(17)
    truth, base, tuned = _binary_design(rng, REPLICATES, prompts, seeds, icc)
    low, high = stats.paired_intervals((tuned - base).mean(axis=2), True)
    coverage = ((low <= truth) & (truth <= high)).mean()
    print(f"binary {prompts}x{seeds} icc {icc}: coverage {coverage:.4f}")
    assert COVERAGE[0] <= coverage <= COVERAGE[1], coverage
    assert np.all(high > low)  # never zero-width


def test_paired_delta_reports_the_interval_the_coverage_tests_check():
    rng = np.random.default_rng(2)
    base, tuned = rng.random(16).round(), rng.random(16).round()
    row = stats.paired_delta(base, tuned, [i // 2 for i in range(16)])
    low, high = stats.paired_intervals((tuned - base).reshape(8, 2).mean(axis=1), True)
    assert (row["ci_low"], row["ci_high"]) == (float(low), float(high))


# -- coverage: several training runs -----------------------------------------------------------------
@pytest.mark.parametrize(("run_sd", "low_bound", "high_bound"), [(0.2, *COVERAGE), (0.5, *COVERAGE), (0.0, 0.93, 0.99)])
def test_crossed_interval_covers_the_truth_over_runs_and_prompts(run_sd, low_bound, high_bound):
    """3 training runs x 16 prompts; the run effect is shared by all prompts of a run. With no run
    effect at all the interval is conservative (3 runs cannot show that there is none)."""
    rng = np.random.default_rng(23)
    truth, count = 0.2, 2000
    deltas = (truth + rng.normal(0, run_sd, (count, 3, 1)) + rng.normal(0, 0.3, (count, 1, 16))
              + rng.normal(0, 0.5, (count, 3, 16)))
    rows = [stats.crossed_delta(d) for d in deltas]
    coverage = np.mean([r["ci_low"] <= truth <= r["ci_high"] for r in rows])
    print(f"3 runs x 16 prompts, run sd {run_sd}: coverage {coverage:.4f}")
    assert low_bound <= coverage <= high_bound, coverage
    if run_sd >= 0.5:  # ignoring the runs (t over prompts of run-averaged deltas) under-covers
        low, high = stats.t_intervals(deltas.mean(axis=1))
        ignored = ((low <= truth) & (truth <= high)).mean()
        print(f"  ignoring the runs: coverage {ignored:.4f}")
        assert ignored < 0.85


def test_crossed_delta_with_one_run_is_the_prompt_level_interval():
    deltas = np.random.default_rng(0).normal(size=(1, 12))
    row = stats.crossed_delta(deltas)
    assert (row["ci_low"], row["ci_high"]) == stats.t_interval(deltas[0])


# -- multiplicity ------------------------------------------------------------------------------------
def test_holm_and_benjamini_hochberg_match_statsmodels_and_scipy():
    multipletests = pytest.importorskip("statsmodels.stats.multitest").multipletests
    rng = np.random.default_rng(8)
    for size in (1, 3, 7, 20):
        p_values = list(rng.random(size) ** 3)
        assert np.allclose(stats.holm(p_values), multipletests(p_values, method="holm")[1], atol=1e-12)
        assert np.allclose(stats.benjamini_hochberg(p_values), multipletests(p_values, method="fdr_bh")[1], atol=1e-12)
        assert np.allclose(stats.benjamini_hochberg(p_values), false_discovery_control(p_values), atol=1e-12)
    assert stats.holm([0.01, None, 0.04]) == [0.02, None, 0.04]


def test_significant_needs_both_the_adjusted_p_and_the_interval():
    row = {"ci_low": 0.01, "ci_high": 0.2}
    assert stats.decide(row, 0.01)
    assert not stats.decide(row, 0.06)  # the interval alone is not enough
    assert not stats.decide({"ci_low": -0.01, "ci_high": 0.2}, 0.01)  # nor the p-value alone
    assert not stats.decide(row, None)


def test_mean_with_ci_is_over_prompts():
    values = [0.0, 0.0, 0.0, 1.0]
    row = stats.mean_with_ci(values, ["a", "a", "a", "b"])  # prompt a: 0, prompt b: 1
    assert row["mean"] == 0.5 and row["n_prompts"] == 2
    assert stats.mean_with_ci([1.0])["ci_low"] is None  # one prompt: no interval


def test_crossed_delta_of_a_binary_score_never_claims_zero_width_or_leaves_its_range():
    unchanged = stats.crossed_delta(np.zeros((3, 16)), binary=True)
    assert (unchanged["ci_low"], unchanged["ci_high"]) == pytest.approx((-(1 - 0.05 ** (1 / 16)), 1 - 0.05 ** (1 / 16)))
    wide = stats.crossed_delta(np.array([[1.0, 0.0, 1.0], [-1.0, 0.0, 1.0], [1.0, -1.0, 1.0]]), binary=True)
    assert wide["ci_low"] >= -1.0 and wide["ci_high"] <= 1.0
    assert stats.crossed_delta(np.zeros((3, 16)))["ci_low"] == 0.0  # a continuous score: no such rule
