"""LTX-Video on its tiny twin: geometry checked before any load, the pipeline's latent normalisation,
the flow-matching loss against a hand computation, and the exported LoRA in the stock LTXPipeline."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch

from t2v_exp.errors import ConfigError
from t2v_exp.models import build_model, ltx

PROMPTS = ["a red circle moving left", "blue"]  # the second pads most of the T5 sequence


def tiny_config(compose, *overrides: str):
    cfg = compose(["model=ltx_tiny", *overrides])
    return cfg.model, cfg.paths.cache_dir


def tiny_model(compose, *overrides: str):
    cfg, cache_dir = tiny_config(compose, *overrides)
    model = build_model(cfg, cache_dir)
    model.place(torch.device("cpu"), torch.float32)
    return cfg, model


def generators(seed: int = 0, count: int = 2) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(seed + i) for i in range(count)]


def clips(cfg, count: int = 2) -> torch.Tensor:
    return torch.rand(count, cfg.num_frames, 3, cfg.height, cfg.width, generator=torch.Generator().manual_seed(0)) * 2 - 1


# -- geometry --------------------------------------------------------------------------------


@pytest.fixture
def configs_only(compose_train, tmp_path):
    """The tiny twin's JSON configs without a single weight file: validation must need no more."""
    cfg, cache_dir = tiny_config(compose_train)
    root = ltx.LTXModel.resolve(cfg, cache_dir)
    for relative in ("model_index.json", "vae/config.json", "transformer/config.json"):
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(f"{root}/{relative}", tmp_path / relative)
    return str(tmp_path)


@pytest.mark.parametrize(("override", "named", "nearest"), [
    ("model.num_frames=12", "model.num_frames=12", "9 or 17"),
    ("model.num_frames=0", "model.num_frames=0", "1"),
    ("model.height=48", "model.height=48", "32 or 64"),
    ("model.width=100", "model.width=100", "96 or 128"),
])
def test_bad_geometry_is_rejected_from_the_configs_alone(compose_train, configs_only, override, named, nearest):
    cfg, _ = tiny_config(compose_train, override)
    with pytest.raises(ConfigError) as error:
        ltx.LTXModel.validate(cfg, configs_only)
    assert named in str(error.value) and f"nearest valid: {nearest}" in str(error.value)


def test_the_tiny_twin_takes_the_real_models_rules(configs_only):
    """Its VAE compresses space only 8x, but LTXPipeline still wants multiples of 32; time is 8x as real."""
    geometry = ltx.checkpoint_geometry(configs_only)
    assert (geometry.spatial, geometry.temporal, geometry.side_multiple) == (8, 8, 32)


@pytest.mark.parametrize("vae", [
    {"patch_size": 4, "patch_size_t": 1, "spatio_temporal_scaling": [True, True, True, False]},  # 0.9.0 / 0.9.1
    {"patch_size": 4, "spatio_temporal_scaling": [True, True, True, True],  # 0.9.5: explicit ratios
     "spatial_compression_ratio": 32, "temporal_compression_ratio": 8},
])
def test_real_checkpoint_configs_give_8k_plus_1_frames_and_multiples_of_32(tmp_path, vae):
    for name, content in (("vae", vae), ("transformer", {"patch_size": 1, "patch_size_t": 1})):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(json.dumps(content))
    geometry = ltx.checkpoint_geometry(str(tmp_path))
    assert (geometry.spatial, geometry.temporal, geometry.side_multiple) == (32, 8, 32)
    assert geometry.frames_ok(121) and not geometry.frames_ok(120)
    assert geometry.nearest_frames(120) == [113, 121]


def test_bad_geometry_fails_before_any_weights_load(compose_train, monkeypatch):
    from diffusers import AutoencoderKLLTXVideo, LTXVideoTransformer3DModel
    from transformers import T5EncoderModel

    cfg, cache_dir = tiny_config(compose_train)
    ltx.LTXModel.resolve(cfg, cache_dir)  # build the twin first: building it loads nothing either way

    def forbidden(*args, **kwargs):
        raise AssertionError("weights loaded before the geometry was checked")

    for cls in (AutoencoderKLLTXVideo, LTXVideoTransformer3DModel, T5EncoderModel):
        monkeypatch.setattr(cls, "from_pretrained", forbidden)
    bad, _ = tiny_config(compose_train, "model.num_frames=16")
    with pytest.raises(ConfigError, match=r"model.num_frames=16 must be 8k\+1.*nearest valid: 9 or 17"):
        build_model(bad, cache_dir)


