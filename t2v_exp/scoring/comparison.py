"""Base vs fine-tuned: refuse to compare evaluations that are not comparable, then pair and test.

Two evaluations are comparable only when they scored the same videos' counterparts under the same
protocol: same (prompt, seed) list, same frames and resolution, same sampler settings, same metric
settings and the same detector files. `differences` lists every field that differs (with both
values); `compare` refuses on any of them and otherwise pairs the videos by (prompt, seed) - never
by row order, so a reordered prompt file or a different folder listing cannot shift the pairs.

- per-video scores (temporal_ssim, clip_sim, ...): `stats.paired_delta` with the prompt as the unit:
  each prompt's seeds are averaged, then the mean delta over prompts gets a t-interval and an exact
  sign-flip p-value. Changes are in the score's own points (percentage points for accuracies): a %
  change of a bounded score (0.06 -> 0.38 is "+500%") says more about the base than the change.
- set scores (FVD, KVD): the paired change from the saved detector features (`metrics.set_change`:
  prompts resampled jointly for both sides, beside a reference-vs-reference noise floor); other set
  scores (IS) show both values and the delta (a % change: they are ratio-scale), without a test.
- multiplicity: one primary score (``evaluation.primary``) carries the confirmatory claim; every
  other paired score gets a Benjamini-Hochberg q-value and is exploratory. A sweep adjusts the
  primary across its models with Holm (`reporting`). "Significant" needs the adjusted p below
  alpha and the interval excluding 0.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

PAIRING = "(prompt, seed)"
# Fields of a metrics.json that decide which videos were generated and how they were decoded.
VIDEO_FIELDS = ("num_videos", "frames", "resolution")
# Sampler settings: only checked when both sides recorded them (a folder of videos cannot know them).
SAMPLER_FIELDS = ("num_inference_steps", "guidance_scale")
# Metric settings that say where a file is or how fast to compute, not what is computed. The identity
# of a weight file is its protocol's detector_sha256, so the same file in two places still compares.
# bootstrap_*: the per-set intervals FVD and IS no longer compute (an older baseline still compares).
IGNORED_SETTINGS = {"batch_size", "device", "cache_dir", "detector_path", "weights_path", "model",
                    "expected_sha256", "values_per_chunk", "save_features", "bootstrap_resamples", "bootstrap_seed",
                    "bootstrap_confidence"}
# Protocol fields that define a metric's number (a whitelist: result fields such as
# psnr_capped_pairs differ between models by design and must not block a comparison).
PROTOCOL_FIELDS = ("detector", "detector_sha256", "detector_resolution", "resize_mode", "interpolation",
                   "frames_per_clip", "frames_per_video", "input_range", "quantize_uint8", "ddof", "feature_dim",
                   "data_range", "psnr_cap_db", "splits", "split_seed", "num_reference_videos",
                   "detector_call_kwargs", "text_truncation", "aggregation", "ssim", "motion", "version",
                   "temporal_fill", "kvd_kernel", "kvd_estimator")
FVD_RELIABLE_N = 256
AUTO_PRIMARY = ("shapes_oracle/direction_ok", "clip_score/clip_sim", "fvd/fvd")  # primary=auto: the first present
PROMPTS_HINT = ("prompts come from prompts=FILE or the dataset's captions: same dataset and split? the synthetic "
                "shapes dataset is seeded with dataset.seed, which defaults to the training seed in a run but to "
                "the evaluation seed in python -m t2v_exp.evaluate")
SHOWN_ITEMS = 4  # list values in a refusal message: the first few, then how many more


class IncomparableEvaluations(ValueError):
    """Base and fine-tuned evaluations differ in something that decides the numbers."""

    def __init__(self, differences: list[dict[str, Any]], base: str, tuned: str):
        self.differences = differences
        lines = [f"- {d['field']}: base {_show(d['base'])}, tuned {_show(d['tuned'])}"
                 + (f" ({d['hint']})" if d.get("hint") else "") for d in differences]
        super().__init__(
            f"refusing to compare {tuned} with baseline {base}: they differ in {len(differences)} field(s) that "
            "decide the numbers:\n" + "\n".join(lines) + "\nRe-run one evaluation with the other's settings "
            "(same prompts, num_videos, seeds_per_prompt, seed, model.num_frames/height/width, "
            "num_inference_steps, guidance_scale, metric_settings and weight files).")


def _show(value: Any) -> str:
    if isinstance(value, list) and len(value) > SHOWN_ITEMS:
        head = ", ".join(repr(v) for v in value[:SHOWN_ITEMS])
        return f"[{head}, ... ({len(value) - SHOWN_ITEMS} more, {len(value)} in all)]"
    return "not recorded" if value is None else repr(value)


# -- pairing keys ----------------------------------------------------------------------------------
def video_key(video: dict[str, Any]) -> tuple:
    """(prompt, seed); a folder video without a known seed pairs by its file name instead."""
    if video.get("seed") is not None:
        return ("seed", video.get("prompt"), int(video["seed"]))
    return ("file", video.get("prompt"), video.get("file"))


def keyed_videos(report: dict[str, Any]) -> dict[tuple, dict[str, Any]]:
    videos: dict[tuple, dict[str, Any]] = {}
    for video in report.get("videos") or []:
        key = video_key(video)
        if key in videos:
            raise ValueError(f"two videos share prompt {key[1]!r} and seed/file {key[2]!r} "
                             f"({videos[key].get('file')}, {video.get('file')}): they cannot be paired")
        videos[key] = video
    return videos


# -- what must match -------------------------------------------------------------------------------
def _ok(report: dict, name: str) -> bool:
    return (report.get("metrics") or {}).get(name, {}).get("status") == "ok"


def compared_metrics(base: dict, tuned: dict) -> list[str]:
    """Metrics that scored on both sides, in the fine-tuned evaluation's order."""
    return [name for name in (tuned.get("metrics") or {}) if _ok(tuned, name) and _ok(base, name)]


