import hashlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from t2v_exp.metrics.detectors import MissingWeightsError
from t2v_exp.metrics.inception_score import (
    InceptionScoreSettings,
    build_inception,
    inception_score,
    inception_score_from_probs,
    split_permutation,
)
from tests.test_metrics_fixtures import inception_file


def numpy_inception_score(probs, splits, order):
    """Reference: the original split/KL formula, in numpy, on a given sample order."""
    probs = probs[order]
    count = len(probs)
    scores = []
    for index in range(splits):
        part = probs[index * count // splits : (index + 1) * count // splits]
        marginal = np.mean(part, axis=0, keepdims=True)
        kl = part * (np.log(part) - np.log(marginal))
        scores.append(np.exp(np.mean(np.sum(kl, axis=1))))
    return np.mean(scores), np.std(scores)


@pytest.mark.parametrize("count,classes,splits,seed", [(103, 20, 10, 0), (40, 7, 3, 5), (10, 1000, 10, 1)])
def test_from_probs_matches_numpy_reference(count, classes, splits, seed):
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.full(classes, 0.3), size=count)
    order = split_permutation(count, seed).numpy()
    expected_mean, expected_std = numpy_inception_score(probs, splits, order)
    mean, std = inception_score_from_probs(torch.from_numpy(probs), splits=splits, seed=seed)
    assert mean == pytest.approx(expected_mean, rel=1e-8, abs=1e-8)
    assert std == pytest.approx(expected_std, rel=1e-8, abs=1e-8)


def test_known_values_and_seed_dependence():
    one_hot = torch.eye(10).repeat(10, 1)  # 100 confident samples spread evenly over 10 classes
    assert inception_score_from_probs(one_hot, splits=1) == pytest.approx((10.0, 0.0))
    same_class = torch.zeros(50, 10)
    same_class[:, 3] = 1
    assert inception_score_from_probs(same_class, splits=5) == pytest.approx((1.0, 0.0))
    probs = torch.from_numpy(np.random.default_rng(0).dirichlet(np.full(8, 0.2), size=60))
    assert inception_score_from_probs(probs, 5, seed=0) != inception_score_from_probs(probs, 5, seed=1)
    assert inception_score_from_probs(probs, 1, seed=0)[0] == pytest.approx(inception_score_from_probs(probs, 1, seed=1)[0])
    with pytest.raises(ValueError, match="splits"):
        inception_score_from_probs(probs[:4], splits=10)


def test_loads_local_state_dict_and_scores_frames():
    settings = InceptionScoreSettings(weights_path=str(inception_file()), splits=2, quantize_uint8=False)
    videos = torch.rand(2, 2, 3, 40, 48, generator=torch.Generator().manual_seed(0)) * 2 - 1
    result = inception_score(videos, settings)

    model, record = build_inception(str(inception_file()))
    frames = F.interpolate(videos.flatten(0, 1), size=(299, 299), mode="bilinear", align_corners=False, antialias=True)
    with torch.no_grad():
        probs = torch.softmax(model(frames).double(), dim=1)
    expected = inception_score_from_probs(probs, splits=2, seed=0)

    assert (result["inception_score_frame"], result["inception_score_frame_std"]) == pytest.approx(expected, rel=1e-6)
    protocol = result["protocol"]
    assert protocol["num_frames_scored"] == 4 and protocol["num_classes"] == 1000
    assert protocol["detector_resolution"] == [299, 299] and protocol["splits"] == 2
    assert protocol["detector_sha256"] == hashlib.sha256(inception_file().read_bytes()).hexdigest()
    assert "frame-level" in protocol["detector"]


def test_missing_weights_name_the_setting(tmp_path):
    with pytest.raises(MissingWeightsError, match="metric_settings.inception_score.weights_path"):
        build_inception(str(tmp_path / "absent.pth"))
