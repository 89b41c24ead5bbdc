"""Uncertainty for evaluation numbers, with the prompt as the unit of inference.

Why the prompt: the seeds of one prompt share its content, so their scores are correlated. An
interval over videos treats 8 prompts x 2 seeds as 16 independent draws and is too narrow (it
covered the truth 85% of the time at a within-prompt correlation of 0.4). Every function here
first averages each prompt's videos, then infers over prompts.

- `mean_with_ci`: the mean of a per-video score with a t-interval over per-prompt means.
- `paired_delta`: base vs fine-tuned on the same (prompt, seed) pairs: the mean of per-prompt mean
  deltas, its t-interval, and the exact sign-flip permutation p-value on the same per-prompt
  deltas (all 2^n sign patterns up to n = 16 prompts, a seeded Monte Carlo beyond). On 0/1 scores
  with one seed per prompt the sign-flip test is exact McNemar. When every prompt's delta is the
  same (typically: binary scores with no discordant prompt) a t-interval would have zero width;
  bounded scores then get an exact interval from the probability of seeing that outcome.
- `crossed_delta`: several training runs evaluated on the same prompts: a two-way (run x prompt)
  random-effects interval, so the spread between training runs counts as well as the prompts'.
- `holm` / `benjamini_hochberg`: multiplicity. The primary endpoint is Holm-adjusted across the
  models of a sweep; every other score gets a Benjamini-Hochberg q-value and is exploratory.

A change is "significant" only when the (adjusted) p-value is below alpha AND the interval
excludes 0: the test and the interval answer the same question about the same per-prompt deltas,
and a call needs both to agree.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

DEFAULT_CONFIDENCE = 0.95
DEFAULT_ALPHA = 0.05
DEFAULT_SEED = 0
EXACT_FLIPS_UP_TO = 16  # 2^16 = 65536 sign patterns: exact; beyond, Monte Carlo
MONTE_CARLO_FLIPS = 100_000
METHOD = "t-interval over per-prompt means (prompt = unit)"
PAIRED_METHOD = "t-interval over per-prompt mean deltas (prompt = unit)"
TEST = "exact sign-flip permutation test on per-prompt mean deltas (two-sided)"
CROSSED_METHOD = "two-way random-effects t-interval over runs x prompts (Satterthwaite df)"
CROSSED_TEST = "t-test of the same two-way random-effects model (Satterthwaite df)"
# Relative slack when comparing permuted statistics with the observed one: sums of the same
# floats in another order differ in the last bits, and a tie must count as "as extreme".
TIE_TOLERANCE = 1e-9


def _finite_array(values: Sequence[float] | np.ndarray, what: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64).reshape(-1)
    if array.size == 0:
        raise ValueError(f"{what}: no values")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{what}: {int((~np.isfinite(array)).sum())} of {array.size} values are not finite")
    return array


def _check_confidence(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")


def group_means(values: np.ndarray, groups: Sequence[Any] | None) -> np.ndarray:
    """Mean of each group's values, in order of first appearance (None: every value its own group)."""
    if groups is None:
        return values
    groups = list(groups)
    if len(groups) != values.size:
        raise ValueError(f"{len(groups)} group labels for {values.size} values")
    order: dict[Any, list[int]] = {}
    for index, group in enumerate(groups):
        order.setdefault(group, []).append(index)
    return np.array([values[rows].mean() for rows in order.values()])


def t_intervals(units: np.ndarray, confidence: float = DEFAULT_CONFIDENCE) -> tuple[np.ndarray, np.ndarray]:
    """Student-t intervals of the mean over the last axis ([..., n] unit values -> low, high of
    shape [...]); nan for fewer than two units. Vectorised: the coverage tests run thousands."""
    from scipy.stats import t as student_t  # deferred: scipy (~0.7 s); train --help imports this module

    _check_confidence(confidence)
    units = np.asarray(units, dtype=np.float64)
    count = units.shape[-1]
    if count < 2:
        nan = np.full(units.shape[:-1], math.nan)
        return nan, nan
    mean = units.mean(axis=-1)
    half = student_t.ppf(0.5 + confidence / 2, count - 1) * units.std(axis=-1, ddof=1) / math.sqrt(count)
    return mean - half, mean + half