def _flatten(value: Any, prefix: str) -> dict[str, Any]:
    if isinstance(value, dict):
        flat: dict[str, Any] = {}
        for key, item in value.items():
            flat.update(_flatten(item, f"{prefix}.{key}"))
        return flat
    return {prefix: value}


def _diff(field: str, base: Any, tuned: Any) -> list[dict[str, Any]]:
    return [] if base == tuned else [{"field": field, "base": base, "tuned": tuned}]


def differences(base: dict[str, Any], tuned: dict[str, Any], *, plan_only: bool = False) -> list[dict[str, Any]]:
    """Every field that makes the two evaluations incomparable, as {"field", "base", "tuned"}.

    ``plan_only`` checks just what is known before generating (prompts, seeds, N, sampler,
    metric settings), so the entrypoint can refuse before spending minutes on generation.
    """
    if not base.get("videos"):
        return [{"field": "videos", "base": None, "tuned": f"{len(tuned.get('videos') or [])} videos",
                 "hint": "the baseline's metrics.json has no per-video record (older t2v_exp): re-run it"}]
    found: list[dict[str, Any]] = []
    base_videos, tuned_videos = base["videos"], tuned.get("videos") or []
    found += _diff("num_videos", len(base_videos), len(tuned_videos))
    base_prompts = sorted({str(v.get("prompt")) for v in base_videos})
    tuned_prompts = sorted({str(v.get("prompt")) for v in tuned_videos})
    # The hint only where the prompt sets differ at equal size, not as a mere consequence of another N.
    hint = {"hint": PROMPTS_HINT} if len(base_prompts) == len(tuned_prompts) else {}
    found += [{**d, **hint} for d in _diff("prompts", base_prompts, tuned_prompts)]
    found += _diff("seeds", sorted(_seeds(base_videos)), sorted(_seeds(tuned_videos)))
    if not found:  # same prompts and seeds, but maybe combined differently
        base_keys, tuned_keys = set(keyed_videos(base)), set(keyed_videos(tuned))
        found += _diff("(prompt, seed) pairs", sorted(map(_key_text, base_keys - tuned_keys)),
                       sorted(map(_key_text, tuned_keys - base_keys)))
    for field in SAMPLER_FIELDS:
        if base.get(field) is not None and tuned.get(field) is not None:
            found += _diff(field, base[field], tuned[field])
    # Every section, not only those of requested metrics: a section may serve several metrics
    # (vbench's background_consistency also reads clip_score's), and unused ones rarely differ.
    base_settings = _flatten(base.get("metric_settings"), "metric_settings")
    tuned_settings = _flatten(tuned.get("metric_settings"), "metric_settings")
    for key in sorted(base_settings.keys() | tuned_settings.keys()):
        if key.rsplit(".", 1)[-1] not in IGNORED_SETTINGS:
            found += _diff(key, base_settings.get(key), tuned_settings.get(key))
    if plan_only:
        return found
    for field in VIDEO_FIELDS[1:]:
        found += _diff(field, base.get(field), tuned.get(field))
    for name in compared_metrics(base, tuned):
        base_protocol = base["metrics"][name].get("protocol") or {}
        tuned_protocol = tuned["metrics"][name].get("protocol") or {}
        for key in PROTOCOL_FIELDS:
            if key in base_protocol or key in tuned_protocol:
                found += _diff(f"{name} {key}", base_protocol.get(key), tuned_protocol.get(key))
    if "fvd" in compared_metrics(base, tuned):  # the same real clips on both sides, or FVDs differ by design
        found += _diff("reference videos", (base.get("reference") or {}).get("names"),
                       (tuned.get("reference") or {}).get("names"))
    return found


