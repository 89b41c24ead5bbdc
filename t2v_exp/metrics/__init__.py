"""Video metrics, each reported with the protocol it was computed under (see METRICS.md).

`compute_metrics` runs a selection; the per-metric modules expose the pieces (and pure
functions for testing against reference implementations).
"""

from .clip_score import ClipScoreSettings, clip_score
from .detectors import MissingWeightsError, as_float_videos, sha256_file
from .frechet import feature_statistics, frechet_distance, frechet_distance_from_features
from .fvd import FVDSettings, fvd, i3d_features, load_i3d
from .inception_score import InceptionScoreSettings, inception_score, inception_score_from_probs
from .suite import DEFAULT_METRICS, METRIC_NAMES, MetricsSettings, compute_metrics, per_video_rows
from .temporal import TemporalSettings, temporal_scores
from .vbench import VBenchSettings, background_consistency, temporal_flickering

__all__ = [
    "DEFAULT_METRICS",
    "METRIC_NAMES",
    "ClipScoreSettings",
    "FVDSettings",
    "InceptionScoreSettings",
    "MetricsSettings",
    "MissingWeightsError",
    "TemporalSettings",
    "VBenchSettings",
    "as_float_videos",
    "background_consistency",
    "clip_score",
    "compute_metrics",
    "feature_statistics",
    "frechet_distance",
    "frechet_distance_from_features",
    "fvd",
    "i3d_features",
    "inception_score",
    "inception_score_from_probs",
    "load_i3d",
    "per_video_rows",
    "sha256_file",
    "temporal_flickering",
    "temporal_scores",
]
