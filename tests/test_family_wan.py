"""Wan 2.1 (wan_tiny) and Wan 2.2 (wan22_tiny) beyond the contract suite: geometry checked before any
load, latents and prompts exactly as WanPipeline computes them, the loss against a hand-written flow
matching, each Wan 2.2 expert trained only on its own noise range, and the exported LoRAs loading into
the stock WanPipeline through diffusers' own calls."""

from __future__ import annotations

import diffusers
import pytest
import torch
import transformers

from t2v_exp.errors import ConfigError
from t2v_exp.models import build_model, model_class

PRESETS = ["wan_tiny", "wan22_tiny"]
PROMPTS = ["a red circle moving left", "a blue square moving up"]
BATCH = len(PROMPTS)


def build(compose, preset: str, *overrides: str):
    cfg = compose([f"model={preset}", *overrides])
    model = build_model(cfg.model, cfg.paths.cache_dir)
    model.place(torch.device("cpu"), torch.float32)
    return cfg.model, model


def twin_dir(compose, preset: str) -> str:
    """The tiny twin's directory (built on first use)."""
    cfg = compose([f"model={preset}"])
    return model_class(cfg.model).resolve(cfg.model, cfg.paths.cache_dir)


def videos(cfg, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(BATCH, cfg.num_frames, 3, cfg.height, cfg.width, generator=generator) * 2 - 1


def generators(offset: int = 0) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(offset + i) for i in range(BATCH)]


def perturb(params, scale: float) -> None:
    with torch.no_grad():
        for param in params:
            param.add_(torch.randn_like(param) * scale)


# -- geometry and settings, before any weights --------------------------------------------------


@pytest.fixture
def no_weight_loads(monkeypatch):
    """Every Wan component loader fails the test if called."""

    def refuse(cls, *args, **kwargs):
        pytest.fail(f"{cls.__name__}.from_pretrained ran before the config was validated")

    for cls in (diffusers.WanTransformer3DModel, diffusers.AutoencoderKLWan, transformers.UMT5EncoderModel):
        monkeypatch.setattr(cls, "from_pretrained", classmethod(refuse))


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("override, message", [
    ("model.num_frames=10", ["model.num_frames=10 must be 4k+1", "nearest valid: 9 or 13"]),
    ("model.height=40", ["model.height=40 must be a positive multiple of 16", "nearest valid: 32 or 48"]),
    ("model.width=20", ["model.width=20 must be a positive multiple of 16", "nearest valid: 16 or 32"]),
])
def test_bad_geometry_fails_before_any_weights_load(preset, override, message, compose_train, request):
    twin_dir(compose_train, preset)  # build the twin first
    request.getfixturevalue("no_weight_loads")
    cfg = compose_train([f"model={preset}", override])
    with pytest.raises(ConfigError) as error:
        build_model(cfg.model, cfg.paths.cache_dir)
    assert all(part in str(error.value) for part in message), str(error.value)


@pytest.mark.parametrize("preset, override, message", [
    ("wan22_tiny", "model.experts=[mid]", "model.experts=['mid'] must name distinct experts"),
    ("wan22_tiny", "model.experts=[]", "model.experts=[] must name distinct experts"),
    ("wan22_tiny", "model.boundary_ratio=1.5", "model.boundary_ratio=1.5 must be in (0, 1)"),
    ("wan_tiny", "model.timestep_sampling=gaussian", "model.timestep_sampling=gaussian must be one of"),
    ("wan_tiny", "model.shift=0", "model.shift=0.0 must be a finite number > 0"),
    ("wan_tiny", "model.load_dtype=int8", "model.load_dtype=int8 must be one of"),
])
def test_bad_settings_name_the_key(preset, override, message, compose_train):
    cfg = compose_train([f"model={preset}", override])
    with pytest.raises(ConfigError) as error:
        build_model(cfg.model, cfg.paths.cache_dir)
    assert message in str(error.value), str(error.value)


