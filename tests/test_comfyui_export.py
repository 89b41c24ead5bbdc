"""ComfyUI-format LoRA export (model.export_formats=[diffusers,comfyui]), checked against readers we
did not write: diffusers' own loader of non-diffusers Wan LoRAs (WanPipeline.load_lora_weights), its
single-file key converters for the original Wan and AnimateDiff checkpoints, and the motion-LoRA
rule of ComfyUI-AnimateDiff-Evolved (``load_motion_lora_as_patches``: strip ``processor.``, ``_lora``,
``down.``/``up.``, write ``to_out.0``; add ``up @ down`` to that weight unscaled).

The twins train at rank 4; every test here uses alpha 8, so a missing or doubled alpha / rank
scale changes the output and fails.
"""

from __future__ import annotations

import diffusers
import pytest
import torch
from diffusers.loaders.single_file_utils import (
    convert_animatediff_checkpoint_to_diffusers,
    convert_wan_transformer_to_diffusers,
)
from safetensors.torch import load_file

from t2v_exp.errors import ConfigError
from t2v_exp.models import build_model

PROMPT = "a red circle moving left"
BOTH = ["model.export_formats=[diffusers,comfyui]", "model.lora.alpha=8"]


def build(compose, preset: str, *overrides: str):
    cfg = compose([f"model={preset}", *BOTH, *overrides])
    model = build_model(cfg.model, cfg.paths.cache_dir)
    model.place(torch.device("cpu"), torch.float32)
    with torch.no_grad():  # non-zero adapters, so every layer's export matters
        for param in model.trainable_parameters():
            param.add_(torch.randn_like(param, generator=torch.Generator().manual_seed(param.numel())) * 0.5)
    return cfg.model, model


def sample(pipe, model) -> torch.Tensor:
    pipe.set_progress_bar_config(disable=True)
    out = pipe(prompt=PROMPT, num_inference_steps=2, guidance_scale=1.0, output_type="pt",
               generator=torch.Generator().manual_seed(0), **model.generation_kwargs())
    return out.frames.float().clamp(0, 1)


def adapted_modules(module) -> set[str]:
    return {name.rsplit(".lora_A", 1)[0] for name, _ in module.named_parameters() if ".lora_A." in name}


# -- Wan 2.1 / 2.2: ComfyUI's own layout ------------------------------------------------------------


def test_wan_comfyui_lora_loads_through_diffusers_reader_of_original_wan_loras(compose_train, tmp_path):
    cfg, model = build(compose_train, "wan_tiny")
    model.export(tmp_path)
    comfy = tmp_path / "comfyui" / f"{cfg.name}.safetensors"
    tensors = load_file(comfy)
    assert all(k.startswith("diffusion_model.") for k in tensors)
    assert {k.rsplit(".", 1)[-1] for k in tensors} == {"weight", "alpha"}
    assert all(float(v) == 8.0 for k, v in tensors.items() if k.endswith(".alpha"))
    # Our original names are the ones diffusers' converter of original Wan checkpoints turns into
    # exactly the modules we trained.
    originals = {k[len("diffusion_model."):].rsplit(".lora_", 1)[0] for k in tensors if ".lora_down." in k}
    as_diffusers = convert_wan_transformer_to_diffusers({f"{name}.weight": torch.zeros(1) for name in originals})
    assert {k.removesuffix(".weight") for k in as_diffusers} == adapted_modules(model.experts()["transformer"])

    pipe = diffusers.WanPipeline.from_pretrained(model.root)
    base = sample(pipe, model)
    pipe.load_lora_weights(str(tmp_path), adapter_name="diffusers")
    from_diffusers = sample(pipe, model)
    pipe.unload_lora_weights()
    pipe.load_lora_weights(str(comfy.parent), weight_name=comfy.name, adapter_name="comfyui")
    from_comfyui = sample(pipe, model)
    assert not torch.allclose(base, from_comfyui, atol=1e-3)
    torch.testing.assert_close(from_comfyui, from_diffusers, atol=1e-4, rtol=1e-4)


