import warnings

import numpy as np
import pytest
import torch
from scipy import linalg

from t2v_exp.metrics.frechet import (
    SMALL_SAMPLE_WARNING_BELOW,
    SmallSampleWarning,
    feature_statistics,
    frechet_distance,
    frechet_distance_from_features,
)


def scipy_frechet(mu1, sigma1, mu2, sigma2):
    """The classic pytorch-fid formula with scipy's matrix square root."""
    covmean = linalg.sqrtm(sigma1 @ sigma2)
    covmean = covmean.real
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def random_features(count, dim, seed, shift=0.0):
    rng = np.random.default_rng(seed)
    mixing = rng.normal(size=(dim, dim)) / np.sqrt(dim)
    return rng.normal(size=(count, dim)) @ mixing + shift


@pytest.mark.parametrize("count,dim,shift", [(300, 32, 0.3), (500, 64, 0.0), (120, 16, 2.0)])
def test_matches_scipy_sqrtm_formula(count, dim, shift):
    first = random_features(count, dim, seed=1)
    second = random_features(count, dim, seed=2, shift=shift)
    mu1, sigma1 = np.mean(first, axis=0), np.cov(first, rowvar=False)
    mu2, sigma2 = np.mean(second, axis=0), np.cov(second, rowvar=False)
    expected = scipy_frechet(mu1, sigma1, mu2, sigma2)
    ours = frechet_distance(*(torch.from_numpy(a) for a in (mu1, sigma1, mu2, sigma2)))
    assert ours == pytest.approx(expected, rel=1e-6)


def test_statistics_match_numpy_cov_for_both_divisors():
    features = random_features(50, 8, seed=3)
    mean, covariance = feature_statistics(torch.from_numpy(features))
    np.testing.assert_allclose(mean.numpy(), features.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(covariance.numpy(), np.cov(features, rowvar=False), rtol=1e-10, atol=1e-14)
    _, population = feature_statistics(torch.from_numpy(features), ddof=0)
    np.testing.assert_allclose(population.numpy(), np.cov(features, rowvar=False, bias=True), rtol=1e-10, atol=1e-14)
    assert mean.dtype == covariance.dtype == torch.float64


def test_closed_form_one_dimensional_gaussians():
    # d^2(N(m1, a), N(m2, b)) = (m1 - m2)^2 + (sqrt(a) - sqrt(b))^2
    mu1, mu2 = torch.tensor([1.0]), torch.tensor([4.0])
    distance = frechet_distance(mu1, torch.tensor([[4.0]]), mu2, torch.tensor([[9.0]]))
    assert distance == pytest.approx(9.0 + 1.0, rel=1e-12)


def test_identical_sets_give_zero_even_with_rank_deficient_covariance():
    features = torch.from_numpy(random_features(40, 64, seed=4))  # N < D: singular covariance
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SmallSampleWarning)
        result = frechet_distance_from_features(features, features)
    assert abs(result["distance"]) < 1e-6
    assert result["ddof"] == 1


def test_small_samples_warn_and_record_it():
    small = torch.from_numpy(random_features(SMALL_SAMPLE_WARNING_BELOW - 1, 4, seed=5))
    large = torch.from_numpy(random_features(SMALL_SAMPLE_WARNING_BELOW, 4, seed=6))
    with pytest.warns(SmallSampleWarning, match="biased"):
        result = frechet_distance_from_features(small, large)
    assert len(result["warnings"]) == 1 and result["num_samples"] == SMALL_SAMPLE_WARNING_BELOW - 1
    with warnings.catch_warnings():
        warnings.simplefilter("error", SmallSampleWarning)
        assert frechet_distance_from_features(large, large)["warnings"] == []


def test_mismatched_shapes_are_rejected():
    with pytest.raises(ValueError, match="shape mismatch"):
        frechet_distance(torch.zeros(3), torch.eye(3), torch.zeros(4), torch.eye(4))
