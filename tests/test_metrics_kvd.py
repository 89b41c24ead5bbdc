"""KVD: the unbiased polynomial-kernel MMD² on I3D features, checked against a known truth.

The truth: for X ~ N(mu1, diag s1) and Y ~ N(mu2, diag s2) and k(x, y) = (x.y/d + 1)^3,
E k(X, Y) has a closed form (condition on y: x.y/d is normal with mean a = 1 + mu1.y/d and
variance b^2 = y' S1 y / d^2, so E[(a + bZ)^3 | y] = a^3 + 3ab^2; then take the Gaussian
moments over y), so the population MMD² = E k(X, X') + E k(Y, Y') - 2 E k(X, Y) is exact.
Every simulation is vectorised over replicates ([R, N, d] at once).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from t2v_exp.metrics.kvd import kvd, kvd_batched, kvd_jackknife, poly_kernel, t_quantile

D = 64


def expected_kernel(mu1, s1, mu2, s2) -> float:
    """E (X.Y/d + 1)^3 for independent X ~ N(mu1, diag s1), Y ~ N(mu2, diag s2)."""
    d = mu1.numel()
    mean = 1 + (mu1 @ mu2) / d  # E a
    var_a = (mu1 * s2 * mu1).sum() / d**2  # Var a
    # E[a * y' S1 y] = E a (mu2' S1 mu2 + tr S1 S2) + 2 mu1' S2 S1 mu2 / d (Gaussian third moments vanish)
    a_b2 = mean * ((mu2 * s1 * mu2).sum() + (s1 * s2).sum()) + 2 * (mu1 * s2 * s1 * mu2).sum() / d
    return float(mean**3 + 3 * mean * var_a + 3 * a_b2 / d**2)


def population_mmd2(mu1, s1, mu2, s2) -> float:
    return expected_kernel(mu1, s1, mu1, s1) + expected_kernel(mu2, s2, mu2, s2) - 2 * expected_kernel(mu1, s1, mu2, s2)


def scenario(shift: float, scale: float, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    s1 = torch.rand(D, generator=generator, dtype=torch.float64) * 1.5 + 0.25  # unequal variances, like logits
    mu1 = torch.randn(D, generator=generator, dtype=torch.float64) * 0.5
    mu2 = mu1 + shift * torch.randn(D, generator=generator, dtype=torch.float64)
    return mu1, s1, mu2, s1 * scale


def draw(mu, s, shape, generator):
    return mu + s.sqrt() * torch.randn(*shape, mu.numel(), generator=generator, dtype=torch.float64)


def test_the_closed_form_expected_kernel_matches_monte_carlo():
    mu1, s1, mu2, s2 = scenario(1.0, 1.3)
    generator = torch.Generator().manual_seed(1)
    for (ma, sa), (mb, sb) in (((mu1, s1), (mu2, s2)), ((mu1, s1), (mu1, s1)), ((mu2, s2), (mu2, s2))):
        x, y = draw(ma, sa, (200_000,), generator), draw(mb, sb, (200_000,), generator)
        values = ((x * y).sum(-1) / D + 1) ** 3  # independent pairs
        standard_error = float(values.std()) / len(values) ** 0.5
        assert abs(float(values.mean()) - expected_kernel(ma, sa, mb, sb)) < 4 * standard_error


@pytest.mark.parametrize("shift,scale,sizes", [(1.0, 1.3, (16, 16)), (0.3, 1.1, (16, 8)), (0.0, 1.0, (16, 16))])
def test_kvd_is_unbiased_at_n16(shift, scale, sizes):
    mu1, s1, mu2, s2 = scenario(shift, scale)
    generator = torch.Generator().manual_seed(2)
    replicates = 4000
    estimates = kvd_batched(draw(mu1, s1, (replicates, sizes[0]), generator),
                            draw(mu2, s2, (replicates, sizes[1]), generator))
    truth = population_mmd2(mu1, s1, mu2, s2)
    standard_error = float(estimates.std()) / replicates**0.5
    assert abs(float(estimates.mean()) - truth) < 4 * standard_error


def coverage(shift, scale, sizes, replicates=4000, seed=3):
    mu1, s1, mu2, s2 = scenario(shift, scale)
    generator = torch.Generator().manual_seed(seed)
    estimate, variance = kvd_jackknife(draw(mu1, s1, (replicates, sizes[0]), generator),
                                       draw(mu2, s2, (replicates, sizes[1]), generator))
    half = t_quantile(0.95, min(sizes) - 1) * variance.sqrt()
    truth = population_mmd2(mu1, s1, mu2, s2)
    return float(((estimate - half <= truth) & (truth <= estimate + half)).double().mean())


def test_the_95_interval_covers_the_truth_95_percent_of_the_time_at_n16():
    # Clearly different distributions (the usual generated-vs-real case): the U-statistic's first-order
    # term dominates and the t-interval on the jackknife SE is close to nominal. 4000 replicates: the
    # Monte Carlo SE of a coverage near 0.95 is 0.0034, so [0.93, 0.97] is +- 6 SE.
    assert 0.93 <= coverage(1.0, 1.3, (16, 16)) <= 0.97
    assert 0.93 <= coverage(1.0, 1.3, (16, 8)) <= 0.98


def test_near_identical_distributions_get_a_conservative_interval_not_a_narrow_one():
    # Near MMD² = 0 the U-statistic is degenerate and the jackknife over-estimates its variance
    # (Efron-Stein): the interval errs wide (measured ~0.99), never narrow.
    assert 0.95 <= coverage(0.05, 1.0, (16, 16)) <= 0.999


def test_grouped_rows_leave_same_prompt_pairs_out_and_stay_unbiased():
    # Two seeds per prompt share a prompt effect: rows of one prompt are correlated. Leaving their pairs
    # out keeps the within-set sum an unbiased E k(X, X') of independent draws; keeping them does not.
    generator = torch.Generator().manual_seed(4)
    mu1, s1, mu2, s2 = scenario(0.3, 1.0)
    replicates, prompts, seeds = 4000, 8, 2
    effect = (s1 / 2).sqrt() * torch.randn(replicates, prompts, 1, D, generator=generator, dtype=torch.float64)
    noise = (s1 / 2).sqrt() * torch.randn(replicates, prompts, seeds, D, generator=generator, dtype=torch.float64)
    generated = (mu1 + effect + noise).reshape(replicates, prompts * seeds, D)  # marginal N(mu1, s1)
    reference = draw(mu2, s2, (replicates, 16), generator)
    groups = torch.arange(prompts).repeat_interleave(seeds)
    truth = population_mmd2(mu1, s1, mu2, s2)
    grouped = kvd_batched(generated, reference, groups)
    plain = kvd_batched(generated, reference)
    assert abs(float(grouped.mean()) - truth) < 4 * float(grouped.std()) / replicates**0.5
    assert float(plain.mean()) - truth > 6 * float(plain.std()) / replicates**0.5  # biased up by the shared effect
    estimate, variance = kvd_jackknife(generated, reference, groups)
    half = t_quantile(0.95, prompts - 1) * variance.sqrt()
    assert 0.93 <= float(((estimate - half <= truth) & (truth <= estimate + half)).double().mean()) <= 0.99


def brute_force_kvd(x, y, groups):
    k_xx, k_yy = poly_kernel(x, x), poly_kernel(y, y)
    pair_x = (groups[:, None] != groups[None, :]).double()
    pair_y = 1 - torch.eye(len(y), dtype=torch.float64)
    return (k_xx * pair_x).sum() / pair_x.sum() + (k_yy * pair_y).sum() / pair_y.sum() - 2 * poly_kernel(x, y).mean()


@pytest.mark.parametrize("grouped", [False, True])
def test_closed_form_jackknife_equals_leaving_out_by_hand(grouped):
    generator = torch.Generator().manual_seed(5)
    x, y = torch.randn(12, 20, generator=generator, dtype=torch.float64), torch.randn(9, 20, generator=generator,
                                                                                      dtype=torch.float64) + 0.3
    groups = torch.arange(12) // 2 if grouped else torch.arange(12)
    estimate, variance = kvd_jackknife(x, y, groups if grouped else None)
    units = int(groups.max()) + 1
    without_x = torch.stack([brute_force_kvd(x[groups != u], y, groups[groups != u]) for u in range(units)])
    without_y = torch.stack([brute_force_kvd(x, y[torch.arange(9) != j], groups) for j in range(9)])
    expected = (units - 1) / units * (without_x - without_x.mean()).pow(2).sum() \
        + 8 / 9 * (without_y - without_y.mean()).pow(2).sum()
    assert float(estimate) == pytest.approx(float(brute_force_kvd(x, y, groups)), rel=1e-12)
    assert float(variance) == pytest.approx(float(expected), rel=1e-9)


def test_kvd_reports_its_interval_around_the_estimate():
    generator = torch.Generator().manual_seed(6)
    x, y = torch.randn(10, 8, generator=generator), torch.randn(6, 8, generator=generator) + 1.0
    result = kvd(x, y, groups=[f"prompt {i // 2}" for i in range(10)])
    ci = result["kvd_ci"]
    assert ci["ci_low"] < result["kvd"] < ci["ci_high"] and ci["confidence"] == 0.95
    assert (ci["n"], ci["n_units"], ci["n_reference"], ci["dof"]) == (10, 5, 6, 4)
    assert ci["ci_high"] - result["kvd"] == pytest.approx(t_quantile(0.95, 4) * ci["se"])
    assert "jackknife" in ci["method"] and result["warnings"] == []
    too_few = kvd(x[:2], y)
    assert too_few["kvd_ci"] is None and "no interval" in too_few["warnings"][0]


def test_matches_torchmetrics_poly_mmd_on_equal_sized_sets():
    # torchmetrics' KID internals (and torch-fidelity's mmd2) take equal-sized sets: compare there.
    kid = pytest.importorskip("torchmetrics.image.kid")
    generator = torch.Generator().manual_seed(7)
    x, y = torch.randn(20, 400, generator=generator, dtype=torch.float64), \
        torch.randn(20, 400, generator=generator, dtype=torch.float64) * 1.2 + 0.1
    ours = float(kvd_batched(x, y))
    assert ours == pytest.approx(float(kid.poly_mmd(x, y)), rel=1e-10)


def test_matches_torch_fidelity_kid_mmd2_on_equal_sized_sets():
    fidelity = pytest.importorskip("torch_fidelity.metric_kid")
    rng = np.random.default_rng(8)
    x, y = rng.normal(size=(16, 400)), rng.normal(size=(16, 400)) * 0.8 - 0.2
    kernels = [fidelity.kernel_poly(a, b, kid_kernel_poly_degree=3, kid_kernel_poly_gamma=None, kid_kernel_poly_coef0=1)
               for a, b in ((x, x), (x, y), (y, y))]
    theirs = float(fidelity.mmd2(*kernels))
    assert float(kvd_batched(torch.from_numpy(x), torch.from_numpy(y))) == pytest.approx(theirs, rel=1e-10)
