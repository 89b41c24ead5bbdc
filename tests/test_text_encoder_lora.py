"""model.text_encoder_lora=true for the CLIP families (ModelScope, AnimateDiff): the text encoder's LoRA
trains, resumes, and its export loads into the stock pipeline, which then encodes prompts as ours does."""

from __future__ import annotations

import pytest
import torch
from hydra.errors import ConfigCompositionException
from safetensors.torch import load_file

from t2v_exp.engine.checkpoint import list_checkpoints
from t2v_exp.errors import ConfigError
from t2v_exp.models import build_model, resolve_and_validate
from t2v_exp.train import run_training

from .conftest import CONF_DIR

FAST = ["train.max_steps=2", "logger=none", "validation.enabled=false", "dataset.num_videos=4", "train.checkpoint_every=1"]
CLIP_TWINS = ["modelscope_tiny", "animatediff_tiny"]
PROMPT = ["a red circle moving left"]


@pytest.mark.parametrize("preset", CLIP_TWINS)
def test_text_encoder_lora_trains_and_its_export_loads_into_the_stock_pipeline(preset, compose_train, tmp_path):
    cfg = compose_train([f"model={preset}", "model.text_encoder_lora=true", *FAST], tmp_path)
    run_training(cfg, tmp_path)
    checkpoint = list_checkpoints(tmp_path / "checkpoints")[-1]
    weights = load_file(checkpoint / "trainable.safetensors")
    text_keys = [k for k in weights if k.startswith("text_encoder.")]
    assert text_keys and any("lora_B" in k and float(weights[k].abs().max()) > 0 for k in text_keys)  # it learnt

    trained = build_model(cfg.model, cfg.paths.cache_dir)
    trained.load_trainable_state_dict(weights)  # the checkpoint restores both LoRAs
    base = build_model(compose_train([f"model={preset}"]).model, cfg.paths.cache_dir)
    pipe = trained.stock_pipeline(str(tmp_path / "final"))
    tokens = pipe.tokenizer(PROMPT, padding="max_length", max_length=pipe.tokenizer.model_max_length,
                            truncation=True, return_tensors="pt")
    with torch.no_grad():
        stock = pipe.text_encoder(tokens.input_ids)[0]
        ours, untrained = trained.encode_prompts(PROMPT), base.encode_prompts(PROMPT)
    torch.testing.assert_close(stock, ours, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(ours, untrained, atol=1e-6)  # the LoRA changes the text states


def test_text_encoder_lora_counts_and_refusals(compose_train, tmp_path):
    plain = build_model(compose_train(["model=modelscope_tiny"]).model)
    both = build_model(compose_train(["model=modelscope_tiny", "model.text_encoder_lora=true"]).model)
    text_trainable = [n for n, p in both.text_encoder.named_parameters() if p.requires_grad]
    assert text_trainable and all("lora_" in n for n in text_trainable)
    assert both.parameter_counts()["trainable"] > plain.parameter_counts()["trainable"]
    with pytest.raises(ConfigError, match="needs model.finetune=lora"):
        cfg = compose_train(["model=modelscope_tiny", "model.text_encoder_lora=true", "model.finetune=full"])
        resolve_and_validate(cfg.model, cfg.paths.cache_dir)
    with pytest.raises(ConfigError, match="dataset.cache=none"):
        run_training(compose_train(["model.text_encoder_lora=true", "dataset.cache=latents", *FAST], tmp_path), tmp_path)
    for preset in sorted(p.stem for p in (CONF_DIR / "model").glob("*_tiny.yaml")):
        if preset not in CLIP_TWINS:  # T5/UMT5 families: no such key in their schema
            with pytest.raises(ConfigCompositionException):
                compose_train([f"model={preset}", "model.text_encoder_lora=true"])
