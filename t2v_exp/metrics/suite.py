"""Run a selection of metrics on one batch of videos and report each with its protocol.

Every selected metric gets an entry, whatever happens to it:
- {"status": "ok", <scores>, "protocol": {...}, "seconds": ...}
- {"status": "skipped", "reason": ..., "fix": ...} when weights or inputs are missing,
- {"status": "error", "error": ..., "traceback": ...} when it failed.
One metric failing never stops the others, and a missing detector is never a silent zero.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from omegaconf import OmegaConf

from .clip_score import ClipScoreSettings, clip_score
from .detectors import MissingWeightsError, as_float_videos
from .fvd import FVDSettings, fvd, kvd_entry
from .inception_score import InceptionScoreSettings, inception_score
from .temporal import TemporalSettings, temporal_scores
from .vbench import VBenchSettings, background_consistency, temporal_flickering

log = logging.getLogger(__name__)

METRIC_NAMES = (
    "clip_score", "fvd", "kvd", "inception_score", "temporal", "shapes_oracle", "temporal_flickering",
    "background_consistency",
)
DEFAULT_METRICS = ("clip_score", "fvd", "inception_score", "temporal")


@dataclass
class MetricsSettings:
    """One section per metric; the config key of a field is `metrics.<section>.<field>`."""

    clip_score: ClipScoreSettings = field(default_factory=ClipScoreSettings)
    fvd: FVDSettings = field(default_factory=FVDSettings)  # also kvd's: same detector, same features
    inception_score: InceptionScoreSettings = field(default_factory=InceptionScoreSettings)
    temporal: TemporalSettings = field(default_factory=TemporalSettings)
    vbench: VBenchSettings = field(default_factory=VBenchSettings)  # temporal_flickering, background_consistency

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any] | None) -> MetricsSettings:
        """Build from a plain dict or an OmegaConf node; unknown keys are an error naming valid ones."""
        mapping = _plain(mapping) or {}
        sections = {section.name: section for section in fields(cls)}
        values = {}
        for name, section_values in mapping.items():
            if name not in sections:
                raise ValueError(f"unknown metrics setting section '{name}'; valid: {sorted(sections)}")
            section_cls = sections[name].default_factory
            valid = {item.name for item in fields(section_cls)}
            unknown = set(section_values) - valid
            if unknown:
                raise ValueError(f"unknown key(s) metric_settings.{name}.{sorted(unknown)}; valid: {sorted(valid)}")
            values[name] = section_cls(**section_values)
        return cls(**values)


def _plain(mapping: Any) -> Any:
    """OmegaConf nodes -> plain containers; anything else as it is."""
    if mapping is not None and type(mapping).__module__.startswith("omegaconf"):
        return OmegaConf.to_container(mapping, resolve=True)
    return mapping


class MetricSkipped(Exception):
    """A metric cannot run with what it was given; reported, not raised."""

    def __init__(self, reason: str, fix: str):
        super().__init__(reason)
        self.reason = reason
        self.fix = fix


def _run_temporal(videos, prompts, reference_videos, settings: MetricsSettings) -> dict[str, Any]:
    return temporal_scores(videos, settings.temporal)


def _run_clip_score(videos, prompts, reference_videos, settings: MetricsSettings) -> dict[str, Any]:
    if prompts is None:
        raise MetricSkipped("no prompts given", "pass prompts=[one string per video] to compute_metrics")
    return clip_score(videos, list(prompts), settings.clip_score)


def _require_reference(reference_videos, what: str) -> None:
    if reference_videos is None:
        raise MetricSkipped(
            f"{what} needs reference videos and none were given",
            "evaluate videos=DIR: add reference=DIR_OF_REAL_CLIPS; from Python: pass reference_videos=[N, F, C, H, W] "
            "to compute_metrics",
        )


def _run_fvd(videos, prompts, reference_videos, settings: MetricsSettings) -> dict[str, Any]:
    # The fvd entry carries KVD too (scores fvd, kvd, kvd_ci): the I3D features are the costly part.
    # Prompts make a prompt's seeds one unit of KVD's interval.
    _require_reference(reference_videos, "FVD")
    return fvd(videos, reference_videos, settings.fvd, prompts=None if prompts is None else list(prompts))


def _run_kvd(videos, prompts, reference_videos, settings: MetricsSettings) -> dict[str, Any]:
    # KVD on its own, under metric_settings.fvd; beside fvd on the same videos the features are reused.
    _require_reference(reference_videos, "KVD")
    return kvd_entry(videos, reference_videos, settings.fvd, prompts=None if prompts is None else list(prompts))


def _run_inception_score(videos, prompts, reference_videos, settings: MetricsSettings) -> dict[str, Any]:
    return inception_score(videos, settings.inception_score)


def _run_shapes_oracle(videos, prompts, reference_videos, settings: MetricsSettings) -> dict[str, Any]:
    # INTEGRATION POINT (shapes_oracle): t2v_exp/metrics/shapes_oracle.py is written separately.
    # Expected: shapes_oracle_scores(videos [N, F, C, H, W] in [-1, 1], prompts) -> dict of
    # scores, optionally with "per_video" (column -> list of N) and "protocol" entries.
    try:
        # deferred: it imports scipy; only when the metric runs
        from .shapes_oracle import shapes_oracle_scores
    except ImportError as error:
        raise MetricSkipped(
            f"shapes oracle not available ({error})",
            "add t2v_exp/metrics/shapes_oracle.py exposing shapes_oracle_scores(videos, prompts)",
        ) from error
    if prompts is None:
        raise MetricSkipped("no prompts given", "pass prompts=[one string per video] to compute_metrics")
    return dict(shapes_oracle_scores(videos, list(prompts)))


def _run_temporal_flickering(videos, prompts, reference_videos, settings: MetricsSettings) -> dict[str, Any]:
    return temporal_flickering(videos)


def _run_background_consistency(videos, prompts, reference_videos, settings: MetricsSettings) -> dict[str, Any]:
    # The CLIP file is the one metric_settings.clip_score points to: one place to configure CLIP.
    return background_consistency(videos, settings.vbench, settings.clip_score)


RUNNERS: dict[str, Callable[..., dict[str, Any]]] = {
    "clip_score": _run_clip_score,
    "fvd": _run_fvd,
    "kvd": _run_kvd,
    "inception_score": _run_inception_score,
    "temporal": _run_temporal,
    "shapes_oracle": _run_shapes_oracle,
    "temporal_flickering": _run_temporal_flickering,
    "background_consistency": _run_background_consistency,
}


def run_one_metric(name: str, videos, prompts, reference_videos, settings: MetricsSettings) -> dict[str, Any]:
    """Run one metric and turn every outcome into a status entry."""
    started = time.perf_counter()
    try:
        result = RUNNERS[name](videos, prompts, reference_videos, settings)
    except MissingWeightsError as missing:
        log.warning("metric %s skipped: %s", name, missing)
        return {"status": "skipped", "reason": missing.reason, "fix": missing.fix}
    except MetricSkipped as skipped:
        log.warning("metric %s skipped: %s", name, skipped.reason)
        return {"status": "skipped", "reason": skipped.reason, "fix": skipped.fix}
    except Exception as error:  # one broken metric must not take the others down
        log.exception("metric %s failed", name)
        return {"status": "error", "error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc()}
    return {"status": "ok", **result, "seconds": time.perf_counter() - started}


def compute_metrics(
    videos: Any,
    prompts: Sequence[str] | None,
    reference_videos: Any | None = None,
    metrics: Sequence[str] = DEFAULT_METRICS,
    settings: MetricsSettings | Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Run the selected metrics on videos ([N, F, C, H, W] float in [-1, 1] or uint8 [N, F, H, W, 3]).

    Returns {"metrics": {name: entry}, "per_video": {column: list of N}}: one entry per selected
    metric (see the module docstring), and the per-video columns of the metrics that have them
    (video_index and prompt first), ready for a per_video.csv.
    """
    unknown = [name for name in metrics if name not in RUNNERS]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; valid: {list(METRIC_NAMES)}")
    if not isinstance(settings, MetricsSettings):
        settings = MetricsSettings.from_mapping(settings)
    videos = as_float_videos(videos)
    count = videos.shape[0]
    if prompts is not None and len(prompts) != count:
        raise ValueError(f"need one prompt per video: {len(prompts)} prompts for {count} videos")
    if reference_videos is not None:
        reference_videos = as_float_videos(reference_videos)

    results: dict[str, Any] = {}
    per_video: dict[str, list] = {"video_index": list(range(count))}
    if prompts is not None:
        per_video["prompt"] = list(prompts)
    for name in metrics:
        entry = run_one_metric(name, videos, prompts, reference_videos, settings)
        for column, values in entry.pop("per_video", {}).items():
            if len(values) != count:
                entry.setdefault("warnings", []).append(f"per-video column {column} has {len(values)} rows, not {count}")
                continue
            per_video[column] = list(values)
        results[name] = entry
    return {"metrics": results, "per_video": per_video}


def per_video_rows(per_video: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """Column lists -> one dict per video (e.g. for csv.DictWriter)."""
    columns = list(per_video)
    count = len(per_video[columns[0]]) if columns else 0
    return [{column: per_video[column][index] for column in columns} for index in range(count)]
