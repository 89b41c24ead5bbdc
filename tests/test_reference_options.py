"""Options of the reference trainers: VAE posterior sampling (model.latent_sampling), offset noise and
min-SNR-gamma for the DDPM families, and the bf16-only guard of CogVideoX-5B."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from hydra.errors import ConfigCompositionException

from t2v_exp.errors import ConfigError
from t2v_exp.models import build_model, resolve_and_validate
from t2v_exp.models.objectives import DDPMObjective
from t2v_exp.train import run_training

from .conftest import CONF_DIR

TINY = sorted(p.stem for p in (CONF_DIR / "model").glob("*_tiny.yaml"))
FAST = ["train.max_steps=2", "logger=none", "validation.enabled=false", "dataset.num_videos=4"]


def clips(cfg, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(2, cfg.num_frames, 3, cfg.height, cfg.width, generator=generator) * 2 - 1


@pytest.mark.parametrize("preset", TINY)
def test_posterior_mean_is_the_latent_and_the_std_is_positive(compose_train, preset):
    cfg = compose_train([f"model={preset}"])
    model = build_model(cfg.model, cfg.paths.cache_dir)
    videos = clips(cfg.model)
    mean, std = model.encode_video_posteriors(videos)
    torch.testing.assert_close(mean, model.encode_videos(videos), rtol=0, atol=0)
    assert std.shape == mean.shape and bool(torch.isfinite(std).all()) and float(std.min()) > 0


def test_posterior_std_by_hand_for_an_image_vae_and_a_normalised_video_vae(compose_train):
    """ModelScope: std * scaling_factor, frames folded into the batch; Wan: std / latents_std per channel."""
    cfg = compose_train(["model=modelscope_tiny"])
    model = build_model(cfg.model, cfg.paths.cache_dir)
    videos = clips(cfg.model)
    b, f = videos.shape[:2]
    with torch.no_grad():
        dist = model.vae.encode(videos.flatten(0, 1)).latent_dist
    expected = (dist.std * model.vae.config.scaling_factor).reshape(b, f, *dist.std.shape[1:]).permute(0, 2, 1, 3, 4)
    torch.testing.assert_close(model.encode_video_posteriors(videos)[1], expected, rtol=1e-4, atol=1e-6)

    cfg = compose_train(["model=wan_tiny"])
    model = build_model(cfg.model, cfg.paths.cache_dir)
    videos = clips(cfg.model)
    with torch.no_grad():
        dist = model.vae.encode(videos.permute(0, 2, 1, 3, 4)).latent_dist
    channel_std = torch.tensor(model.vae.config.latents_std).view(1, -1, 1, 1, 1)
    torch.testing.assert_close(model.encode_video_posteriors(videos)[1], dist.std / channel_std, rtol=1e-4, atol=1e-6)


def test_sampled_latents_train_alike_from_the_cache_and_on_the_fly(compose_train, tmp_path):
    def train(name, *overrides):
        run_dir = tmp_path / name
        cfg = compose_train([*FAST, f"paths.cache_dir={tmp_path / 'cache'}", *overrides], run_dir)
        return run_training(cfg, run_dir)

    mode = train("mode")
    sampled = train("sampled", "model.latent_sampling=sample")
    cached = train("cached", "model.latent_sampling=sample", "dataset.cache=latents")
    assert cached["final_loss"] == pytest.approx(sampled["final_loss"], abs=1e-5)  # same draws either way
    assert sampled["final_loss"] != mode["final_loss"]  # and they are draws, not the mean
    (shard_dir,) = (tmp_path / "cache" / "latent_cache" / "latents").iterdir()
    from safetensors.torch import load_file

    shard = load_file(next(shard_dir.glob("*.safetensors")))["latents"]
    assert shard.shape[0] == 2 and float(shard[1].min()) > 0  # mean and std stacked
    mode_cached = train("mode_cached", "dataset.cache=latents")
    assert mode_cached["final_loss"] == pytest.approx(mode["final_loss"], abs=1e-5)
    assert len(list((tmp_path / "cache" / "latent_cache" / "latents").iterdir())) == 2  # a cache of its own


@pytest.fixture(scope="module")
def objectives_by_preset():
    from t2v_exp.config import compose_job_config

    found = {}
    for preset in TINY:
        cfg = compose_job_config([f"model={preset}"])
        found[preset] = type(getattr(build_model(cfg.model, cfg.paths.cache_dir), "objective", None))
    return found


def test_offset_noise_and_min_snr_reach_the_ddpm_objective(compose_train, objectives_by_preset, tmp_path):
    ddpm = [p for p, kind in objectives_by_preset.items() if kind is DDPMObjective]
    assert len(ddpm) >= 3  # ModelScope, CogVideoX (two twins), AnimateDiff
    for preset in ddpm:
        cfg = compose_train([f"model={preset}", "model.offset_noise=0.1", "model.min_snr_gamma=5"])
        objective = build_model(cfg.model, cfg.paths.cache_dir).objective
        assert (objective.offset_noise, objective.min_snr_gamma) == (0.1, 5.0), preset
    for preset in set(objectives_by_preset) - set(ddpm):  # flow matching has no such knobs: refused
        with pytest.raises(ConfigCompositionException):
            compose_train([f"model={preset}", "model.offset_noise=0.1"])
    plain = run_training(compose_train([*FAST], tmp_path / "plain"), tmp_path / "plain")
    weighted = run_training(compose_train([*FAST, "model.min_snr_gamma=1", "model.offset_noise=0.1"],
                                          tmp_path / "weighted"), tmp_path / "weighted")
    assert weighted["final_loss"] != pytest.approx(plain["final_loss"], rel=1e-3)


@pytest.mark.parametrize(("override", "needle"), [("model.offset_noise=-0.1", "model.offset_noise=-0.1"),
                                                  ("model.min_snr_gamma=0", "model.min_snr_gamma=0.0")])
def test_bad_ddpm_settings_fail_before_loading(compose_train, override, needle):
    cfg = compose_train(["model=modelscope_tiny", override])
    with pytest.raises(ConfigError, match=needle):
        resolve_and_validate(cfg.model, cfg.paths.cache_dir)


def test_cogvideox_5b_architecture_refuses_fp16(compose_train, tmp_path):
    """A copy of the tiny CogVideoX twin whose transformer config has the 5B's 48 heads: only the
    JSON is read, so the guard fires before any weight loads; the 2B-sized twin keeps fp16."""
    cfg = compose_train(["model=cogvideox15_tiny"])
    twin = Path(resolve_and_validate(cfg.model, cfg.paths.cache_dir)[1])
    resolve_and_validate(cfg.model, cfg.paths.cache_dir, "fp16")  # 2B-class heads: fp16 allowed
    five_b = tmp_path / "cogvideox-5b-layout"
    shutil.copytree(twin, five_b)
    config_path = five_b / "transformer" / "config.json"
    config = json.loads(config_path.read_text())
    config["num_attention_heads"] = 48
    config_path.write_text(json.dumps(config))
    cfg = compose_train(["model=cogvideox5b", f"model.pretrained={five_b}"] + [
        f"model.{k}={v}" for k, v in (("num_frames", 9), ("height", 32), ("width", 32))])
    with pytest.raises(ConfigError, match="precision=bf16"):
        resolve_and_validate(cfg.model, cfg.paths.cache_dir, "fp16")
    for allowed in ("bf16", "no"):
        resolve_and_validate(cfg.model, cfg.paths.cache_dir, allowed)