def _seeds(videos: Iterable[dict]) -> list:
    return [v.get("seed") for v in videos if v.get("seed") is not None]


def _key_text(key: tuple) -> str:
    return f"{key[1]!r} {'seed' if key[0] == 'seed' else 'file'} {key[2]}"


# -- the comparison --------------------------------------------------------------------------------
def per_video_values(video: dict, metric: str, score: str) -> float | None:
    value = ((video.get("scores") or {}).get(metric) or {}).get(score)
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float) and math.isfinite(value):
        return float(value)
    return None


def paired_scores(report: dict, metric: str) -> list[str]:
    """The numeric per-video scores of a metric (bools count: their mean is an accuracy)."""
    found: dict[str, None] = {}
    for video in report.get("videos") or []:
        for score, value in ((video.get("scores") or {}).get(metric) or {}).items():
            if isinstance(value, bool | int | float):
                found[score] = None
    return list(found)


def set_scores(entry: dict) -> list[str]:
    # *_std is the spread over IS splits: shown beside the score, but a delta of it means nothing.
    return [k for k, v in entry.items() if k not in ("seconds", "status") and not k.endswith("_std")
            and isinstance(v, int | float) and not isinstance(v, bool)]


def indicative_only(metric: str, entry: dict) -> bool:
    """The metric's own flag; for an FVD entry without one, N < 256 (METRICS.md: FVD's bias at small
    N is of the order of the differences being measured)."""
    flag = entry.get("indicative_only")
    if isinstance(flag, bool):
        return flag
    count = (entry.get("protocol") or {}).get("num_videos")
    return metric == "fvd" and isinstance(count, int) and count < FVD_RELIABLE_N


def set_ci(entry: dict, metric: str, score: str) -> dict | None:
    """The interval a set metric computed for itself: ``<score>_ci`` (fvd_ci), else ``<metric>_ci``
    (inception_score_ci) for the metric's first score."""
    ci = entry.get(f"{score}_ci")
    if ci is None and set_scores(entry)[:1] == [score]:
        ci = entry.get(f"{metric}_ci")
    return ci if isinstance(ci, dict) and "ci_low" in ci and "ci_high" in ci else None


def resolve_primary(requested: str | None, table: dict[str, dict[str, dict]]) -> str | None:
    """``evaluation.primary`` as metric/score; ``auto``: the first of AUTO_PRIMARY the table has
    (the shapes oracle's direction on shapes data, else CLIP similarity, else the FVD change)."""
    if requested and requested != "auto":
        return requested
    return next((name for name in AUTO_PRIMARY if name.split("/")[1] in table.get(name.split("/")[0], {})), None)


