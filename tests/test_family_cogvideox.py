"""CogVideoX 1.5's temporal patches: odd latent frame counts are padded the way the pipeline pads."""

from __future__ import annotations

import torch

from t2v_exp.models import build_model


def test_cogvideox15_pads_odd_latent_frames_at_the_front_and_the_2b_does_not(compose_train):
    cfg = compose_train(["model=cogvideox15_tiny"])
    model = build_model(cfg.model, cfg.paths.cache_dir)
    assert model.patch_size_t == 2 and model.uses_rotary
    latents = torch.randn(2, 3, 16, 4, 4)  # 9 frames -> 3 latent frames [B, F, C, H, W]
    padded = model.pad_latent_frames(latents)
    assert padded.shape[1] == 4
    torch.testing.assert_close(padded[:, 0], latents[:, 0])
    torch.testing.assert_close(padded[:, 1:], latents)
    even = torch.randn(2, 4, 16, 4, 4)
    assert model.pad_latent_frames(even) is even
    # Without the padding the patch embedding of a 2-frame-patch transformer cannot take 3 frames.
    embeds = model.encode_prompts(["a red circle moving left", "a blue square"])
    try:
        model.denoiser(hidden_states=latents, encoder_hidden_states=embeds, timestep=torch.tensor([10, 20]),
                       image_rotary_emb=model.rotary_embeddings(latents), return_dict=False)
        raised = False
    except (RuntimeError, ValueError):
        raised = True
    assert raised, "an odd latent frame count went through the 2-frame patch embedding unpadded"
    assert torch.isfinite(model.training_loss(latents, embeds, [torch.Generator().manual_seed(i) for i in range(2)]))

    base = compose_train(["model=cogvideox_tiny"])
    two_b = build_model(base.model, base.paths.cache_dir)
    assert two_b.patch_size_t is None and two_b.pad_latent_frames(latents) is latents
