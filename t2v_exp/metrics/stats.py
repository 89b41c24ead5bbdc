"""Uncertainty for evaluation numbers: percentile-bootstrap intervals and paired comparisons.

Every interval here is reproducible: the resampling generator is seeded, and the seed, the
number of resamples and the confidence level travel with the result so a reader can redo it.

- `mean_with_ci`: mean of per-video values with a percentile-bootstrap CI over videos.
- `bootstrap_statistic`: the same for a statistic of a whole set (FVD, IS), resampling the set's
  rows with replacement.
- `paired_delta`: base vs fine-tuned on the same (prompt, seed) pairs: mean delta, bootstrap CI
  of the mean delta, % change and the Wilcoxon signed-rank p-value. A CI that contains 0 is
  "no significant change".
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

DEFAULT_RESAMPLES = 1000
DEFAULT_CONFIDENCE = 0.95
DEFAULT_SEED = 0
METHOD = "percentile bootstrap"


def _finite_array(values: Sequence[float] | np.ndarray, what: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64).reshape(-1)
    if array.size == 0:
        raise ValueError(f"{what}: no values")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{what}: {int((~np.isfinite(array)).sum())} of {array.size} values are not finite")
    return array


def bootstrap_indices(count: int, resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED) -> np.ndarray:
    """[resamples, count] row indices drawn with replacement from a seeded generator."""
    if count < 1 or resamples < 1:
        raise ValueError(f"bootstrap needs count >= 1 and resamples >= 1, got {count} and {resamples}")
    return np.random.default_rng(seed).integers(0, count, size=(resamples, count))


def percentile_interval(samples: np.ndarray, confidence: float = DEFAULT_CONFIDENCE) -> tuple[float, float]:
    """The central `confidence` interval of bootstrap samples (percentile method)."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(np.asarray(samples, dtype=np.float64), [tail, 1.0 - tail])
    return float(low), float(high)


def _record(resamples: int, confidence: float, seed: int, count: int) -> dict[str, Any]:
    return {"n": count, "resamples": resamples, "confidence": confidence, "seed": seed, "method": METHOD}


def mean_with_ci(
    values: Sequence[float] | np.ndarray,
    *,
    resamples: int = DEFAULT_RESAMPLES,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = DEFAULT_SEED,
) -> dict[str, Any]:
    """{"mean", "ci_low", "ci_high", "n", "resamples", "confidence", "seed", "method"} over videos."""
    array = _finite_array(values, "mean_with_ci")
    means = array[bootstrap_indices(array.size, resamples, seed)].mean(axis=1)
    low, high = percentile_interval(means, confidence)
    return {"mean": float(array.mean()), "ci_low": low, "ci_high": high, **_record(resamples, confidence, seed, array.size)}


def bootstrap_statistic(
    statistic: Callable[[np.ndarray], float],
    count: int,
    *,
    resamples: int = DEFAULT_RESAMPLES,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = DEFAULT_SEED,
) -> dict[str, Any]:
    """CI of a set statistic: `statistic(indices)` is evaluated on `resamples` resampled index sets.

    The caller decides what an index selects (rows of a feature matrix, frames of a video, ...).
    Resamples whose statistic is not finite are dropped and counted.
    """
    values = np.array([statistic(indices) for indices in bootstrap_indices(count, resamples, seed)], dtype=np.float64)
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        raise ValueError("bootstrap_statistic: no resample gave a finite value")
    low, high = percentile_interval(finite, confidence)
    return {"ci_low": low, "ci_high": high, "non_finite_resamples": int(values.size - finite.size),
            **_record(resamples, confidence, seed, count)}


def wilcoxon_p_value(deltas: np.ndarray) -> float | None:
    """Two-sided Wilcoxon signed-rank p-value of paired differences; None when it is undefined.

    All-zero differences (identical models) have no ranks to test: None, not a fake p of 1.
    """
    from scipy.stats import wilcoxon

    if deltas.size < 1 or np.all(deltas == 0):
        return None
    result = wilcoxon(deltas, zero_method="wilcox", alternative="two-sided")
    p_value = float(result.pvalue)
    return p_value if math.isfinite(p_value) else None


def paired_delta(
    base: Sequence[float] | np.ndarray,
    tuned: Sequence[float] | np.ndarray,
    *,
    resamples: int = DEFAULT_RESAMPLES,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = DEFAULT_SEED,
) -> dict[str, Any]:
    """Paired comparison of one per-video score: tuned - base, video i against video i.

    Returns base_mean, tuned_mean, mean_delta, ci_low / ci_high (bootstrap CI of the mean
    delta), pct_change (None when the base mean is 0), p_value (Wilcoxon signed-rank, None when
    undefined), significant (the CI excludes 0) and the bootstrap record.
    """
    base_array = _finite_array(base, "paired_delta base")
    tuned_array = _finite_array(tuned, "paired_delta tuned")
    if base_array.size != tuned_array.size:
        raise ValueError(f"paired_delta: {base_array.size} base values vs {tuned_array.size} tuned values")
    deltas = tuned_array - base_array
    means = deltas[bootstrap_indices(deltas.size, resamples, seed)].mean(axis=1)
    low, high = percentile_interval(means, confidence)
    base_mean = float(base_array.mean())
    mean_delta = float(deltas.mean())
    return {
        "base_mean": base_mean,
        "tuned_mean": float(tuned_array.mean()),
        "mean_delta": mean_delta,
        "ci_low": low,
        "ci_high": high,
        "pct_change": None if base_mean == 0 else 100.0 * mean_delta / abs(base_mean),
        "p_value": wilcoxon_p_value(deltas),
        "test": "wilcoxon signed-rank (two-sided)",
        "significant": not (low <= 0.0 <= high),
        **_record(resamples, confidence, seed, int(deltas.size)),
    }


def describe_delta(row: dict[str, Any], digits: int = 4) -> str:
    """One human line for a paired_delta row; a CI containing 0 reads "no significant change"."""
    interval = f"[{row['ci_low']:+.{digits}f}, {row['ci_high']:+.{digits}f}]"
    p_value = "n/a" if row.get("p_value") is None else f"{row['p_value']:.3g}"
    verdict = "" if row["significant"] else "  no significant change"
    return f"{row['mean_delta']:+.{digits}f} {interval} p={p_value}{verdict}"
