"""The tiny twins' shared 2-D VAE is fitted to the shapes data, so tiny samples show shapes, not noise.

The per-family model tests are the contract suite in test_family_contract.py.
"""

from __future__ import annotations

import torch


def test_the_tiny_2d_vae_round_trips_shapes_frames_with_unit_scaled_latents():
    """Fitted once per cache (t2v_exp/models/tiny_vae.py): a random VAE would give ~9 dB and noise."""
    from diffusers import AutoencoderKL

    from t2v_exp.models.registry import tiny_twin
    from t2v_exp.models.tiny_vae import shapes_frames

    vae = AutoencoderKL.from_pretrained(tiny_twin("modelscope"), subfolder="vae")
    frames = shapes_frames(num_videos=16)  # shapes frames like those it was fitted on, decoded afresh
    with torch.no_grad():
        latents = vae.encode(frames).latent_dist.mode()
        round_trip = vae.decode(latents).sample
    psnr = 10 * torch.log10(4.0 / torch.mean((round_trip - frames) ** 2))
    assert psnr > 25.0
    assert 0.8 < float((latents * vae.config.scaling_factor).std()) < 1.25
