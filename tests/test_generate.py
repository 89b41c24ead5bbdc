"""``python -m t2v_exp.generate``: from a trained run with your own prompt, in a real subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import av
import numpy as np
import pytest
from PIL import Image

from .conftest import NO_EVAL, REPO


def run_module(module: str, *overrides: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", module, *overrides], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("gen") / "run"
    done = run_module("t2v_exp.train", *NO_EVAL, "train.max_steps=2", "validation.enabled=false", "logger=none",
                      f"hydra.run.dir={run_dir}")
    assert done.returncode == 0, done.stderr[-3000:]
    return run_dir


def test_generate_from_a_run_writes_decodable_videos_strips_and_prompts(tiny_run, tmp_path):
    out = tmp_path / "gen"
    done = run_module("t2v_exp.generate", f"run_dir={tiny_run}", "prompt=a red circle moving up", "seeds_per_prompt=2",
                      "num_inference_steps=2", f"hydra.run.dir={out}")
    assert done.returncode == 0, done.stderr[-3000:]
    records = [json.loads(line) for line in (out / "prompts.jsonl").read_text().splitlines()]
    assert [r["seed"] for r in records] == [0, 1] and {r["prompt"] for r in records} == {"a red circle moving up"}
    assert records[0]["checkpoint"].endswith("checkpoint-000002") and records[0]["num_inference_steps"] == 2
    for record in records:
        with av.open(str(out / record["file"])) as container:
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
        assert len(frames) == 8 and frames[0].shape == (32, 32, 3)
        strip = np.asarray(Image.open(out / record["strip"]))
        scale = strip.shape[0] // 32
        assert scale >= 4 and strip.shape == (32 * scale, 4 * 32 * scale, 3)
        # the strip's first panel is the video's first frame, enlarged
        assert np.abs(strip[::scale, ::scale][:, :32].astype(int) - frames[0].astype(int)).mean() < 8
    assert "generate:" in done.stderr


def test_generate_refuses_bad_requests_before_loading_anything(tmp_path):
    both = run_module("t2v_exp.generate", "prompt=a", f"prompts={tmp_path / 'p.txt'}", f"hydra.run.dir={tmp_path}/a")
    assert both.returncode != 0 and "exactly one of prompt=" in both.stderr
    frames = run_module("t2v_exp.generate", "model=cogvideox_tiny", "prompt=a red circle", "num_frames=10",
                        f"hydra.run.dir={tmp_path}/b")
    assert frames.returncode != 0 and "model.num_frames=10" in frames.stderr, frames.stderr[-2000:]


def test_the_model_card_is_hub_metadata_and_its_snippet_loads_the_weights(tiny_run):
    import re

    import yaml

    card = (tiny_run / "final" / "README.md").read_text()
    header = yaml.safe_load(re.match(r"^---\n(.*?)\n---\n", card, re.S).group(1))
    assert header["library_name"] == "diffusers" and header["license"] == "cc-by-nc-4.0"
    assert {"text-to-video", "modelscope", "lora"} <= set(header["tags"])
    assert "base_model" not in header  # a tiny twin is not a Hub model
    assert "rank 4, alpha 4.0" in card and "2 optimizer steps" in card and "domain `vertical_motion`" in card
    snippet = re.search(r"```python\n(.*?)```", card, re.S).group(1).replace("<this folder>", str(tiny_run / "final"))
    scope: dict = {}
    exec(snippet, scope)  # the snippet as a user pastes it
    unet = scope["pipe"].unet
    assert any("lora" in name for name, _ in unet.named_parameters())


def test_push_to_hub_offline_says_why_and_how_to_upload_later(tmp_path, monkeypatch):
    from t2v_exp.scoring.model_card import push_to_hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    message = push_to_hub(tmp_path, "me/my-lora")
    assert "not uploaded" in message and f"hf upload me/my-lora {tmp_path}" in message
    assert "needs hub_repo_id" in push_to_hub(tmp_path, None)