@pytest.mark.parametrize(("override", "key"), [
    ("model.timestep_sampling=gaussian", "model.timestep_sampling=gaussian"),
    ("model.loss_weighting=snr", "model.loss_weighting=snr"),
    ("model.shift=0", "model.shift=0"),
    ("model.max_sequence_length=0", "model.max_sequence_length=0"),
])
def test_bad_flow_matching_settings_are_named(compose_train, configs_only, override, key):
    cfg, _ = tiny_config(compose_train, override)
    with pytest.raises(ConfigError, match=key):
        ltx.LTXModel.validate(cfg, configs_only)


# -- latents and loss ------------------------------------------------------------------------


def test_normalised_latents_are_what_the_pipeline_denormalises(compose_train):
    from diffusers import LTXPipeline

    cfg, model = tiny_model(compose_train)
    vae = model.vae
    assert not torch.allclose(vae.latents_std, torch.ones_like(vae.latents_std))  # a real test of the stats
    videos = clips(cfg)
    latents = model.encode_videos(videos)
    assert latents.shape == (2, 8, 2, 4, 4)  # [B, C, F, H, W]: 9 frames -> 2, 32 px -> 4
    with torch.no_grad():
        raw = vae.encode(videos.permute(0, 2, 1, 3, 4)).latent_dist.mode()
    back = LTXPipeline._denormalize_latents(latents, vae.latents_mean, vae.latents_std, vae.config.scaling_factor)
    torch.testing.assert_close(back, raw, rtol=1e-5, atol=1e-5)


def shifted(sigma: torch.Tensor, shift: float) -> torch.Tensor:
    return shift * sigma / (1 + (shift - 1) * sigma)


def hand_loss(model, latents: torch.Tensor, prompts: list[str], gens: list[torch.Generator], *, sampling: str,
              shift: float) -> torch.Tensor:
    """Flow matching written out: sigma, then noise, from each sample's generator; x_t, target noise - x0;
    tokens packed by hand; T5 states unmasked with the tokenizer's mask, as LTXPipeline passes them."""
    batch, channels, frames, height, width = latents.shape
    sigmas, noise = [], []
    for g in gens:
        u = torch.rand(1, generator=g) if sampling == "uniform" else torch.sigmoid(torch.randn(1, generator=g))
        sigmas.append(shifted(u, shift))
        noise.append(torch.randn(latents.shape[1:], generator=g))
    sigma = torch.cat(sigmas)
    noise = torch.stack(noise)
    s = sigma.view(-1, 1, 1, 1, 1)
    noisy = (1 - s) * latents + s * noise
    target = noise - latents

    def tokens(x):  # patch size 1: one token per latent position, frame-major, channels last
        return x.reshape(batch, channels, -1).transpose(1, 2)

    ids = model.tokenizer(prompts, padding="max_length", max_length=model.cfg.max_sequence_length, truncation=True,
                          return_tensors="pt")
    with torch.no_grad():
        states = model.text_encoder(ids.input_ids)[0]
    prediction = model.denoiser(
        hidden_states=tokens(noisy), encoder_hidden_states=states, timestep=sigma * 1000,
        encoder_attention_mask=ids.attention_mask.bool(), num_frames=frames, height=height, width=width,
        rope_interpolation_scale=(8 / model.cfg.fps, 8, 8), return_dict=False,
    )[0]
    return ((prediction - tokens(target)) ** 2).mean()


@pytest.mark.parametrize(("overrides", "sampling"), [
    ((), "logit_normal"),  # default: logit-normal, the scheduler's shift for this token count
    (("model.timestep_sampling=uniform", "model.shift=3.0"), "uniform"),
])
def test_loss_equals_a_hand_computation_of_flow_matching(compose_train, overrides, sampling):
    from diffusers.pipelines.ltx.pipeline_ltx import calculate_shift

    cfg, model = tiny_model(compose_train, *overrides)
    latents = model.encode_videos(clips(cfg))
    tokens = math.prod(latents.shape[2:])
    shift = cfg.shift if cfg.shift is not None else math.exp(calculate_shift(tokens, 1024, 4096, 0.95, 2.05))
    with torch.no_grad():
        ours = model.training_loss(latents, model.encode_prompts(PROMPTS), generators())
        expected = hand_loss(model, latents, PROMPTS, generators(), sampling=sampling, shift=shift)
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-6)