def adjust(table: dict[str, dict[str, dict]], primary: str | None) -> None:
    """Role, adjusted p and verdict of every row: the primary keeps its p (one comparison; a sweep
    applies Holm across its models), the others get BH q-values over this comparison's tests."""
    from ..metrics import stats  # deferred: metrics (torch); the sweep report reads comparisons without torch

    rows = [(f"{metric}/{score}", row) for metric, scores in table.items() for score, row in scores.items()]
    exploratory = [(name, row) for name, row in rows if name != primary]
    q_values = stats.benjamini_hochberg([row.get("p_value") for _, row in exploratory])
    for (_, row), q_value in zip(exploratory, q_values, strict=True):
        row.update(role="exploratory", q_value=q_value, significant=stats.decide(row, q_value))
    for name, row in rows:
        if name == primary:
            row.update(role="primary", adjusted_p=row.get("p_value"), significant=stats.decide(row, row.get("p_value")))


def compare(base: dict[str, Any], tuned: dict[str, Any], *, base_name: str = "baseline",
            tuned_name: str = "this evaluation", primary: str | None = "auto") -> tuple[dict, dict]:
    """(comparison, protocol): comparison[metric][score] is one row; raises IncomparableEvaluations."""
    from ..metrics import stats  # here, not at the top: the sweep report reads comparisons without torch

    found = differences(base, tuned)
    if found:
        raise IncomparableEvaluations(found, base_name, tuned_name)
    base_videos, tuned_videos = keyed_videos(base), keyed_videos(tuned)
    keys = [key for key in tuned_videos if key in base_videos]  # the fine-tuned evaluation's order
    table: dict[str, dict[str, dict]] = {}
    for metric in compared_metrics(base, tuned):
        scores = paired_scores(tuned, metric)
        for score in scores:
            pairs = [(per_video_values(base_videos[k], metric, score), per_video_values(tuned_videos[k], metric, score),
                      k[1]) for k in keys]
            usable = [pair for pair in pairs if pair[0] is not None and pair[1] is not None]
            if not usable:
                continue
            row = stats.paired_delta([b for b, _, _ in usable], [t for _, t, _ in usable], [p for _, _, p in usable])
            table.setdefault(metric, {})[score] = {"kind": "paired", **row, "unit": "pp" if row["binary"] else "points",
                                                   "pct_change": None,
                                                   "dropped_pairs": len(pairs) - len(usable)}
        if not scores:
            table.update(set_rows(base, tuned, metric, len(keys)))
    chosen = resolve_primary(primary, table)
    adjust(table, chosen)
    not_compared = {name: f"base {base.get('metrics', {}).get(name, {}).get('status', 'absent')}, "
                          f"tuned {tuned.get('metrics', {}).get(name, {}).get('status', 'absent')}"
                    for name in dict.fromkeys([*(tuned.get("metrics") or {}), *(base.get("metrics") or {})])
                    if name not in table}
    protocol = {"pairing": PAIRING, "unit": "prompt", "n_pairs": len(keys),
                "n_prompts": len({key[1] for key in keys}), "confidence": stats.DEFAULT_CONFIDENCE,
                "alpha": stats.DEFAULT_ALPHA, "method": stats.PAIRED_METHOD, "test": stats.TEST,
                "primary": chosen, "primary_requested": primary,
                "multiplicity": "primary: unadjusted within one comparison, Holm across the models of a sweep; "
                                "other scores: Benjamini-Hochberg q-values, exploratory",
                "significant": "adjusted p < alpha and the 95% interval excludes 0",
                "not_compared": not_compared}
    return table, protocol


# Set metrics whose change has a paired interval from the saved features (metrics.set_change).
FEATURE_CHANGES = ("fvd",)
RATIO_SCALE = ("fvd", "kvd", "inception_score")  # positive, ratio-scale: a % change means something


def set_rows(base: dict, tuned: dict, metric: str, count: int) -> dict[str, dict[str, dict]]:
    """Rows of a set metric: the paired change from features where it has one, else both values."""
    if metric in FEATURE_CHANGES:
        # deferred: set_change imports torch; the sweep report reads comparisons without it
        from ..metrics.set_change import set_metric_changes

        changes = set_metric_changes(base, tuned) or {}
        if changes:
            return {metric: {score: {"kind": "set_change", **row, "unit": "points",
                                     "pct_change": pct_change(row["base"], row["tuned"]) if metric in RATIO_SCALE else None}
                             for score, row in changes.items()}}
    base_entry, tuned_entry = base["metrics"][metric], tuned["metrics"][metric]
    rows = {}
    for score in set_scores(tuned_entry):
        if score not in base_entry:
            continue
        before, after = float(base_entry[score]), float(tuned_entry[score])
        rows[score] = {"kind": "set", "base": before, "tuned": after, "delta": after - before,
                       "pct_change": pct_change(before, after) if metric in RATIO_SCALE else None,
                       "indicative_only": indicative_only(metric, base_entry) or indicative_only(metric, tuned_entry),
                       "n": count}
    return {metric: rows} if rows else {}