def test_wan22_writes_one_comfyui_lora_per_expert_that_loads_into_it(compose_train, tmp_path):
    cfg, model = build(compose_train, "wan22_tiny")
    model.export(tmp_path)
    high, low = (tmp_path / "comfyui" / f"{cfg.name}_{level}_noise.safetensors" for level in ("high", "low"))
    pipe = diffusers.WanPipeline.from_pretrained(model.root)
    pipe.load_lora_weights(str(tmp_path / "transformer"))
    pipe.load_lora_weights(str(tmp_path / "transformer_2"), load_into_transformer_2=True)
    from_diffusers = sample(pipe, model)
    pipe.unload_lora_weights()
    pipe.load_lora_weights(str(high.parent), weight_name=high.name, adapter_name="high")
    pipe.load_lora_weights(str(low.parent), weight_name=low.name, adapter_name="low", load_into_transformer_2=True)
    torch.testing.assert_close(sample(pipe, model), from_diffusers, atol=1e-4, rtol=1e-4)
    assert load_file(high).keys() == load_file(low).keys()  # same layers, different experts' weights


# -- AnimateDiff: the original motion-LoRA layout ------------------------------------------------------


def motion_lora_patches(path) -> dict[str, torch.Tensor]:
    """ComfyUI-AnimateDiff-Evolved's reading of a motion LoRA: {original motion-module key: up @ down}."""
    state = {k: v for k, v in load_file(path).items() if "temporal" in k}
    patches = {}
    for key in state:
        if "up." in key:
            continue
        model_key = key.replace("processor.", "").replace("_lora", "").replace("down.", "").replace("up.", "")
        model_key = model_key.replace("to_out.", "to_out.0.")
        patches[model_key] = state[key.replace(".down.", ".up.")] @ state[key]
    return patches


def test_animatediff_motion_lora_matches_the_diffusers_lora_as_comfyui_applies_it(compose_train, tmp_path):
    cfg, model = build(compose_train, "animatediff_tiny")
    model.export(tmp_path)
    comfy = tmp_path / "comfyui" / f"{cfg.name}_motion_lora.safetensors"
    patches = motion_lora_patches(comfy)
    assert patches and all("temporal_transformer" in k for k in patches)
    # diffusers' converter of original AnimateDiff motion modules names the weights to patch.
    patches = convert_animatediff_checkpoint_to_diffusers(patches)
    assert {k.removesuffix(".weight") for k in patches} == adapted_modules(model.denoiser)

    pipe = model.stock_pipeline()
    base = sample(pipe, model)
    with torch.no_grad():
        weights = dict(pipe.unet.named_parameters())
        for key, delta in patches.items():
            weights[key].add_(delta)
    from_comfyui = sample(pipe, model)
    # ComfyUI merges the patch into the weight, so the reference is diffusers' own merge of our
    # diffusers export (unmerged LoRA differs from any merge by float32 rounding, ~3e-4 here).
    tuned = model.stock_pipeline(lora_dir=str(tmp_path))
    tuned.fuse_lora()
    assert not torch.allclose(base, from_comfyui, atol=1e-3)
    torch.testing.assert_close(from_comfyui, sample(tuned, model), atol=1e-6, rtol=1e-6)


# -- refusals, before any training ----------------------------------------------------------------------


@pytest.mark.parametrize("overrides, message", [
    (["model=modelscope_tiny", "model.export_formats=[diffusers,comfyui]"],
     "modelscope does not export ['comfyui']"),
    (["model=wan_tiny", "model.export_formats=[diffusers,safetensors]"], "unknown ['safetensors']"),
    (["model=wan_tiny", "model.export_formats=[comfyui]"], "must include diffusers"),
    (["model=wan_tiny", "model.export_formats=[diffusers,comfyui]", "model.finetune=full"],
     "comfyui, a LoRA layout, but model.finetune=full"),
    (["model=animatediff_tiny", "model.export_formats=[diffusers,comfyui]", "model.lora.scope=null"],
     "have no name in AnimateDiff's motion LoRA's ComfyUI layout, e.g. down_blocks.0.attentions.0"),
])
def test_unsupported_export_formats_are_refused_with_the_fix(overrides, message, compose_train):
    from t2v_exp.config import validate

    cfg = compose_train(overrides)
    with pytest.raises(ConfigError) as raised:
        validate(cfg, cuda_available=False)
        build_model(cfg.model, cfg.paths.cache_dir)
    text = str(raised.value)
    assert message in text
    assert "e.g. model." in text or "use model." in text, f"no fix named: {text}"
