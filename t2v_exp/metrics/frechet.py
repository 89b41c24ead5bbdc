"""Fréchet distance between two Gaussians fitted to feature sets (the core of FVD and FID).

d^2 = ||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr(sqrt(S1 S2)), in float64.

tr(sqrt(S1 S2)) is the sum of the square roots of the eigenvalues of S1 S2. Those eigenvalues
are real and non-negative in exact arithmetic (S1 S2 is similar to the PSD matrix
S1^1/2 S2 S1^1/2); round-off leaves tiny imaginary parts and tiny negatives, so we keep the
real part and clamp at zero. This avoids scipy's sqrtm (slow, and it can return complex
matrices that need ad-hoc fixing) and agrees with it to ~1e-7 relative.

Covariances use ddof=1 by default (divide by N - 1), as numpy's `np.cov`, TF-GAN (the FVD
paper's code), torchmetrics and pytorch-fid do; StyleGAN-V's FVD and cd-fvd divide by N (ddof=0),
whose covariances are smaller by (N - 1)/N, so the score differs by O(1/N). Neither is "the"
public convention: the divisor is a setting (`metric_settings.fvd.ddof`) and is recorded beside
every score.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch

COVARIANCE_DDOF = 1  # N - 1: TF-GAN, torchmetrics, pytorch-fid (StyleGAN-V and cd-fvd: N, ddof=0)
# FVD with 400-d features is strongly biased at small N (two samples of one distribution give
# ~1800 at N=64, ~100 at N=2048), so numbers below this are flagged.
SMALL_SAMPLE_WARNING_BELOW = 256


class SmallSampleWarning(UserWarning):
    """Too few samples for a Fréchet distance to be compared with published numbers."""


def feature_statistics(features: torch.Tensor, ddof: int = COVARIANCE_DDOF) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean [D] and covariance [D, D] (float64) of a feature matrix [N, D]."""
    if features.ndim != 2:
        raise ValueError(f"features must be [N, D], got shape {tuple(features.shape)}")
    count = features.shape[0]
    if count <= ddof:
        raise ValueError(f"need more than ddof={ddof} samples for a covariance, got N={count}")
    features = features.double()
    mean = features.mean(dim=0)
    centered = features - mean
    covariance = centered.T @ centered / (count - ddof)
    return mean, covariance


def trace_sqrt_product(sigma1: torch.Tensor, sigma2: torch.Tensor) -> torch.Tensor:
    """tr(sqrt(sigma1 @ sigma2)) from the eigenvalues of the product, float64."""
    eigenvalues = torch.linalg.eigvals(sigma1.double() @ sigma2.double())
    return eigenvalues.real.clamp(min=0).sqrt().sum()


def frechet_distance(mu1: torch.Tensor, sigma1: torch.Tensor, mu2: torch.Tensor, sigma2: torch.Tensor) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2), computed in float64."""
    mu1, mu2, sigma1, sigma2 = (tensor.double() for tensor in (mu1, mu2, sigma1, sigma2))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (mu1.numel(), mu1.numel()):
        raise ValueError(
            f"shape mismatch: mu1 {tuple(mu1.shape)}, mu2 {tuple(mu2.shape)}, "
            f"sigma1 {tuple(sigma1.shape)}, sigma2 {tuple(sigma2.shape)}"
        )
    mean_term = (mu1 - mu2).pow(2).sum()
    covariance_term = sigma1.trace() + sigma2.trace() - 2.0 * trace_sqrt_product(sigma1, sigma2)
    return float(mean_term + covariance_term)


def small_sample_message(count: int, what: str = "samples") -> str | None:
    if count >= SMALL_SAMPLE_WARNING_BELOW:
        return None
    return (
        f"only {count} {what}: Fréchet distances are biased upward at small N and not comparable "
        f"with published numbers (computed on thousands); use at least {SMALL_SAMPLE_WARNING_BELOW}"
    )


def frechet_distance_from_features(
    features1: torch.Tensor, features2: torch.Tensor, ddof: int = COVARIANCE_DDOF
) -> dict[str, Any]:
    """Fréchet distance between two feature sets [N1, D] and [N2, D], with its protocol fields.

    Emits a `SmallSampleWarning` (and records the message) when either set is small.
    """
    mu1, sigma1 = feature_statistics(features1, ddof)
    mu2, sigma2 = feature_statistics(features2, ddof)
    notes = []
    for label, features in (("generated", features1), ("reference", features2)):
        message = small_sample_message(features.shape[0], f"{label} samples")
        if message:
            warnings.warn(message, SmallSampleWarning, stacklevel=2)
            notes.append(message)
    return {
        "distance": frechet_distance(mu1, sigma1, mu2, sigma2),
        "num_samples": int(features1.shape[0]),
        "num_reference_samples": int(features2.shape[0]),
        "feature_dim": int(features1.shape[1]),
        "ddof": ddof,
        "warnings": notes,
    }
