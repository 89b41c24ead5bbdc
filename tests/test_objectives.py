"""Training objectives against hand computations (numpy schedules, the formulas written out)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler

from t2v_exp.models.objectives import DDPMObjective, FlowMatchingObjective, sample_noise, shift_sigmas


def generators(seeds):
    return [torch.Generator().manual_seed(seed) for seed in seeds]


def hand_alpha_bar(timesteps, beta_start=0.00085, beta_end=0.012, steps=1000):
    """scaled_linear betas: linspace over sqrt(beta), squared; alpha_bar = cumprod(1 - beta)."""
    betas = np.linspace(math.sqrt(beta_start), math.sqrt(beta_end), steps, dtype=np.float64) ** 2
    return np.cumprod(1.0 - betas)[timesteps]


def hand_draws(seeds, shape, uniform=False, normal_for_sigma=False):
    """Replays the objective's documented draw order: one timestep/sigma draw, then the noise."""
    first, noise = [], []
    for generator in generators(seeds):
        if uniform:
            first.append(float(torch.rand(1, generator=generator)))
        elif normal_for_sigma:
            first.append(float(torch.randn(1, generator=generator)))
        else:
            first.append(int(torch.randint(0, 1000, (1,), generator=generator)))
        noise.append(torch.randn(shape, generator=generator).double().numpy())
    return np.array(first), np.stack(noise)


def latents(shape=(3, 4, 2, 5, 6), seed=9):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_ddpm_noising_and_target_match_the_closed_form(prediction_type):
    scheduler = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                              prediction_type=prediction_type)
    x0 = latents()
    draw = DDPMObjective(scheduler).draw(x0, generators([1, 2, 3]))
    steps, noise = hand_draws([1, 2, 3], x0.shape[1:])
    ab = hand_alpha_bar(steps).reshape(-1, 1, 1, 1, 1)
    x = x0.double().numpy()
    np.testing.assert_array_equal(draw.timesteps.numpy(), steps)
    np.testing.assert_allclose(draw.noisy.double().numpy(), np.sqrt(ab) * x + np.sqrt(1 - ab) * noise, atol=1e-5)
    expected = noise if prediction_type == "epsilon" else np.sqrt(ab) * noise - np.sqrt(1 - ab) * x
    np.testing.assert_allclose(draw.target.double().numpy(), expected, atol=1e-5)
    assert draw.weights is None


def test_min_snr_gamma_weights_by_hand():
    scheduler = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    x0 = latents()
    for prediction_type, denominator in (("epsilon", 0), ("v_prediction", 1)):
        scheduler = DDPMScheduler.from_config(scheduler.config, prediction_type=prediction_type)
        draw = DDPMObjective(scheduler, min_snr_gamma=5.0).draw(x0, generators([4, 5, 6]))
        ab = hand_alpha_bar(draw.timesteps.numpy())
        snr = ab / (1 - ab)
        np.testing.assert_allclose(draw.weights.numpy(), np.minimum(snr, 5.0) / (snr + denominator), rtol=1e-5)


def test_weighted_loss_is_the_weighted_mean_of_per_sample_mse():
    scheduler = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    objective = DDPMObjective(scheduler, min_snr_gamma=5.0)
    x0 = latents()
    draw = objective.draw(x0, generators([7, 8, 9]))
    prediction = torch.zeros_like(x0)
    per_sample = draw.target.double().pow(2).flatten(1).mean(1).numpy()
    assert float(objective.loss(prediction, draw)) == pytest.approx(float((per_sample * draw.weights.numpy()).mean()),
                                                                     rel=1e-5)


def test_offset_noise_adds_one_constant_per_sample_and_channel():
    like = torch.zeros(2, 3, 4, 5, 5)
    plain = sample_noise(like, generators([1, 2]))
    offset = sample_noise(like, generators([1, 2]), offset_noise=0.1)
    shift = (offset - plain).flatten(2)
    assert torch.allclose(shift, shift[..., :1].expand_as(shift), atol=1e-6)  # constant over positions
    assert shift[..., 0].abs().max() > 0 and not torch.allclose(shift[0, 0, :1], shift[0, 1, :1])


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_flow_matching_uniform_with_shift_by_hand(shift):
    x0 = latents()
    draw = FlowMatchingObjective(shift=shift).draw(x0, generators([11, 12, 13]))
    u, noise = hand_draws([11, 12, 13], x0.shape[1:], uniform=True)
    sigma = shift * u / (1 + (shift - 1) * u)
    s = sigma.reshape(-1, 1, 1, 1, 1)
    x = x0.double().numpy()
    np.testing.assert_allclose(draw.timesteps.double().numpy(), sigma * 1000, rtol=1e-5)
    np.testing.assert_allclose(draw.noisy.double().numpy(), (1 - s) * x + s * noise, atol=1e-5)
    np.testing.assert_allclose(draw.target.double().numpy(), noise - x, atol=1e-5)
    assert draw.weights is None


def test_flow_matching_logit_normal_cosmap_and_expert_range_by_hand():
    x0 = latents()
    objective = FlowMatchingObjective(sampling="logit_normal", logit_mean=0.5, logit_std=2.0, weighting="cosmap",
                                      sigma_range=(0.0, 0.875))
    draw = objective.draw(x0, generators([21, 22, 23]))
    normal, _ = hand_draws([21, 22, 23], x0.shape[1:], normal_for_sigma=True)
    sigma = 0.875 / (1 + np.exp(-(0.5 + 2.0 * normal)))
    np.testing.assert_allclose(draw.timesteps.double().numpy(), sigma * 1000, rtol=1e-5)
    np.testing.assert_allclose(draw.weights.double().numpy(), 2 / (math.pi * (1 - 2 * sigma + 2 * sigma**2)), rtol=1e-5)
    assert float(draw.timesteps.max()) < 875


def test_shift_moves_sigmas_toward_noise_and_keeps_the_ends():
    sigmas = torch.tensor([0.0, 0.25, 0.5, 1.0])
    shifted = shift_sigmas(sigmas, 5.0)
    assert shifted[0] == 0 and shifted[-1] == 1 and bool((shifted[1:3] > sigmas[1:3]).all())


def test_bad_objective_settings_are_refused():
    with pytest.raises(ValueError, match="sampling"):
        FlowMatchingObjective(sampling="beta")
    with pytest.raises(ValueError, match="weighting"):
        FlowMatchingObjective(weighting="snr")
    scheduler = DDPMScheduler(prediction_type="sample")
    with pytest.raises(ValueError, match="prediction_type"):
        DDPMObjective(scheduler)
