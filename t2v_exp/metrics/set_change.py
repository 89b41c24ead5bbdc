"""The paired change of a set metric (FVD, KVD) between a base and a fine-tuned evaluation.

A set metric is one number per evaluation, so the per-video paired test of comparison.py does
not apply; and an interval of each side on its own says little about their difference (an FVD
percentile bootstrap over videos even excludes its own estimate: resampling with replacement
duplicates videos and shifts the statistic). What answers "did fine-tuning move the
distribution?" is an interval of the *difference*, from the detector features both evaluations
saved (fvd_features.npz):

- Generated rows are paired by (prompt, seed) through each report's per-video record (the npz's
  generated_names are the video files, in order).
- Each bootstrap replicate resamples PROMPTS with replacement, jointly for base and tuned (all
  seeds of a drawn prompt together: the prompt is the unit, METRICS.md "Statistics"), and the
  reference rows with replacement, once, used by both sides. A duplicated video shifts FVD in
  the same direction on both sides, so in the difference the duplication bias largely cancels.
  KVD's within-set sums leave out pairs of videos of one prompt (its seeds, and the copies a
  resample makes): those are not independent draws, and without them each resample's KVD is an
  unbiased U-statistic, so the difference of two is unbiased too.
- The interval is the percentile interval of the replicate differences (a "basic" interval,
  reflected around the estimate, covered less in the simulations: 0.90-0.95).
- Beside each change, a noise floor: the metric between two disjoint halves of the reference set
  (mean over random splits), i.e. what two samples of the same real distribution score at this N.
  Each half has N/2 clips, so FVD's floor is above an N-vs-N value: a scale, not a threshold.

What the simulations of tests/test_set_change.py show (8 prompts x 2 seeds, 16 reference clips,
64-d Gaussian features, 300 evaluations): when base and tuned differ in their means, the 95%
interval covers the known population change 0.96 of the time for FVD and 0.93 for KVD. When
their covariances differ too (tuned 1.2x as spread), KVD still covers (0.94), but FVD's
small-N bias no longer cancels (an estimated change of ~16 for a true ~5): its interval covers
the change of FVD's expectation at this N (0.95), not the population change (0.41). Hence an FVD
change from fewer than 256 videos is flagged indicative_only, and KVD's is the one to read at
small N. Cost: the Fréchet distance of a resample is computed from the Gram matrix of the
features (||mu1 - mu2||^2, traces, and tr sqrt(S1 S2) as the nuclear norm of the centred
cross-Gram block, exact when N <= d), so 1000 replicates at N = 16..256 take seconds; sets
larger than d use the d x d covariance form.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .frechet import SMALL_SAMPLE_WARNING_BELOW, trace_sqrt_product
from .kvd import DEGREE

log = logging.getLogger(__name__)
RESAMPLES = 1000
SEED = 0
CONFIDENCE = 0.95
NOISE_FLOOR_SPLITS = 20
MIN_PROMPTS = 6  # fewer distinct units than this and a bootstrap over them has too few distinct resamples
GRAM_CELLS_PER_CHUNK = 20_000_000  # replicate chunk size: resampled Gram blocks held at once (~160 MB float64)
METHOD = ("percentile bootstrap of tuned - base: prompts resampled with replacement jointly for base and tuned "
          "(all seeds of a prompt together), reference rows resampled with replacement in the same replicate")
NOISE_METHOD = "{metric} between two disjoint halves of the reference set (mean over {splits} random splits)"


class SetChangeUnavailable(Exception):
    """The saved features do not allow a paired set-metric change; the message says why."""


# -- the statistics, from Gram matrices ------------------------------------------------------------
def _centered(cross_gram: torch.Tensor) -> torch.Tensor:
    """A1 A2^T of the centred rows, from X1 X2^T: H X1 X2^T H with H = I - 11^T/n on each side."""
    cross_gram = cross_gram - cross_gram.mean(-2, keepdim=True)
    return cross_gram - cross_gram.mean(-1, keepdim=True)


def frechet_from_gram(g11: torch.Tensor, g22: torch.Tensor, g12: torch.Tensor, ddof: int) -> torch.Tensor:
    """Fréchet distance from the Gram blocks of two row sets ([..., m, m], [..., n, n], [..., m, n]).

    The nonzero eigenvalues of S1 S2 are the squared singular values of A1 A2^T / sqrt((m-ddof)(n-ddof)),
    A the centred rows, so tr sqrt(S1 S2) is the nuclear norm of the centred cross-Gram block.
    """
    m, n = g11.shape[-1], g22.shape[-1]
    mean_term = g11.mean((-1, -2)) + g22.mean((-1, -2)) - 2.0 * g12.mean((-1, -2))
    trace1 = (g11.diagonal(dim1=-2, dim2=-1).sum(-1) - m * g11.mean((-1, -2))) / (m - ddof)
    trace2 = (g22.diagonal(dim1=-2, dim2=-1).sum(-1) - n * g22.mean((-1, -2))) / (n - ddof)
    nuclear = torch.linalg.svdvals(_centered(g12)).sum(-1)
    return mean_term + trace1 + trace2 - 2.0 * nuclear / ((m - ddof) * (n - ddof)) ** 0.5


def frechet_from_rows(first: torch.Tensor, second: torch.Tensor, ddof: int) -> torch.Tensor:
    """The same in feature space ([..., m, d], [..., n, d]): d x d covariances, for sets larger than d."""
    mu1, mu2 = first.mean(-2), second.mean(-2)
    a1, a2 = first - mu1.unsqueeze(-2), second - mu2.unsqueeze(-2)
    s1 = a1.transpose(-1, -2) @ a1 / (first.shape[-2] - ddof)
    s2 = a2.transpose(-1, -2) @ a2 / (second.shape[-2] - ddof)
    traces = s1.diagonal(dim1=-2, dim2=-1).sum(-1) + s2.diagonal(dim1=-2, dim2=-1).sum(-1)
    cross = torch.stack([trace_sqrt_product(x, y) for x, y in zip(s1.reshape(-1, *s1.shape[-2:]),
                                                                    s2.reshape(-1, *s2.shape[-2:]), strict=True)])
    return (mu1 - mu2).pow(2).sum(-1) + traces - 2.0 * cross.reshape(traces.shape)


def kvd_from_gram(g11: torch.Tensor, g22: torch.Tensor, g12: torch.Tensor, dim: int,
                  ids1: torch.Tensor | None = None, ids2: torch.Tensor | None = None) -> torch.Tensor:
    """Unbiased poly-kernel MMD² from Gram blocks. ``ids``: the original row of each position; pairs of
    positions holding copies of one row are left out of the within-set sums (not only i == j)."""
    k11, k22, k12 = ((g / dim + 1.0) ** DEGREE for g in (g11, g22, g12))
    terms = []
    for kernel, ids in ((k11, ids1), (k22, ids2)):
        count = kernel.shape[-1]
        if ids is None:
            ids = torch.arange(count).expand(*kernel.shape[:-2], count)
        distinct = (ids.unsqueeze(-1) != ids.unsqueeze(-2)).to(kernel.dtype)
        terms.append((kernel * distinct).sum((-1, -2)) / distinct.sum((-1, -2)).clamp(min=1))
    return terms[0] + terms[1] - 2.0 * k12.mean((-1, -2))


def _block(gram: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """gram[rows[b], :][:, cols[b]] for each replicate b: [B, len(rows), len(cols)]."""
    return gram[rows.unsqueeze(-1), cols.unsqueeze(-2)]


# -- the replicates --------------------------------------------------------------------------------
def _prompt_draws(groups: list[np.ndarray], resamples: int, seed: int) -> list[np.ndarray]:
    """Per replicate, the pair rows of `len(groups)` prompts drawn with replacement (a prompt's rows together)."""
    draws = np.random.default_rng(seed).integers(0, len(groups), size=(resamples, len(groups)))
    return [np.concatenate([groups[g] for g in row]) for row in draws]


def _statistics(gram: torch.Tensor, offsets: dict[str, int], dim: int, pair_rows: torch.Tensor,
                ref_rows: torch.Tensor, ddof: int, features: torch.Tensor | None,
                prompt_of: torch.Tensor) -> dict[str, torch.Tensor]:
    """FVD and KVD of base and tuned against the reference for a batch of index sets [B, m], [B, n].

    ``features`` given: FVD in feature space (sets larger than d); else from the Gram blocks.
    ``prompt_of`` [P]: each pair's prompt; KVD leaves pairs of videos of one prompt (seeds of it,
    or copies from drawing it twice) out of its within-set sums: they are not independent draws.
    """
    ref = ref_rows + offsets["reference"]
    g_rr = _block(gram, ref, ref)
    out = {}
    for side in ("base", "tuned"):
        rows = pair_rows + offsets[side]
        g_ss, g_sr = _block(gram, rows, rows), _block(gram, rows, ref)
        if features is None:
            out[f"fvd_{side}"] = frechet_from_gram(g_ss, g_rr, g_sr, ddof)
        else:
            out[f"fvd_{side}"] = frechet_from_rows(features[rows], features[ref], ddof)
        out[f"kvd_{side}"] = kvd_from_gram(g_ss, g_rr, g_sr, dim, prompt_of[pair_rows], ref_rows)
    return out


def replicate_statistics(base: torch.Tensor, tuned: torch.Tensor, reference: torch.Tensor,
                         groups: list[np.ndarray], *, resamples: int, seed: int, ddof: int) -> dict[str, np.ndarray]:
    """FVD/KVD of base and tuned in each bootstrap replicate: {"fvd_base": [resamples], ...}.

    base/tuned: [P, d] rows paired by index; groups: the pair rows of each prompt.
    """
    features = torch.cat([base, tuned, reference]).double()
    gram = features @ features.T
    offsets = {"base": 0, "tuned": base.shape[0], "reference": 2 * base.shape[0]}
    pair_sets = _prompt_draws(groups, resamples, seed)
    ref_sets = np.random.default_rng(seed + 1).integers(0, reference.shape[0], size=(resamples, reference.shape[0]))
    by_length: dict[int, list[int]] = {}
    for index, rows in enumerate(pair_sets):  # unequal seeds per prompt: replicate sizes differ
        by_length.setdefault(len(rows), []).append(index)
    results = {f"{m}_{s}": np.empty(resamples) for m in ("fvd", "kvd") for s in ("base", "tuned")}
    dim, prompt_of = features.shape[1], prompt_index(groups, base.shape[0])
    for length, indices in by_length.items():
        in_feature_space = min(length, reference.shape[0]) > dim
        chunk = max(1, GRAM_CELLS_PER_CHUNK // (length + reference.shape[0]) ** 2)
        for start in range(0, len(indices), chunk):
            picked = indices[start : start + chunk]
            pair_rows = torch.from_numpy(np.stack([pair_sets[i] for i in picked]))
            stats = _statistics(gram, offsets, dim, pair_rows, torch.from_numpy(ref_sets[picked]), ddof,
                                features if in_feature_space else None, prompt_of)
            for key, values in stats.items():
                results[key][picked] = values.numpy()
    return results


def prompt_index(groups: list[np.ndarray], count: int) -> torch.Tensor:
    """[count] the prompt (group) of each pair row."""
    prompt_of = torch.full((count,), -1, dtype=torch.long)
    for number, rows in enumerate(groups):
        prompt_of[torch.as_tensor(rows, dtype=torch.long)] = number
    return prompt_of


def point_statistics(base: torch.Tensor, tuned: torch.Tensor, reference: torch.Tensor, ddof: int,
                     groups: list[np.ndarray] | None = None) -> dict[str, float]:
    """The same statistics on the sets as they are (no resampling); ``groups`` as in replicate_statistics."""
    features = torch.cat([base, tuned, reference]).double()
    offsets = {"base": 0, "tuned": base.shape[0], "reference": 2 * base.shape[0]}
    pair_rows, ref_rows = torch.arange(base.shape[0])[None], torch.arange(reference.shape[0])[None]
    in_feature_space = min(base.shape[0], reference.shape[0]) > features.shape[1]
    groups = groups if groups is not None else [np.array([row]) for row in range(base.shape[0])]
    stats = _statistics(features @ features.T, offsets, features.shape[1], pair_rows, ref_rows, ddof,
                        features if in_feature_space else None, prompt_index(groups, base.shape[0]))
    return {key: float(value[0]) for key, value in stats.items()}


def noise_floor(reference: torch.Tensor, ddof: int, splits: int = NOISE_FLOOR_SPLITS,
                seed: int = SEED) -> dict[str, float | None]:
    """FVD and KVD between two disjoint halves of the reference rows, mean over seeded random splits."""
    count = reference.shape[0]
    half = count // 2
    if half < max(2, ddof + 1):
        return {"fvd": None, "kvd": None, "n_per_half": half}
    features = reference.double()
    gram = features @ features.T
    rng = np.random.default_rng(seed)
    order = torch.from_numpy(np.stack([rng.permutation(count) for _ in range(splits)]))
    first, second = order[:, :half], order[:, half : 2 * half]
    g11, g22, g12 = _block(gram, first, first), _block(gram, second, second), _block(gram, first, second)
    if half > features.shape[1]:
        fvd = frechet_from_rows(features[first], features[second], ddof)
    else:
        fvd = frechet_from_gram(g11, g22, g12, ddof)
    kvd = kvd_from_gram(g11, g22, g12, features.shape[1])
    return {"fvd": float(fvd.mean()), "kvd": float(kvd.mean()), "n_per_half": half}


# -- from two evaluations --------------------------------------------------------------------------
def _video_key(video: dict[str, Any]) -> tuple:
    """(prompt, seed), as comparison.video_key pairs videos (a folder video without a seed: its file)."""
    if video.get("seed") is not None:
        return ("seed", video.get("prompt"), int(video["seed"]))
    return ("file", video.get("prompt"), video.get("file"))


def _read_side(report: dict[str, Any], side: str) -> dict[str, Any]:
    """Features, row keys and protocol of one evaluation; SetChangeUnavailable says what is missing."""
    entry = (report.get("metrics") or {}).get("fvd") or {}
    if entry.get("status") != "ok":
        raise SetChangeUnavailable(f"the {side} evaluation has no FVD score (status {entry.get('status', 'absent')})")
    if not entry.get("features_file"):
        raise SetChangeUnavailable(f"the {side} evaluation saved no FVD features (metric_settings.fvd.save_features "
                                   "was off, or it predates saving them by default): re-run it")
    path = Path(report.get("out_dir") or ".") / entry["features_file"]
    if not path.is_file():
        raise SetChangeUnavailable(f"the {side} evaluation's FVD features file {path} does not exist")
    with np.load(path) as saved:  # plain arrays: no pickle
        generated, reference = saved["generated"], saved["reference"]
        names, reference_names = [str(n) for n in saved["generated_names"]], [str(n) for n in saved["reference_names"]]
    videos = report.get("videos") or []
    by_file = {video.get("file"): video for video in videos}
    if not names and len(videos) == generated.shape[0]:
        names = [video.get("file") for video in videos]  # the npz lost its names: the record's order is the file order
    if len(names) != generated.shape[0] or any(name not in by_file for name in names):
        raise SetChangeUnavailable(f"the {side} evaluation's feature rows cannot be matched to its videos "
                                   f"({len(names)} names for {generated.shape[0]} rows)")
    keys = [_video_key(by_file[name]) for name in names]
    return {"generated": generated, "reference": reference, "reference_names": reference_names,
            "rows": {key: row for row, key in enumerate(keys)}, "protocol": entry.get("protocol") or {}}


def paired_inputs(base_report: dict[str, Any], tuned_report: dict[str, Any]) -> dict[str, Any]:
    """Base and tuned generated rows paired by (prompt, seed), grouped by prompt, and the reference rows."""
    base, tuned = _read_side(base_report, "base"), _read_side(tuned_report, "tuned")
    for field in ("detector_sha256", "frames_per_clip", "resize_mode", "ddof", "feature_dim"):
        if base["protocol"].get(field) != tuned["protocol"].get(field):
            raise SetChangeUnavailable(f"FVD {field} differs (base {base['protocol'].get(field)!r}, "
                                       f"tuned {tuned['protocol'].get(field)!r})")
    if base["reference_names"] != tuned["reference_names"] or base["reference"].shape != tuned["reference"].shape:
        raise SetChangeUnavailable("base and tuned were scored against different reference clips")
    keys = [key for key in tuned["rows"] if key in base["rows"]]
    groups: dict[Any, list[int]] = {}
    for pair, key in enumerate(keys):
        groups.setdefault(key[1], []).append(pair)
    if len(groups) < 2 or base["reference"].shape[0] < 4:
        raise SetChangeUnavailable(f"{len(keys)} paired videos of {len(groups)} prompts and "
                                   f"{base['reference'].shape[0]} reference clips: too few for a set-metric change")
    return {"base": torch.from_numpy(base["generated"][[base["rows"][k] for k in keys]]).double(),
            "tuned": torch.from_numpy(tuned["generated"][[tuned["rows"][k] for k in keys]]).double(),
            "reference": torch.from_numpy(base["reference"]).double(),
            "groups": [np.array(rows) for rows in groups.values()],
            "ddof": int(base["protocol"].get("ddof", 1)), "n_pairs": len(keys)}


def set_metric_changes_with_reason(base_report: dict[str, Any], tuned_report: dict[str, Any], *,
                                   resamples: int = RESAMPLES, seed: int = SEED,
                                   confidence: float = CONFIDENCE) -> tuple[dict[str, dict], str | None]:
    """(rows, None), or ({}, why not) when the saved features do not allow the change."""
    try:
        inputs = paired_inputs(base_report, tuned_report)
    except SetChangeUnavailable as missing:
        return {}, str(missing)
    base, tuned, reference, groups, ddof = (inputs[k] for k in ("base", "tuned", "reference", "groups", "ddof"))
    point = point_statistics(base, tuned, reference, ddof, groups)
    replicates = replicate_statistics(base, tuned, reference, groups, resamples=resamples, seed=seed, ddof=ddof)
    floor = noise_floor(reference, ddof, seed=seed)
    tail = (1.0 - confidence) / 2.0
    rows = {}
    for metric in ("fvd", "kvd"):
        deltas = replicates[f"{metric}_tuned"] - replicates[f"{metric}_base"]
        low, high = (float(v) for v in np.quantile(deltas, [tail, 1.0 - tail]))
        small = min(inputs["n_pairs"], reference.shape[0]) < SMALL_SAMPLE_WARNING_BELOW
        rows[metric] = {
            "kind": "set_change", "base": point[f"{metric}_base"], "tuned": point[f"{metric}_tuned"],
            "delta": point[f"{metric}_tuned"] - point[f"{metric}_base"], "ci_low": low, "ci_high": high,
            "confidence": confidence, "method": METHOD, "resamples": resamples, "seed": seed,
            "n_prompts": len(groups), "n_pairs": inputs["n_pairs"], "n_reference": int(reference.shape[0]),
            "significant": not (low <= 0.0 <= high),
            "noise_floor": {"value": floor[metric], "n_per_half": floor["n_per_half"],
                            "method": NOISE_METHOD.format(metric=metric.upper(), splits=NOISE_FLOOR_SPLITS)},
            # FVD's small-N bias cancels in the difference only for similar covariances (module doc);
            # KVD's estimates are unbiased, so only too few prompts make its interval indicative.
            "indicative_only": len(groups) < MIN_PROMPTS or (metric == "fvd" and small),
        }
    return rows, None


def set_metric_changes(base_report: dict[str, Any], tuned_report: dict[str, Any], **options: Any) -> dict[str, dict]:
    """rows["fvd"], rows["kvd"]: the paired change of each set metric (module doc); {} when the two
    evaluations' saved features do not allow it (the reason is logged; set_metric_changes_with_reason
    returns it)."""
    rows, reason = set_metric_changes_with_reason(base_report, tuned_report, **options)
    if reason:
        log.info("no set-metric change: %s", reason)
    return rows