def pct_change(before: float | None, after: float | None) -> float | None:
    """% change of a ratio-scale score; None where it is undefined."""
    if before is None or after is None or before == 0:
        return None
    return 100.0 * (after - before) / abs(before)


# -- printing --------------------------------------------------------------------------------------
def _num(value: float | None, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}g}"


def verdict(row: dict) -> str:
    """The words every surface uses: the primary score is a claim ("significantly higher"), any
    other score only "exploratory"; a set score without a test says so."""
    if row["kind"] == "set":
        return "indicative only (under 256 videos)" if row.get("indicative_only") else "set metric: no paired test"
    delta = row.get("mean_delta", row.get("delta")) or 0.0
    direction = "higher" if delta > 0 else "lower"
    if row.get("role") == "primary":
        return f"significantly {direction} (primary)" if row.get("significant") else "no significant change (primary)"
    if row["kind"] == "set_change":
        return f"exploratory: {direction}, interval excludes 0" if _excludes_zero(row) else "exploratory: no clear change"
    return f"exploratory: {direction}" if row.get("significant") else "exploratory: no clear change"


def _excludes_zero(row: dict) -> bool:
    low, high = row.get("ci_low"), row.get("ci_high")
    return low is not None and high is not None and not (low <= 0.0 <= high)


def change_text(row: dict, digits: int = 3) -> str:
    """``+31.2 pp [+12.5, +56.2]`` for accuracies (percentage points), ``+0.0167 [+0.0119, +0.0229]``
    in the score's own points otherwise, ``+12.3 [-4.0, +30.1] (+5.1%), noise floor 40.2`` for FVD."""
    scale, unit = (100.0, " pp") if row.get("unit") == "pp" else (1.0, "")
    delta = row.get("mean_delta", row.get("delta"))
    text = "n/a" if delta is None else _signed(delta * scale, digits) + unit
    if row.get("ci_low") is not None and row.get("ci_high") is not None:
        text += f" [{_signed(row['ci_low'] * scale, digits)}, {_signed(row['ci_high'] * scale, digits)}]"
    if row.get("pct_change") is not None:
        text += f" ({row['pct_change']:+.1f}%)"
    floor = row.get("noise_floor")
    if isinstance(floor, dict) and floor.get("value") is not None:
        text += f", noise floor {floor['value']:.{digits}g}"
    return text


def _signed(value: float, digits: int) -> str:
    return f"{value:+.{digits}g}" if abs(value) >= 1e-12 else "+0"


def p_text(row: dict) -> str:
    """The exact p and, beside it, the adjusted one (Holm for the primary, BH q for the others)."""
    if row.get("p_value") is None:
        return "-"
    adjusted = (f", Holm {row['adjusted_p']:.3g}" if row.get("role") == "primary" and row.get("holm") else
                f", q {row['q_value']:.3g}" if row.get("q_value") is not None else "")
    return f"{row['p_value']:.3g}{adjusted}"


def format_comparison(table: dict[str, dict[str, dict]]) -> str:
    """metric/score, base, tuned, change [95% CI], p (adjusted), verdict: one line per score, the
    primary first."""
    header = f"{'metric/score':<32}{'base':>10}{'tuned':>10}  {'change [95% CI]':<42}{'p':>18}  verdict"
    lines = [header, "-" * len(header)]
    rows = [(f"{metric}/{score}", row) for metric, scores in table.items() for score, row in scores.items()]
    rows.sort(key=lambda item: item[1].get("role") != "primary")
    for name, row in rows:
        base, tuned = row.get("base_mean", row.get("base")), row.get("tuned_mean", row.get("tuned"))
        lines.append(f"{name:<32}{_num(base):>10}{_num(tuned):>10}  {change_text(row):<42}{p_text(row):>18}  "
                     f"{verdict(row)}")
    return "\n".join(lines)