def t_interval(units: np.ndarray, confidence: float = DEFAULT_CONFIDENCE) -> tuple[float, float]:
    """Student-t interval of the mean of independent unit values; (nan, nan) for one unit."""
    low, high = t_intervals(np.asarray(units, dtype=np.float64), confidence)
    return float(low), float(high)


def constant_delta_interval(value: float, count: int, confidence: float = DEFAULT_CONFIDENCE
                            ) -> tuple[float, float]:
    """Exact interval for the mean delta of a [0, 1] score when all ``count`` prompts gave ``value``.

    A per-prompt delta d lies in [-1, 1]. If its mean is delta < value, d = value has probability
    at most (1 + delta) / (1 + value) (the rest of the mass at -1 is the most that can balance it);
    if delta > value, at most (1 - delta) / (1 - value). n prompts all at ``value`` then have at
    most that to the n-th power; every delta under which it is >= alpha stays in the interval (the
    test inverted). For value 0: |delta| <= 1 - alpha^(1/n).
    """
    edge = (1.0 - confidence) ** (1.0 / count)
    return np.maximum(-1.0, edge * (1.0 + value) - 1.0), np.minimum(1.0, 1.0 - edge * (1.0 - value))


def paired_intervals(deltas: np.ndarray, binary: bool | np.ndarray, confidence: float = DEFAULT_CONFIDENCE
                     ) -> tuple[np.ndarray, np.ndarray]:
    """The interval `paired_delta` reports, for [..., n_prompts] per-prompt mean deltas: the t-interval,
    replaced by `constant_delta_interval` where a binary score's deltas are all equal (a t-interval
    would have zero width there, claiming a certainty 16 prompts cannot give)."""
    deltas = np.asarray(deltas, dtype=np.float64)
    low, high = t_intervals(deltas, confidence)
    count = deltas.shape[-1]
    if count < 2:
        return low, high
    constant = (np.ptp(deltas, axis=-1) == 0.0) & np.asarray(binary)
    if np.any(constant):
        exact_low, exact_high = constant_delta_interval(deltas[..., 0], count, confidence)
        low, high = np.where(constant, exact_low, low), np.where(constant, exact_high, high)
    # A change of a 0/1 score lies in [-1, 1]: a t-interval reaching past that says nothing more.
    bounded = np.asarray(binary)
    return np.where(bounded, np.maximum(low, -1.0), low), np.where(bounded, np.minimum(high, 1.0), high)


@functools.lru_cache(maxsize=EXACT_FLIPS_UP_TO + 1)
def _all_signs(count: int) -> np.ndarray:
    """[2^count, count]: every pattern of +-1 (bit k of row r is the sign of delta k)."""
    rows = np.arange(2 ** count, dtype=np.int64)[:, None]
    return 1.0 - 2.0 * ((rows >> np.arange(count)) & 1).astype(np.float64)


def sign_flip_p_value(deltas: Sequence[float] | np.ndarray, *, seed: int = DEFAULT_SEED,
                      monte_carlo: int = MONTE_CARLO_FLIPS) -> tuple[float | None, str]:
    """Two-sided sign-flip permutation p-value of H0 "deltas symmetric about 0", and how it was computed.

    Statistic |sum d|. Zeros do not change under a flip, so they are dropped before enumerating
    (the p-value is the same). All 2^n patterns for n <= 16 nonzero deltas; beyond, a seeded Monte
    Carlo with the observed pattern counted, p = (1 + hits) / (1 + draws). None when every delta is 0.
    """
    array = _finite_array(deltas, "sign_flip_p_value")
    nonzero = array[array != 0.0]
    if nonzero.size == 0:
        return None, "no nonzero delta"
    observed = abs(nonzero.sum())
    slack = TIE_TOLERANCE * max(1.0, float(np.abs(nonzero).sum()))
    if nonzero.size <= EXACT_FLIPS_UP_TO:
        signs = _all_signs(nonzero.size)
        hits = int((np.abs(signs @ nonzero) >= observed - slack).sum())
        return hits / signs.shape[0], "exact"
    rng = np.random.default_rng(seed)
    hits = 0
    for start in range(0, monte_carlo, 10_000):
        signs = rng.choice((-1.0, 1.0), size=(min(10_000, monte_carlo - start), nonzero.size))
        hits += int((np.abs(signs @ nonzero) >= observed - slack).sum())
    return (1 + hits) / (1 + monte_carlo), f"monte carlo ({monte_carlo} sign patterns, seed {seed})"