@pytest.mark.parametrize("preset, other, message", [
    ("wan_tiny", "wan22_tiny", "holds two experts (transformer and transformer_2, Wan 2.2 A14B); train it with model=wan22"),
    ("wan22_tiny", "wan_tiny", "has no transformer_2 (Wan 2.2 A14B has two experts); a one-transformer"),
])
def test_each_wan_family_refuses_the_others_checkpoint(preset, other, message, compose_train):
    cfg = compose_train([f"model={preset}", f"model.pretrained={twin_dir(compose_train, other)}"])
    with pytest.raises(ConfigError) as error:
        build_model(cfg.model, cfg.paths.cache_dir)
    assert message in str(error.value), str(error.value)


# -- latents and prompts as the pipeline computes them -------------------------------------------


@pytest.mark.parametrize("preset", PRESETS)
def test_encoded_latents_decode_through_the_pipelines_own_path(preset, compose_train):
    """The stock pipeline un-normalises with the VAE's latents_mean/std before decoding: handing it our
    latents at its last step must give what decoding the raw VAE latents gives."""
    cfg, model = build(compose_train, preset)
    clips = videos(cfg)[:1]
    latents = model.encode_videos(clips)
    with torch.no_grad():
        raw = model.vae.encode(clips.permute(0, 2, 1, 3, 4)).latent_dist.mode()
        expected = (model.vae.decode(raw).sample / 2 + 0.5).clamp(0, 1).permute(0, 2, 1, 3, 4)
    mean = torch.tensor(model.vae.config.latents_mean).view(1, -1, 1, 1, 1)
    std = torch.tensor(model.vae.config.latents_std).view(1, -1, 1, 1, 1)
    assert not torch.allclose(latents, raw, atol=1e-2), "the twin's statistics should make normalising visible"
    torch.testing.assert_close(latents * std + mean, raw, atol=1e-5, rtol=1e-5)
    # ~unit scale: the twin's statistics are those of its own latents of shapes clips
    assert 0.3 < float(model.encode_videos(videos(cfg, seed=1)).std()) < 3

    def swap_in_our_latents(pipe, step, timestep, tensors):
        return {"latents": latents} if step == pipe.num_timesteps - 1 else {}

    pipe = model.stock_pipeline()
    pipe.set_progress_bar_config(disable=True)
    decoded = pipe(prompt=PROMPTS[0], num_inference_steps=2, guidance_scale=1.0, output_type="pt",
                   callback_on_step_end=swap_in_our_latents, generator=torch.Generator().manual_seed(0),
                   **model.generation_kwargs()).frames
    torch.testing.assert_close(decoded.float(), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("preset", PRESETS)
def test_prompt_embeddings_are_the_pipelines(preset, compose_train):
    _, model = build(compose_train, preset)
    prompts = ["  a red   circle moving left ", "a blue square"]  # cleaned like the pipeline cleans them
    ours = model.encode_prompts(prompts)
    pipe = model.stock_pipeline()
    theirs, _ = pipe.encode_prompt(prompts, do_classifier_free_guidance=False, device=torch.device("cpu"),
                                   max_sequence_length=model.generation_kwargs()["max_sequence_length"])
    torch.testing.assert_close(ours, theirs)
    lengths = pipe.tokenizer(prompts, return_tensors="pt", padding=True).attention_mask.sum(dim=1)
    for row, length in zip(ours, lengths, strict=True):
        assert row[length:].abs().sum() == 0 and row[:length].abs().sum(dim=-1).min() > 0


# -- the objective by hand -----------------------------------------------------------------------


def hand_sigma(generator: torch.Generator, sampling: str, shift: float, low: float = 0.0, high: float = 1.0):
    """sigma as the training references draw it: uniform or logit-normal(0, 1), shifted, then mapped into
    the expert's [low, high)."""
    u = torch.rand(1, generator=generator) if sampling == "uniform" else torch.sigmoid(torch.randn(1, generator=generator))
    shifted = shift * u / (1 + (shift - 1) * u)
    return low + (high - low) * shifted


def hand_loss(transformer, latents, embeds, sigmas, noises) -> torch.Tensor:
    """Rectified flow: x_t = (1 - sigma) x0 + sigma noise, timestep sigma * 1000, target noise - x0."""
    errors = []
    for i in range(len(latents)):
        x0, sigma, noise = latents[i : i + 1], sigmas[i], noises[i][None]
        noisy = (1 - sigma) * x0 + sigma * noise
        prediction = transformer(hidden_states=noisy, timestep=sigma * 1000, encoder_hidden_states=embeds[i : i + 1],
                                 return_dict=False)[0]
        errors.append(((prediction - (noise - x0)) ** 2).mean())
    return torch.stack(errors).mean()


@pytest.mark.parametrize("sampling, shift", [("logit_normal", 1.0), ("uniform", 3.0)])
def test_wan_loss_is_flow_matching(sampling, shift, compose_train):
    cfg, model = build(compose_train, "wan_tiny", f"model.timestep_sampling={sampling}", f"model.shift={shift}")
    latents, embeds = model.encode_videos(videos(cfg)), model.encode_prompts(PROMPTS)
    with torch.no_grad():
        loss = model.training_loss(latents, embeds, generators())
        sigmas, noises = [], []
        for g in generators():  # per sample: the timestep first, then the noise
            sigmas.append(hand_sigma(g, sampling, shift))
            noises.append(torch.randn(latents.shape[1:], generator=g))
        expected = hand_loss(model.denoiser, latents, embeds, sigmas, noises)
    torch.testing.assert_close(loss, expected, atol=1e-5, rtol=1e-5)


def test_wan22_loss_is_each_experts_flow_matching_on_its_range(compose_train):
    cfg, model = build(compose_train, "wan22_tiny", "model.timestep_sampling=uniform", "model.shift=3.0")
    latents, embeds = model.encode_videos(videos(cfg)), model.encode_prompts(PROMPTS)
    b = model.boundary_ratio
    assert b == 0.875  # the tiny twin's model_index.json, as the published T2V A14B
    with torch.no_grad():
        loss = model.training_loss(latents, embeds, generators())
        draws = {"transformer": ([], []), "transformer_2": ([], [])}
        for g in generators():  # high-noise expert first, then low; each: timestep, then noise
            for expert, (low, high) in (("transformer", (b, 1.0)), ("transformer_2", (0.0, b))):
                draws[expert][0].append(hand_sigma(g, "uniform", 3.0, low, high))
                draws[expert][1].append(torch.randn(latents.shape[1:], generator=g))
        experts = model.experts()
        per_expert = [hand_loss(experts[name], latents, embeds, *draws[name]) for name in draws]
    torch.testing.assert_close(loss, torch.stack(per_expert).mean(), atol=1e-5, rtol=1e-5)
    assert all(s >= b for s in draws["transformer"][0]) and all(s < b for s in draws["transformer_2"][0])


# -- Wan 2.2: each expert learns only from the timesteps it serves ---------------------------------


def record_timesteps(module, seen: list):
    return module.register_forward_pre_hook(lambda m, args, kwargs: seen.append(kwargs["timestep"].clone()),
                                            with_kwargs=True)


@pytest.mark.parametrize("served, idle", [("transformer_2", "transformer"), ("transformer", "transformer_2")])
def test_a_draw_for_one_expert_trains_only_that_experts_lora(served, idle, compose_train):
    cfg, model = build(compose_train, "wan22_tiny")
    experts = model.experts()
    seen = {name: [] for name in experts}
    hooks = [record_timesteps(module, seen[name]) for name, module in experts.items()]
    loss = model.training_loss(model.encode_videos(videos(cfg)), model.encode_prompts(PROMPTS), generators(),
                               experts=[served])
    loss.backward()
    for hook in hooks:
        hook.remove()
    boundary = model.boundary_ratio * 1000
    assert not seen[idle] and len(seen[served]) == 1
    assert ((seen[served][0] >= boundary) if served == "transformer" else (seen[served][0] < boundary)).all()
    for name, param in experts[served].named_parameters():
        if "lora_" in name:
            assert param.grad is not None, name
        else:
            assert param.grad is None, name
    assert any(p.grad.abs().sum() > 0 for n, p in experts[served].named_parameters() if "lora_B" in n)
    assert all(p.grad is None for p in experts[idle].parameters())


def test_model_experts_low_leaves_the_high_noise_expert_frozen_and_unexported(compose_train, tmp_path):
    cfg, model = build(compose_train, "wan22_tiny", "model.experts=[low]")
    experts = model.experts()
    assert not any(p.requires_grad for p in experts["transformer"].parameters())
    assert all(key.startswith("transformer_2.") for key in model.trainable_state_dict())
    seen = []
    hook = record_timesteps(experts["transformer_2"], seen)
    model.training_loss(model.encode_videos(videos(cfg)), model.encode_prompts(PROMPTS), generators()).backward()
    hook.remove()
    assert (seen[0] < model.boundary_ratio * 1000).all()
    model.export(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["transformer_2"]
    with pytest.raises(KeyError, match="does not train"):
        model.load_trainable_state_dict({"transformer.blocks.0.attn1.to_q.lora_A.weight": torch.zeros(1)})


# -- export into the stock pipeline, with diffusers' own calls ------------------------------------


def stock_call(model) -> dict:
    return dict(prompt=PROMPTS[0], num_inference_steps=2, guidance_scale=1.0, output_type="pt",
                **model.generation_kwargs())


def sample(pipe, model) -> torch.Tensor:
    pipe.set_progress_bar_config(disable=True)
    return pipe(generator=torch.Generator().manual_seed(0), **stock_call(model)).frames.float().clamp(0, 1)


def ours(model) -> torch.Tensor:
    return model.generate([PROMPTS[0]], num_inference_steps=2, guidance_scale=1.0,
                          generator=torch.Generator().manual_seed(0))


def test_wan_lora_loads_with_stock_load_lora_weights(compose_train, tmp_path):
    _, model = build(compose_train, "wan_tiny")
    perturb(model.trainable_parameters(), 0.5)
    model.export(tmp_path)
    assert (tmp_path / "pytorch_lora_weights.safetensors").is_file()
    pipe = diffusers.WanPipeline.from_pretrained(model.root)
    base = sample(pipe, model)
    pipe.load_lora_weights(str(tmp_path))
    tuned = sample(pipe, model)
    assert not torch.allclose(base, tuned)
    torch.testing.assert_close(ours(model), tuned, atol=1e-4, rtol=1e-4)


def test_wan22_loras_load_into_both_experts_of_the_stock_pipeline(compose_train, tmp_path):
    """Two steps at boundary 0.875 are t=999 (high-noise expert) and t=750 (low): both LoRAs matter."""
    _, model = build(compose_train, "wan22_tiny")
    perturb(model.trainable_parameters(), 0.5)
    model.export(tmp_path)
    assert (tmp_path / "transformer" / "pytorch_lora_weights.safetensors").is_file()
    assert (tmp_path / "transformer_2" / "pytorch_lora_weights.safetensors").is_file()
    pipe = diffusers.WanPipeline.from_pretrained(model.root)
    assert pipe.config.boundary_ratio == model.boundary_ratio
    base = sample(pipe, model)
    pipe.load_lora_weights(str(tmp_path / "transformer"))
    high_only = sample(pipe, model)
    pipe.load_lora_weights(str(tmp_path / "transformer_2"), load_into_transformer_2=True)
    both = sample(pipe, model)
    assert not torch.allclose(base, high_only) and not torch.allclose(high_only, both)
    torch.testing.assert_close(ours(model), both, atol=1e-4, rtol=1e-4)


def test_wan22_full_fine_tune_of_one_expert_round_trips_through_load_pipeline(compose_train, tmp_path):
    from t2v_exp.models.wan22 import load_pipeline

    _, model = build(compose_train, "wan22_tiny", "model.finetune=full", "model.experts=[low]")
    perturb(model.trainable_parameters(), 0.05)
    model.export(tmp_path)
    assert (tmp_path / "transformer_2" / "config.json").is_file() and not (tmp_path / "transformer").exists()
    tuned = sample(load_pipeline(model.root, str(tmp_path)), model)
    assert not torch.allclose(sample(load_pipeline(model.root), model), tuned)
    torch.testing.assert_close(ours(model), tuned, atol=1e-4, rtol=1e-4)


def test_the_report_names_each_familys_objective(compose_train):
    from t2v_exp.models.spec import objective_label

    _, wan21 = build(compose_train, "wan_tiny")
    _, wan22 = build(compose_train, "wan22_tiny")
    assert objective_label(wan21) == "flow matching (velocity)"
    assert objective_label(wan22) == "flow matching (velocity) (2 experts)"  # was None: "-" in the sweep report
