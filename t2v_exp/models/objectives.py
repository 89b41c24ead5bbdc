"""Training objectives, one unit each: what to noise, what the denoiser must predict, how to weigh it.

A family picks the objective its published scheduler implies and calls two methods:

    draw = objective.draw(latents, generators)          # timesteps, noisy latents, target, weights
    loss = objective.loss(denoiser_output, draw)

- `DDPMObjective`: discrete-time diffusion under a diffusers DDPM/DDIM-style scheduler
  (`add_noise`), predicting the noise (epsilon) or the velocity (v), per the scheduler's
  `prediction_type`. Optional offset noise and min-SNR-gamma weighting.
- `FlowMatchingObjective`: rectified flow as in the Wan / LTX-Video / SD3 training references:
  sigma drawn uniform or logit-normal, then shifted (sigma' = s*sigma / (1 + (s-1)*sigma)),
  x_t = (1 - sigma) x0 + sigma * noise, target = noise - x0, timestep = sigma * 1000; optional
  loss weighting ("sigma_sqrt": sigma^-2, "cosmap").

Randomness is per sample: sample i's timestep and noise come from `generators[i]` (timestep
first, then noise), so a batch split across processes draws what one process would.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..errors import ConfigError

FLOW_WEIGHTINGS = ("none", "sigma_sqrt", "cosmap")
FLOW_SAMPLINGS = ("uniform", "logit_normal")


@dataclass
class Draw:
    """One batch's noising: what the denoiser gets and what it must output."""

    timesteps: torch.Tensor  # [B], in the scheduler's timestep units
    noisy: torch.Tensor  # like the latents
    target: torch.Tensor  # like the latents
    weights: torch.Tensor | None  # [B] per-sample loss weights, None for plain MSE


def sample_noise(like: torch.Tensor, generators: list[torch.Generator], offset_noise: float = 0.0) -> torch.Tensor:
    """Per-sample Gaussian noise shaped like `like`; sample i's comes from `generators[i]`.

    Offset noise adds one Gaussian per (sample, channel) shared by all positions, scaled by
    `offset_noise`; it lets a model learn overall brightness changes. Channel axis: 1.
    """
    if len(generators) != like.shape[0]:
        raise ValueError(f"need one generator per sample: {len(generators)} for batch {like.shape[0]}")
    noise = torch.stack([torch.randn(like.shape[1:], generator=g, dtype=torch.float32) for g in generators])
    if offset_noise:
        shape = (like.shape[1],) + (1,) * (like.ndim - 2)
        noise = noise + offset_noise * torch.stack([torch.randn(shape, generator=g) for g in generators])
    return noise.to(device=like.device, dtype=like.dtype)