def is_binary(*arrays: np.ndarray) -> bool:
    """All values 0 or 1: an accuracy (a bool per video)."""
    return all(bool(np.all((array == 0.0) | (array == 1.0))) for array in arrays)


def _record(confidence: float, n_units: int, n_values: int, method: str) -> dict[str, Any]:
    return {"n": n_values, "n_prompts": n_units, "confidence": confidence, "method": method}


def mean_with_ci(values: Sequence[float] | np.ndarray, groups: Sequence[Any] | None = None, *,
                 confidence: float = DEFAULT_CONFIDENCE) -> dict[str, Any]:
    """{"mean", "ci_low", "ci_high", "n", "n_prompts", "confidence", "method"}: the mean over
    prompts of per-prompt means (equal to the mean over videos when every prompt has the same
    number of seeds) with a t-interval over prompts; no interval (None) from one prompt."""
    array = _finite_array(values, "mean_with_ci")
    units = group_means(array, groups)
    low, high = t_interval(units, confidence)
    if units.size >= 2 and np.ptp(units) == 0.0 and is_binary(array):
        # Every prompt scored the same c: as for a constant delta, a mean m < c makes that outcome at
        # most (m / c)^n likely, a mean m > c at most ((1 - m) / (1 - c))^n.
        edge = (1.0 - confidence) ** (1.0 / units.size)
        low, high = edge * units[0], 1.0 - edge * (1.0 - units[0])
    elif is_binary(array) and not math.isnan(low):  # an accuracy lies in [0, 1]
        low, high = max(low, 0.0), min(high, 1.0)
    return {"mean": float(units.mean()), "ci_low": None if math.isnan(low) else low,
            "ci_high": None if math.isnan(high) else high, **_record(confidence, units.size, array.size, METHOD)}


def paired_delta(base: Sequence[float] | np.ndarray, tuned: Sequence[float] | np.ndarray,
                 groups: Sequence[Any] | None = None, *, confidence: float = DEFAULT_CONFIDENCE,
                 seed: int = DEFAULT_SEED) -> dict[str, Any]:
    """Paired comparison of one per-video score: tuned - base, video i against video i, prompt = unit.

    ``groups`` names each pair's prompt (None: each pair is its own prompt). Returns base_mean,
    tuned_mean, mean_delta, ci_low / ci_high, p_value (sign-flip; None when no prompt changed),
    binary (0/1 scores: the delta is in percentage points), interval ("t" or "exact"), and the
    record (n videos, n_prompts, confidence, method, test). ``significant`` is left to `decide`,
    after the multiplicity correction.
    """
    base_array = _finite_array(base, "paired_delta base")
    tuned_array = _finite_array(tuned, "paired_delta tuned")
    if base_array.size != tuned_array.size:
        raise ValueError(f"paired_delta: {base_array.size} base values vs {tuned_array.size} tuned values")
    deltas = group_means(tuned_array - base_array, groups)
    binary = is_binary(base_array, tuned_array)
    low, high = (float(x) for x in paired_intervals(deltas, binary, confidence))
    constant = deltas.size >= 2 and binary and np.ptp(deltas) == 0.0
    interval = "exact (every prompt's delta is the same)" if constant else "t"
    p_value, how = sign_flip_p_value(deltas, seed=seed)
    return {
        "base_mean": float(group_means(base_array, groups).mean()),
        "tuned_mean": float(group_means(tuned_array, groups).mean()),
        "mean_delta": float(deltas.mean()),
        "ci_low": None if math.isnan(low) else low,
        "ci_high": None if math.isnan(high) else high,
        "p_value": p_value,
        "p_method": how,
        "binary": binary,
        "interval": interval,
        "test": TEST,
        **_record(confidence, int(deltas.size), int(base_array.size), PAIRED_METHOD),
    }


