"""python -m t2v_exp.preflight: the published architectures it builds, its memory arithmetic, and (slow)
the whole check for every real preset on this machine's device."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from t2v_exp.models.registry import published_architectures
from t2v_exp.preflight import GIB, OVERHEAD_GIB, count_parameters, memory_estimate, twin_directories

from .conftest import CONF_DIR, REPO

ARCHITECTURES = published_architectures()
REAL_PRESETS = sorted(p.stem for p in (CONF_DIR / "model").glob("*.yaml") if not p.stem.endswith("_tiny"))
# Wan 2.2 A14B: two 14B experts (56 GB in bf16) do not fit a 24 GB machine's memory to build.
TOO_BIG_TO_BUILD_HERE = {"wan22"}


def test_every_real_preset_that_fits_here_has_a_published_architecture():
    assert set(ARCHITECTURES) == set(REAL_PRESETS) - TOO_BIG_TO_BUILD_HERE
    for name, architecture in ARCHITECTURES.items():
        assert (CONF_DIR / "model" / f"{architecture.twin}.yaml").is_file(), name


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_published_denoisers_have_the_released_parameter_counts(name):
    """Built on the meta device from the facts; count_parameters raises when a count is off by > 0.5%."""
    architecture = ARCHITECTURES[name]
    counts = count_parameters(architecture, twin_directories(architecture, None))
    assert counts["denoiser"] >= sum(architecture.published_parameters.values()) * 0.995
    assert counts["text_encoder"] > 1e8 and counts["vae"] > 1e7  # released sizes, not the twin's


def test_memory_estimate_adds_up_by_hand(compose_train):
    cfg = compose_train(["model=cogvideox", "gpu=a100_80gb", "precision=bf16"])
    counts = {"denoiser": 1_000_000_000, "trainable": 10_000_000, "text_encoder": 500_000_000, "vae": 100_000_000}
    estimate = memory_estimate(cfg, counts, activation_bytes=4 * GIB, checkpointing=True)
    weights = 1e9 * 2 + 1e7 * 4  # frozen bf16 denoiser + fp32 LoRA
    expected = weights + 1e7 * 4 + 1e7 * 8 + 6e8 * 2 + 4 * GIB  # + grads + AdamW moments + text/VAE + activations
    assert estimate.total_gib == pytest.approx((expected * 1.1 + OVERHEAD_GIB * GIB) / GIB, rel=1e-9)
    assert estimate.verdict == "fits" and estimate.card_gib == pytest.approx(80e9 / GIB)
    offloaded = memory_estimate(compose_train(["model=cogvideox", "gpu=rtx4090_24gb", "precision=bf16"]), counts,
                                activation_bytes=40 * GIB, checkpointing=False)
    assert dict(offloaded.rows)["text encoder + VAE (offloaded to the CPU)"] == 0.0
    assert offloaded.verdict == "does not fit"


def run_preflight(*overrides: str, tmp_path: Path) -> dict:
    env = {**os.environ, "T2V_EXP_CACHE": os.environ.get("T2V_EXP_TEST_CACHE", str(tmp_path / "cache")),
           "T2V_EXP_PREFLIGHT_DIR": str(tmp_path / "preflight"), "WANDB_MODE": "offline"}
    result = subprocess.run([sys.executable, "-m", "t2v_exp.preflight", *overrides], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=3000)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    path = next(line.split("report: ", 1)[1] for line in result.stdout.splitlines() if "report: " in line)
    return json.loads(Path(path).read_text())


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_preflight_passes_for_every_real_preset_on_this_device(name, tmp_path):
    report = run_preflight(f"model={name}", "gpu=a100_80gb", "precision=bf16", tmp_path=tmp_path)
    assert report["parameters"]["trainable"] > 0 and torch.isfinite(torch.tensor(report["final_loss"]))
    assert report["export_reload"]["lora_parameters"] > 0
    assert report["verdict"] in ("fits", "does not fit")
    fits = report["activations_per_clip"]
    assert 0 < fits["with_checkpointing"]["per_element"] < fits["without_checkpointing"]["per_element"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_preflight_on_a_gpu_reports_estimate_and_measured_peak(tmp_path):
    report = run_preflight("model=wan", "precision=bf16", "gpu=h200_141gb", tmp_path=tmp_path)
    assert report["device"] == "cuda" and report["step_measured_peak_gib"] > 0
    assert 0.5 < report["step_estimate_gib"] / report["step_measured_peak_gib"] < 2.0
