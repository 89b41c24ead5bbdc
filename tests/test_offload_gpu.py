"""gpu.cpu_offload on a real accelerator: the denoiser trains on CUDA while the text encoder and VAE stay
on the CPU, and validation, the closing evaluation and the export still run (generation hands the
pipeline prompt embeddings and decodes where the VAE lives). CI has no GPU: these skip there; the CPU
half of the contract (the pipeline never runs its own text encoder) is in test_family_contract.py."""

from __future__ import annotations

import json

import pytest
import torch

from t2v_exp.train import run_training

from .conftest import CONF_DIR

TINY_PRESETS = sorted(path.stem for path in (CONF_DIR / "model").glob("*_tiny.yaml"))

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (the offload splits devices)"),
]


@pytest.mark.parametrize("preset", TINY_PRESETS)
def test_offloaded_run_validates_evaluates_and_exports_on_cuda(preset, compose_train, tmp_path):
    cfg = compose_train([f"model={preset}", "gpu=rtx4090_24gb", "gpu.gradient_accumulation_steps=1",
                         "train.max_steps=2", "evaluation.num_videos=2", "train.evaluate_base=true", "train.evaluate_at_end=true",
                         # tiling splits a tiny twin's 32x32 frames into tiles smaller than its convs
                         "gpu.vae_tiling=false", "logger=none", "gpu.num_workers=0"], tmp_path)
    summary = run_training(cfg, tmp_path)
    assert summary["final_loss"] > 0
    assert (tmp_path / "final").is_dir() and any((tmp_path / "final").rglob("*.safetensors"))
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["metrics"]["temporal"]["status"] == "ok"
