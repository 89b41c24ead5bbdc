"""Fit the tiny twins' 2-D VAE to the synthetic shapes, so that what a tiny model learns shows in pixels.

A randomly initialised VAE does not invert itself: decode(encode(x)) is noise, so even a tiny
denoiser that has learned the latents of the shapes data would only ever produce noise. A few
hundred steps of reconstruction training (about 40 s on two CPU cores, once per cache) bring the
round trip to ~30 dB PSNR on held-in frames, and the scaling factor is set so the scaled latents
have unit standard deviation, as the diffusion noise schedule assumes.
"""

from __future__ import annotations

import logging
import tempfile
import time

import torch

from ..quiet import progress

log = logging.getLogger(__name__)

FIT_STEPS = 600
FIT_BATCH = 32
KL_WEIGHT = 1e-6  # just enough to keep the posterior a distribution; reconstruction dominates


def shapes_frames(num_videos: int = 64, num_frames: int = 8, size: int = 32) -> torch.Tensor:
    """[N, 3, size, size] frames in [-1, 1] of every shape, colour and direction, via the real decoder."""
    # deferred: data.datasets loads av (PyAV); only when shapes clips are made
    from ..data.datasets import ShapesDataset

    with tempfile.TemporaryDirectory(prefix="t2v_tiny_vae_") as root:
        dataset = ShapesDataset(root=root, num_videos=num_videos, domain="all", num_frames=num_frames,
                                height=size, width=size, fps=8, seed=0)
        return torch.cat([dataset[i]["video"] for i in range(len(dataset))])


def fit_image_vae(vae, frames: torch.Tensor, *, steps: int = FIT_STEPS, seed: int = 0) -> dict:
    """Train ``vae`` (diffusers AutoencoderKL) in place on ``frames``; returns the fit's figures."""
    return _fit(vae, frames, steps=steps, batch=FIT_BATCH, seed=seed, encode_one_by_one=False,
                what="Tiny VAE fitted to shapes")


def _decode(vae, latents: torch.Tensor) -> torch.Tensor:
    return vae.decode(latents).sample


def _fit(vae, data: torch.Tensor, *, steps: int, batch: int, seed: int, encode_one_by_one: bool, what: str,
         decode=_decode, scale_latents: bool = True) -> dict:
    """The shared fit: reconstruction + a small KL on random batches of ``data``, then (``scale_latents``)
    the latent scale set so that latents have unit std (what the diffusion models expect; VAEs that
    normalise with per-channel latents_mean/std set those instead). The RNG calls keep their order
    (batch indices, then the posterior sample), so the committed fits reproduce."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=2e-3)
    started = time.perf_counter()
    vae.train()
    for _ in progress(range(steps), desc="fit tiny VAE (once)", unit="step", leave=False):
        sample = data[torch.randint(0, len(data), (batch,), generator=generator)]
        posterior = vae.encode(sample).latent_dist
        reconstruction = decode(vae, posterior.sample(generator=generator))
        loss = torch.nn.functional.mse_loss(reconstruction, sample) + KL_WEIGHT * posterior.kl().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    vae.eval()
    with torch.no_grad():
        if encode_one_by_one:  # a 3-D VAE's activations over every clip at once would not fit
            latents = torch.cat([vae.encode(item.unsqueeze(0)).latent_dist.mode() for item in data])
            round_trip = torch.cat([decode(vae, latent.unsqueeze(0)) for latent in latents])
        else:
            latents = vae.encode(data).latent_dist.mode()
            round_trip = decode(vae, latents)
    mse = torch.mean((round_trip - data) ** 2).item()
    std = latents.std().item()
    if scale_latents:
        vae.register_to_config(scaling_factor=1.0 / std)
    figures = {"steps": steps, "psnr_db": 10 * torch.log10(torch.tensor(4.0 / mse)).item(), "latent_std": std,
               "seconds": time.perf_counter() - started}
    log.info(what + ": %(psnr_db).1f dB round trip in %(seconds).0f s", figures)
    return figures


def shapes_clips(num_videos: int = 48, num_frames: int = 9, size: int = 32) -> torch.Tensor:
    """[N, 3, num_frames, size, size] clips in [-1, 1] of every shape, colour and direction."""
    # deferred: data.datasets loads av (PyAV); only when shapes clips are made
    from ..data.datasets import ShapesDataset

    with tempfile.TemporaryDirectory(prefix="t2v_tiny_vae_") as root:
        dataset = ShapesDataset(root=root, num_videos=num_videos, domain="all", num_frames=num_frames,
                                height=size, width=size, fps=8, seed=0)
        return torch.stack([dataset[i]["video"].permute(1, 0, 2, 3) for i in range(len(dataset))])


def fit_video_vae(vae, clips: torch.Tensor, *, steps: int = 300, batch: int = 8, seed: int = 0,
                  decode=_decode, scale_latents: bool = True) -> dict:
    """Train a 3-D VAE (CogVideoX's, Wan's, LTX-Video's) in place on ``clips`` [N, C, F, H, W]; its figures.

    The same recipe as the 2-D fit, on whole clips: the 3-D VAE also compresses time, so it must
    learn to put the motion into its latent frames. ``decode(vae, latents)`` -> frames, for decoders
    that take more than the latents (LTX-Video's timestep-conditioned one).
    """
    return _fit(vae, clips, steps=steps, batch=batch, seed=seed, encode_one_by_one=True,
                what="Tiny 3-D VAE fitted to shapes clips", decode=decode, scale_latents=scale_latents)