def crossed_delta(deltas: np.ndarray, *, binary: bool = False, confidence: float = DEFAULT_CONFIDENCE
                  ) -> dict[str, Any]:
    """Mean delta over R training runs x P prompts (``deltas[r, p]``: run r's per-prompt mean delta).

    Model: d[r, p] = mu + run_r + prompt_p + e[r, p], all effects random. The grand mean's variance
    is var(run)/R + var(prompt)/P + var(e)/(RP) = (MS_run + MS_prompt - MS_e) / (RP) from the
    two-way ANOVA mean squares, with Satterthwaite's degrees of freedom. Runs that differ widen
    the interval (a t over prompts of run-averaged deltas would not see them); with one run it is
    the prompt-level t-interval. ``binary`` (a 0/1 score): as in `paired_intervals`, the exact
    interval where every delta is the same, and the interval kept within [-1, 1].
    """
    from scipy.stats import t as student_t  # deferred: scipy (~0.7 s); train --help imports this module

    _check_confidence(confidence)
    matrix = np.asarray(deltas, dtype=np.float64)
    runs, prompts = matrix.shape
    mean = float(matrix.mean())
    if runs < 2 or prompts < 2:
        low, high = t_interval(matrix.reshape(-1) if runs < 2 else matrix.mean(axis=1), confidence)
        variance, df = math.nan, math.nan
    else:
        run_means, prompt_means = matrix.mean(axis=1), matrix.mean(axis=0)
        ms_run = prompts * float(((run_means - mean) ** 2).sum()) / (runs - 1)
        ms_prompt = runs * float(((prompt_means - mean) ** 2).sum()) / (prompts - 1)
        residual = matrix - run_means[:, None] - prompt_means[None, :] + mean
        ms_error = float((residual ** 2).sum()) / ((runs - 1) * (prompts - 1))
        # Negative variance-component estimates are set to zero: the combination never drops
        # below the larger of the two main-effect mean squares.
        combined = max(ms_run + ms_prompt - ms_error, ms_run, ms_prompt)
        variance = combined / (runs * prompts)
        terms = ms_run ** 2 / (runs - 1) + ms_prompt ** 2 / (prompts - 1) + ms_error ** 2 / ((runs - 1) * (prompts - 1))
        df = combined ** 2 / terms if terms > 0 else math.inf
        half = float(student_t.ppf(0.5 + confidence / 2, df)) * math.sqrt(variance) if variance > 0 else 0.0
        low, high = mean - half, mean + half
    if runs < 2:  # one run: the single-run comparison's own test on its per-prompt deltas
        p_value, test = sign_flip_p_value(matrix.reshape(-1))[0], TEST
    else:
        p_value = float(2 * student_t.sf(abs(mean) / math.sqrt(variance), df)) if variance > 0 else None
        test = CROSSED_TEST
    method = CROSSED_METHOD if runs >= 2 else PAIRED_METHOD
    if binary and prompts >= 2 and np.ptp(matrix) == 0.0:  # every run and prompt moved the same way
        low, high = (float(x) for x in constant_delta_interval(float(matrix.flat[0]), prompts, confidence))
        method = "exact (every prompt's delta is the same)"
    elif binary and not math.isnan(low):
        low, high = max(low, -1.0), min(high, 1.0)
    return {"mean_delta": mean, "ci_low": None if math.isnan(low) else low, "ci_high": None if math.isnan(high) else high,
            "p_value": p_value, "df": df, "runs": runs, "n_prompts": prompts, "confidence": confidence,
            "method": method, "test": test}


def holm(p_values: Sequence[float | None]) -> list[float | None]:
    """Holm's step-down adjusted p-values (family-wise error), None entries passed through."""
    present = [(p, i) for i, p in enumerate(p_values) if p is not None]
    adjusted: list[float | None] = [None] * len(p_values)
    running = 0.0
    for rank, (p, index) in enumerate(sorted(present)):
        running = max(running, min(1.0, (len(present) - rank) * p))
        adjusted[index] = running
    return adjusted


def benjamini_hochberg(p_values: Sequence[float | None]) -> list[float | None]:
    """Benjamini-Hochberg q-values (false discovery rate), None entries passed through."""
    present = sorted(((p, i) for i, p in enumerate(p_values) if p is not None), reverse=True)
    adjusted: list[float | None] = [None] * len(p_values)
    running = 1.0
    for rank, (p, index) in zip(range(len(present), 0, -1), present, strict=True):
        running = min(running, len(present) * p / rank)
        adjusted[index] = running
    return adjusted


def decide(row: dict[str, Any], adjusted_p: float | None, *, alpha: float = DEFAULT_ALPHA) -> bool:
    """Significant: adjusted p below alpha and the interval excludes 0 (both must agree)."""
    low, high = row.get("ci_low"), row.get("ci_high")
    if adjusted_p is None or low is None or high is None:
        return False
    return adjusted_p < alpha and not (low <= 0.0 <= high)