def per_sample_mse(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error of each sample, float32, [B]."""
    return (prediction.float() - target.float()).pow(2).flatten(1).mean(dim=1)


def weighted_loss(prediction: torch.Tensor, draw: Draw) -> torch.Tensor:
    errors = per_sample_mse(prediction, draw.target)
    if draw.weights is None:
        return errors.mean()
    return (errors * draw.weights.to(errors.device)).mean()


@dataclass
class DDPMSettings:
    """``model.*`` keys of the families trained with :class:`DDPMObjective` (a family's Config lists
    this dataclass among its bases)."""

    offset_noise: float = 0.0  # model.offset_noise=0.1 (ExponentialML's value): lets brightness shift
    min_snr_gamma: float | None = None  # model.min_snr_gamma=5 (Hang et al.'s value): min-SNR weighting


def validate_ddpm_settings(cfg) -> None:
    offset, gamma = cfg.offset_noise, cfg.min_snr_gamma
    if not (math.isfinite(offset) and offset >= 0):
        raise ConfigError(f"model.offset_noise={offset} must be a finite number >= 0, e.g. model.offset_noise=0.1")
    if gamma is not None and not (math.isfinite(gamma) and gamma > 0):
        raise ConfigError(f"model.min_snr_gamma={gamma} must be a finite number > 0 (or null: plain MSE), "
                          f"e.g. model.min_snr_gamma=5")


class DDPMObjective:
    """Epsilon or v-prediction under a discrete diffusers scheduler (its betas are the schedule)."""

    @classmethod
    def from_config(cls, scheduler, cfg) -> DDPMObjective:
        """The objective with the family config's :class:`DDPMSettings`."""
        return cls(scheduler, offset_noise=float(cfg.offset_noise),
                   min_snr_gamma=None if cfg.min_snr_gamma is None else float(cfg.min_snr_gamma))

    def __init__(self, scheduler, *, offset_noise: float = 0.0, min_snr_gamma: float | None = None):
        self.scheduler = scheduler
        self.prediction_type = scheduler.config.prediction_type
        self.label = f"DDPM {'v-prediction' if self.prediction_type == 'v_prediction' else 'epsilon'}"
        if self.prediction_type not in ("epsilon", "v_prediction"):
            raise ValueError(f"unsupported scheduler prediction_type '{self.prediction_type}' "
                             "(expected epsilon or v_prediction)")
        self.num_train_timesteps = int(scheduler.config.num_train_timesteps)
        self.offset_noise = offset_noise
        self.min_snr_gamma = min_snr_gamma

    def snr(self, timesteps: torch.Tensor) -> torch.Tensor:
        alphas_cumprod = self.scheduler.alphas_cumprod.to(torch.float64)[timesteps.cpu()]
        return (alphas_cumprod / (1 - alphas_cumprod)).float()

    def min_snr_weights(self, timesteps: torch.Tensor) -> torch.Tensor:
        """Hang et al. 2023: min(SNR, gamma) / SNR for epsilon, min(SNR, gamma) / (SNR + 1) for v."""
        snr = self.snr(timesteps)
        clipped = torch.minimum(snr, torch.full_like(snr, float(self.min_snr_gamma)))
        return clipped / (snr + 1) if self.prediction_type == "v_prediction" else clipped / snr

    def draw(self, latents: torch.Tensor, generators: list[torch.Generator]) -> Draw:
        steps = torch.cat([torch.randint(0, self.num_train_timesteps, (1,), generator=g, dtype=torch.long)
                           for g in generators])
        noise = sample_noise(latents, generators, self.offset_noise)
        steps = steps.to(latents.device)
        noisy = self.scheduler.add_noise(latents, noise, steps)
        if self.prediction_type == "epsilon":
            target = noise
        else:
            target = self.scheduler.get_velocity(latents, noise, steps)
        weights = self.min_snr_weights(steps) if self.min_snr_gamma else None
        return Draw(steps, noisy, target, weights)

    def loss(self, prediction: torch.Tensor, draw: Draw) -> torch.Tensor:
        return weighted_loss(prediction, draw)


def shift_sigmas(sigmas: torch.Tensor, shift: float) -> torch.Tensor:
    """The timestep shift of Wan / SD3 / LTX: more steps at high noise for shift > 1."""
    return shift * sigmas / (1 + (shift - 1) * sigmas)


class FlowMatchingObjective:
    """Rectified flow: x_t = (1 - sigma) x0 + sigma * noise, the denoiser predicts noise - x0."""

    def __init__(self, *, shift: float = 1.0, sampling: str = "uniform", logit_mean: float = 0.0,
                 logit_std: float = 1.0, weighting: str = "none", num_train_timesteps: int = 1000,
                 sigma_range: tuple[float, float] = (0.0, 1.0)):
        if sampling not in FLOW_SAMPLINGS:
            raise ValueError(f"flow-matching timestep sampling must be one of {FLOW_SAMPLINGS}, got '{sampling}'")
        if weighting not in FLOW_WEIGHTINGS:
            raise ValueError(f"flow-matching loss weighting must be one of {FLOW_WEIGHTINGS}, got '{weighting}'")
        if not shift > 0:
            raise ValueError(f"flow-matching shift must be > 0, got {shift}")
        self.shift, self.sampling, self.weighting = shift, sampling, weighting
        self.logit_mean, self.logit_std = logit_mean, logit_std
        self.num_train_timesteps = num_train_timesteps
        # Wan 2.2's experts each train on part of the range: sigmas are mapped into [low, high).
        self.sigma_range = sigma_range

    label = "flow matching (velocity)"

    def draw_sigmas(self, generators: list[torch.Generator]) -> torch.Tensor:
        if self.sampling == "uniform":
            u = torch.cat([torch.rand(1, generator=g) for g in generators])
        else:
            normal = torch.cat([torch.randn(1, generator=g) for g in generators])
            u = torch.sigmoid(self.logit_mean + self.logit_std * normal)
        sigmas = shift_sigmas(u, self.shift)
        low, high = self.sigma_range
        return low + (high - low) * sigmas

    def loss_weights(self, sigmas: torch.Tensor) -> torch.Tensor | None:
        if self.weighting == "sigma_sqrt":
            return sigmas.clamp(min=1e-4) ** -2.0
        if self.weighting == "cosmap":
            return 2 / (math.pi * (1 - 2 * sigmas + 2 * sigmas**2))
        return None

    def draw(self, latents: torch.Tensor, generators: list[torch.Generator]) -> Draw:
        sigmas = self.draw_sigmas(generators)
        noise = sample_noise(latents, generators)
        expanded = sigmas.view(-1, *([1] * (latents.ndim - 1))).to(device=latents.device, dtype=latents.dtype)
        noisy = (1 - expanded) * latents + expanded * noise
        timesteps = (sigmas * self.num_train_timesteps).to(latents.device)
        return Draw(timesteps, noisy, noise - latents, self.loss_weights(sigmas))

    def loss(self, prediction: torch.Tensor, draw: Draw) -> torch.Tensor:
        return weighted_loss(prediction, draw)
