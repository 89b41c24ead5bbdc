"""Kernel Video Distance: the unbiased polynomial-kernel MMD² on the FVD detector's I3D features.

KVD is to FVD what KID is to FID (Bińkowski et al. 2018; Unterthiner et al. 2018 report it
beside FVD): the squared maximum mean discrepancy between the generated and the reference
feature distributions under the kernel k(x, y) = (x·y / d + 1)^3, d the feature dimension
(400 here), estimated by the two-sample U-statistic

    KVD = 1/(m(m-1)) sum_{i!=j} k(x_i, x_j) + 1/(n(n-1)) sum_{i!=j} k(y_i, y_j) - 2/(mn) sum_{i,j} k(x_i, y_j).

Why beside FVD: the U-statistic is unbiased at any N (its expectation is the population MMD²,
whatever N), while FVD's plug-in estimate is biased upward by O(d/N) - hundreds to thousands at
the N a small evaluation has. So KVD can carry an honest interval at small N, and a difference
of two KVDs estimates the difference of the population values. It can be slightly negative when
the two distributions are close: that is the unbiased estimator doing its job, not an error.

Interval: delete-one jackknife variance of the U-statistic over generated and reference rows
(Arvesen 1969: the two-sample jackknife, V = (m-1)/m sum_i (t_-i - t_.)^2 + the same over the
reference rows), then estimate +- t_{0.975, min(m,n)-1} sqrt(V). Unlike a percentile bootstrap
over videos (which duplicates rows and so shifts a set statistic) it is centred on the estimate
by construction, and the jackknife variance of a U-statistic is never too small on average
(Efron-Stein), so the interval errs wide where the normal shape is poor (MMD² near 0). The t
quantile rather than z widens it at small N, where the variance estimate itself is noisy;
tests/test_metrics_kvd.py measures its coverage on Gaussians whose MMD² is known analytically.
The leave-one-out values come in closed form from the kernel matrices' row sums, so the
interval costs no more than the estimate; every function takes a leading batch dimension so the
simulation runs thousands of replicates at once.

The numbers are raw MMD² (KID tables often print x1000; we do not).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

DEGREE = 3
COEF = 1.0
CONFIDENCE = 0.95
KERNEL = "k(x, y) = (x.y / d + 1)^3"
ESTIMATOR = "unbiased two-sample U-statistic of MMD^2 (raw, not x1000)"
INTERVAL_METHOD = ("estimate +- t(min(units, n) - 1) x delete-one jackknife SE of the U-statistic "
                   "(generated units: videos, or prompts when known; reference rows)")
MIN_ROWS = 3  # the delete-one values need m - 1 >= 2 rows on each side for a U-statistic


def poly_kernel(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """(x·y/d + 1)^3 between the rows of [..., m, d] and [..., n, d], float64 -> [..., m, n]."""
    first, second = first.double(), second.double()
    return (first @ second.transpose(-1, -2) / first.shape[-1] + COEF) ** DEGREE


def _same_group(groups: torch.Tensor | None, count: int, like: torch.Tensor) -> torch.Tensor:
    """[..., m, m] 1.0 where two rows may be paired in a within-set sum: different rows, and different
    groups when ``groups`` (e.g. the prompt of each video) is given."""
    labels = torch.arange(count) if groups is None else groups
    return (labels.unsqueeze(-1) != labels.unsqueeze(-2)).to(like.dtype).expand(*like.shape[:-2], count, count)


def _kernel_sums(generated: torch.Tensor, reference: torch.Tensor,
                 groups: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Row sums of the within-set kernels over the pairs that may be paired, and of k(X, Y), batched."""
    k_xx = poly_kernel(generated, generated)
    k_yy = poly_kernel(reference, reference)
    k_xy = poly_kernel(generated, reference)
    pair_x = _same_group(groups, generated.shape[-2], k_xx)
    pair_y = _same_group(None, reference.shape[-2], k_yy)
    return {"rows_x": (k_xx * pair_x).sum(-1), "rows_y": (k_yy * pair_y).sum(-1), "cross_x": k_xy.sum(-1),
            "cross_y": k_xy.sum(-2), "pairs_x": pair_x.sum(-1)}


def _u_statistic(s_xx, s_yy, s_xy, pairs_x, m, n) -> torch.Tensor:
    return s_xx / pairs_x + s_yy / (n * (n - 1)) - 2.0 * s_xy / (m * n)


def kvd_batched(generated: torch.Tensor, reference: torch.Tensor, groups: torch.Tensor | None = None) -> torch.Tensor:
    """Unbiased MMD² for [..., m, d] vs [..., n, d] (m, n >= 2): one value per leading index.

    ``groups`` [m] (int labels, e.g. prompt indices): generated rows of one group are correlated
    (seeds of one prompt), so their pairs are left out of the within-set sum, which keeps it an
    unbiased estimate of E k(X, X') for independent X, X'.
    """
    m, n = generated.shape[-2], reference.shape[-2]
    if m < 2 or n < 2:
        raise ValueError(f"KVD's U-statistic needs at least 2 rows per side, got {m} and {n}")
    sums = _kernel_sums(generated, reference, groups)
    return _u_statistic(sums["rows_x"].sum(-1), sums["rows_y"].sum(-1), sums["cross_x"].sum(-1),
                        sums["pairs_x"].sum(-1), m, n)