def test_encode_prompts_carries_the_mask_in_zeroed_padding(compose_train):
    _, model = tiny_model(compose_train)
    embeds = model.encode_prompts(PROMPTS)
    ids = model.tokenizer(PROMPTS, padding="max_length", max_length=model.cfg.max_sequence_length, truncation=True,
                          return_tensors="pt")
    assert torch.equal(ltx.prompt_mask(embeds), ids.attention_mask.bool())
    assert ids.attention_mask[1].sum() < ids.attention_mask.shape[1]  # the short prompt really is padded


def test_training_shift_is_the_schedulers_inference_shift():
    """sigma -> shift*sigma / (1 + (shift-1)*sigma) with our shift reproduces the scheduler's own
    resolution-dependent schedule (terminal stretch left out: it only applies at inference)."""
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.pipelines.ltx.pipeline_ltx import calculate_shift

    scheduler = FlowMatchEulerDiscreteScheduler(**{**ltx.LTX_SCHEDULER, "shift_terminal": None})
    grid = torch.linspace(1.0, 0.02, 50)
    for num_tokens in (32, 1024, 6144):  # the tiny twin, mu's base, 121x512x768
        mu = calculate_shift(num_tokens, 1024, 4096, 0.95, 2.05)
        scheduler.set_timesteps(sigmas=grid.numpy(), mu=mu)
        ours = shifted(grid, ltx.inference_shift(scheduler.config, num_tokens))
        torch.testing.assert_close(scheduler.sigmas[:-1], ours, rtol=1e-5, atol=1e-6)


# -- export ----------------------------------------------------------------------------------


def test_exported_lora_loads_into_the_stock_pipeline_and_reproduces_generate(compose_train, tmp_path):
    cfg, model = tiny_model(compose_train, "model.finetune=lora")
    with torch.no_grad():  # non-zero adapters, so loading them must change the output
        for param in model.trainable_parameters():
            param.add_(torch.randn_like(param) * 0.5)
    model.export(tmp_path)
    assert (tmp_path / "pytorch_lora_weights.safetensors").is_file()
    pipe = ltx.load_pipeline(model.root)
    pipe.set_progress_bar_config(disable=True)
    call = dict(prompt=PROMPTS[0], num_inference_steps=2, guidance_scale=3.0, output_type="pt",
                **model.generation_kwargs())
    base = pipe(generator=torch.Generator().manual_seed(0), **call).frames
    pipe.load_lora_weights(str(tmp_path))
    adapted = pipe(generator=torch.Generator().manual_seed(0), **call).frames
    assert adapted.shape == (1, cfg.num_frames, 3, cfg.height, cfg.width) and torch.isfinite(adapted).all()
    assert not torch.allclose(base, adapted), "loading the LoRA did not change the pipeline's output"
    ours = model.generate([PROMPTS[0]], num_inference_steps=2, guidance_scale=3.0,
                          generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(ours, adapted.float().clamp(0, 1), atol=1e-4, rtol=1e-4)


def test_full_finetune_export_loads_through_load_pipeline(compose_train, tmp_path):
    _, model = tiny_model(compose_train, "model.finetune=full")
    with torch.no_grad():
        for param in model.trainable_parameters():
            param.add_(torch.randn_like(param) * 0.05)
    model.export(tmp_path)
    pipe = ltx.load_pipeline(model.root, lora_dir=str(tmp_path))
    pipe.set_progress_bar_config(disable=True)
    theirs = pipe(prompt=PROMPTS[0], num_inference_steps=2, guidance_scale=1.0,
                  generator=torch.Generator().manual_seed(0), output_type="pt", **model.generation_kwargs()).frames
    ours = model.generate([PROMPTS[0]], num_inference_steps=2, guidance_scale=1.0,
                          generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(ours, theirs.float().clamp(0, 1), atol=1e-4, rtol=1e-4)


def test_one_sampling_step_is_refused_where_the_stretched_schedule_breaks():
    import numpy as np
    from diffusers import FlowMatchEulerDiscreteScheduler

    scheduler = FlowMatchEulerDiscreteScheduler(**ltx.LTX_SCHEDULER)
    # What LTXPipeline asks for with n steps: sigmas linspace(1, 1/n, n).
    scheduler.set_timesteps(sigmas=np.linspace(1.0, 1.0, 1), mu=1.0)
    assert torch.isnan(scheduler.sigmas).any()  # one step: the stretch divides by zero
    scheduler.set_timesteps(sigmas=np.linspace(1.0, 0.5, 2), mu=1.0)
    assert torch.isfinite(scheduler.sigmas).all()
    with pytest.raises(ConfigError, match="at least 2 steps"):
        ltx.require_sampling_steps(1, scheduler.config)
    ltx.require_sampling_steps(2, scheduler.config)
