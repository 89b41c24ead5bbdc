"""One contract suite for every model family: the families are found, not listed.

Each ``conf/model/*_tiny.yaml`` is a family's tiny twin; every check below runs on each of them
through the protocol alone (t2v_exp/models/protocol.py). No test here names a family.
"""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from t2v_exp.models import build_model
from t2v_exp.models.protocol import VideoModel
from t2v_exp.models.registry import family_modules

from .conftest import CONF_DIR

TINY_PRESETS = sorted(path.stem for path in (CONF_DIR / "model").glob("*_tiny.yaml"))
BATCH = 2
PROMPTS = ["a red circle moving left", "a blue square moving up"]


def build(preset: str, compose, *overrides: str):
    cfg = compose([f"model={preset}", *overrides])
    model = build_model(cfg.model, cfg.paths.cache_dir)
    model.place(torch.device("cpu"), torch.float32)
    return cfg.model, model


def fixed_videos(cfg, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(BATCH, cfg.num_frames, 3, cfg.height, cfg.width, generator=generator) * 2 - 1


def generators(offset: int = 0) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(offset + i) for i in range(BATCH)]


def test_every_tiny_preset_is_a_registered_family(compose_train):
    assert len(TINY_PRESETS) >= 3
    families = family_modules()
    for preset in TINY_PRESETS:
        cfg = compose_train([f"model={preset}"])
        assert cfg.model.family in families, f"{preset}: family {cfg.model.family} has no module"
        assert OmegaConf.get_type(cfg.model) is families[cfg.model.family].Config


@pytest.mark.parametrize("preset", TINY_PRESETS)
@pytest.mark.parametrize("finetune", ["lora", "full"])
def test_finite_loss_and_only_intended_parameters_get_gradients(preset, finetune, compose_train):
    cfg, model = build(preset, compose_train, f"model.finetune={finetune}")
    assert isinstance(model, VideoModel)
    loss = model.training_loss(model.encode_videos(fixed_videos(cfg)), model.encode_prompts(PROMPTS), generators())
    assert loss.ndim == 0 and torch.isfinite(loss) and loss.item() > 0
    loss.backward()
    trainable = {id(p) for p in model.trainable_parameters()}
    assert trainable, "nothing to train"
    for module in (model.text_encoder, model.vae):
        assert all(p.grad is None and not p.requires_grad for p in module.parameters())
    named = list(model.denoiser.named_parameters())
    for name, param in named:
        if id(param) in trainable:
            assert param.grad is not None, f"{name} is trainable but got no gradient"
        else:
            assert param.grad is None, f"{name} is frozen but got a gradient"
    names = [name for name, param in named if id(param) in trainable]
    assert all(("lora_" in name) == (finetune == "lora") for name in names)
    if model.trainable_scope:
        assert all(model.trainable_scope in name for name in names)
    counts = model.parameter_counts()
    assert 0 < counts["trainable"] < counts["total"]


@pytest.mark.parametrize("preset", TINY_PRESETS)
def test_overfits_one_fixed_batch(preset, compose_train):
    """Same batch, noise and timesteps every step: the objective and gradients can halve the loss."""
    cfg, model = build(preset, compose_train, "model.finetune=full")
    with torch.no_grad():
        latents = model.encode_videos(fixed_videos(cfg))
        embeds = model.encode_prompts(PROMPTS)
    optimizer = torch.optim.AdamW(model.trainable_parameters(), lr=1e-3, weight_decay=0.0)
    first = last = None
    for _ in range(200):
        loss = model.training_loss(latents, embeds, generators())
        first = loss.item() if first is None else first
        last = loss.item()
        if last <= first / 2:
            break
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert last <= first / 2, f"{preset}: loss {first:.4f} -> {last:.4f}"


@pytest.mark.parametrize("preset", TINY_PRESETS)
@pytest.mark.parametrize("finetune", ["lora", "full"])
def test_trainable_weights_round_trip_exactly(preset, finetune, compose_train):
    _, model = build(preset, compose_train, f"model.finetune={finetune}")
    with torch.no_grad():
        for param in model.trainable_parameters():
            param.add_(torch.randn_like(param) * 0.1)
    saved = model.trainable_state_dict()
    _, fresh = build(preset, compose_train, f"model.finetune={finetune}")
    assert any(not torch.equal(fresh.trainable_state_dict()[key], saved[key]) for key in saved)
    fresh.load_trainable_state_dict(saved)
    restored = fresh.trainable_state_dict()
    assert restored.keys() == saved.keys() and all(torch.equal(restored[k], saved[k]) for k in saved)


@pytest.mark.parametrize("preset", TINY_PRESETS)
def test_exported_lora_loads_into_the_stock_pipeline_and_reproduces_generate(preset, compose_train, tmp_path):
    _, model = build(preset, compose_train, "model.finetune=lora")
    with torch.no_grad():  # non-zero adapters, so loading them must change the output
        for param in model.trainable_parameters():
            param.add_(torch.randn_like(param) * 0.5)
    model.export(tmp_path)
    call = dict(prompt=PROMPTS[0], num_inference_steps=2, guidance_scale=1.0, output_type="pt",
                **model.generation_kwargs())
    base_pipe = model.stock_pipeline()
    base_pipe.set_progress_bar_config(disable=True)
    base = base_pipe(generator=torch.Generator().manual_seed(0), **call).frames
    tuned_pipe = model.stock_pipeline(lora_dir=str(tmp_path))
    tuned_pipe.set_progress_bar_config(disable=True)
    tuned = tuned_pipe(generator=torch.Generator().manual_seed(0), **call).frames
    kwargs = model.generation_kwargs()
    assert tuned.shape == (1, kwargs["num_frames"], 3, kwargs["height"], kwargs["width"])
    assert torch.isfinite(tuned).all()
    assert not torch.allclose(base, tuned), "loading the LoRA did not change the pipeline's output"
    ours = model.generate([PROMPTS[0]], num_inference_steps=2, guidance_scale=1.0,
                          generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(ours, tuned.float().clamp(0, 1), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("preset", TINY_PRESETS)
def test_generation_encodes_prompts_itself_and_matches_the_pipelines_own_text_path(preset, compose_train):
    """generate() hands the pipeline embeddings (so an offloaded text encoder never meets token ids on
    the accelerator): the pipeline's text encoder must not run inside it, and with classifier-free
    guidance (an empty negative prompt) the video must equal the stock pipeline's from the prompt."""
    _, model = build(preset, compose_train, "model.finetune=lora")
    call = dict(num_inference_steps=2, guidance_scale=4.0)
    stock = model.stock_pipeline()
    stock.set_progress_bar_config(disable=True)
    reference = stock(prompt=PROMPTS[0], generator=torch.Generator().manual_seed(0), output_type="pt",
                      **call, **model.generation_kwargs()).frames.float().clamp(0, 1)
    inside_pipeline = []
    original_pipeline = model.pipeline

    def pipeline():
        pipe = original_pipeline()
        hook = pipe.text_encoder.register_forward_pre_hook(lambda *_: inside_pipeline.append(1))
        hooks.append(hook)
        return pipe

    hooks = []
    model.pipeline = pipeline
    try:
        ours = model.generate([PROMPTS[0]], generator=torch.Generator().manual_seed(0), **call)
    finally:
        del model.pipeline
        for hook in hooks:
            hook.remove()
    assert hooks, "generate() did not build the pipeline"
    assert inside_pipeline == [], "the pipeline ran its own text encoder"
    torch.testing.assert_close(ours, reference, atol=1e-4, rtol=1e-4)