def kvd_jackknife(generated: torch.Tensor, reference: torch.Tensor,
                  groups: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(estimate, jackknife variance), batched over leading dimensions; m, n >= MIN_ROWS.

    Leaving out generated row i (or every row of group g, when ``groups`` is given: the unit left
    out is the unit that is independent) removes its within-set pairs twice (k_ij and k_ji) and its
    row of k(X, Y); the reference side likewise, one row at a time. All leave-one-out values
    therefore come from the row sums, O(1) each.
    """
    m, n = generated.shape[-2], reference.shape[-2]
    labels = torch.arange(m) if groups is None else torch.unique(groups, return_inverse=True)[1]
    units = int(labels.max()) + 1
    if units < MIN_ROWS or n < MIN_ROWS:
        raise ValueError(f"KVD's jackknife needs at least {MIN_ROWS} units per side, got {units} and {n}")
    sums = _kernel_sums(generated, reference, labels)
    member = torch.nn.functional.one_hot(labels, units).to(sums["rows_x"].dtype)  # [m, units]
    s_xx, s_yy, s_xy = sums["rows_x"].sum(-1), sums["rows_y"].sum(-1), sums["cross_x"].sum(-1)
    pairs = sums["pairs_x"].sum(-1)
    estimate = _u_statistic(s_xx, s_yy, s_xy, pairs, m, n)
    s_xx, s_yy, s_xy, pairs = (total.unsqueeze(-1) for total in (s_xx, s_yy, s_xy, pairs))
    sizes = member.sum(0)  # rows per unit; a unit's pairs with the other units: 2 * size * (m - size)
    without_x = _u_statistic(s_xx - 2 * sums["rows_x"] @ member, s_yy, s_xy - sums["cross_x"] @ member,
                             pairs - 2 * sizes * (m - sizes), m - sizes, n)
    without_y = _u_statistic(s_xx, s_yy - 2 * sums["rows_y"], s_xy - sums["cross_y"], pairs, m, n - 1)
    variance = (units - 1) / units * (without_x - without_x.mean(-1, keepdim=True)).pow(2).sum(-1) \
        + (n - 1) / n * (without_y - without_y.mean(-1, keepdim=True)).pow(2).sum(-1)
    return estimate, variance


def t_quantile(confidence: float, dof: int) -> float:
    from scipy.stats import t  # deferred: scipy (~0.7 s); train --help imports this module

    return float(t.ppf(0.5 + confidence / 2.0, dof))


def group_labels(groups: Sequence[Any] | None, count: int) -> torch.Tensor | None:
    """Hashable labels (e.g. prompts) -> int tensor [count]; None when there are none or all differ."""
    if groups is None:
        return None
    if len(groups) != count:
        raise ValueError(f"{len(groups)} group labels for {count} rows")
    index: dict[Any, int] = {}
    labels = torch.tensor([index.setdefault(label, len(index)) for label in groups])
    return None if len(index) == count else labels


def kvd(generated: torch.Tensor, reference: torch.Tensor, confidence: float = CONFIDENCE,
        groups: Sequence[Any] | None = None) -> dict[str, Any]:
    """KVD of generated [m, d] vs reference [n, d] features with its jackknife interval.

    ``groups``: one label per generated row (its prompt): rows of one prompt are not independent,
    so their pairs are left out of the estimate and the jackknife leaves out a prompt at a time.
    Returns {"kvd", "kvd_ci": {"ci_low", "ci_high", "se", "confidence", "method", "dof", "n",
    "n_units", "n_reference"}, "warnings"}. With fewer than MIN_ROWS units on a side there is no
    interval (kvd_ci None, and a warning says why).
    """
    m, n = int(generated.shape[0]), int(reference.shape[0])
    labels = group_labels(groups, m)
    units = m if labels is None else int(labels.max()) + 1
    if min(units, n) < MIN_ROWS:
        value = float(kvd_batched(generated, reference, labels)) if labels is None or units >= 2 else float("nan")
        return {"kvd": value, "kvd_ci": None,
                "warnings": [f"KVD from {units} independent generated units and {n} reference videos has no "
                             f"interval (the jackknife needs >= {MIN_ROWS} per side)"]}
    estimate, variance = kvd_jackknife(generated, reference, labels)
    se = float(variance.clamp(min=0).sqrt())
    dof = min(units, n) - 1
    half = t_quantile(confidence, dof) * se
    value = float(estimate)
    unit = "video" if labels is None else "prompt (its videos' pairs left out of the within-set sum)"
    return {"kvd": value, "kvd_ci": {"ci_low": value - half, "ci_high": value + half, "se": se,
                                     "confidence": confidence, "method": INTERVAL_METHOD, "dof": dof, "n": m,
                                     "n_units": units, "unit": unit, "n_reference": n}, "warnings": []}


def protocol() -> dict[str, str]:
    """What decides KVD's number, recorded beside it."""
    return {"kvd_kernel": KERNEL, "kvd_estimator": ESTIMATOR}
