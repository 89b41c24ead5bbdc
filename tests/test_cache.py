"""Latent/text cache: reuse across runs, rebuild on change, same loss as on-the-fly encoding."""

from __future__ import annotations

import hashlib
import json

import pytest

from t2v_exp.train import run_training

from .conftest import CONF_DIR

FAST = ["train.max_steps=1", "logger=none", "validation.enabled=false", "dataset.num_videos=6"]


@pytest.fixture
def run(compose_train, tmp_path):
    cache_dir = tmp_path / "cache"

    def _run(name: str, *overrides: str) -> dict:
        run_dir = tmp_path / name
        return run_training(compose_train([*FAST, f"paths.cache_dir={cache_dir}", *overrides], run_dir), run_dir)

    _run.cache_dir = cache_dir
    return _run


def test_cached_training_matches_uncached_and_reuses_the_cache(run):
    plain = run("plain")
    first = run("first", "dataset.cache=latents")
    second = run("second", "dataset.cache=latents")
    assert plain["cache"] is None
    assert first["final_loss"] == pytest.approx(plain["final_loss"], abs=1e-5)
    assert second["final_loss"] == pytest.approx(plain["final_loss"], abs=1e-5)
    assert first["cache"]["encoded_videos"] == 6 and first["cache"]["encoded_prompts"] >= 2
    assert second["cache"] == {"encoded_videos": 0, "reused_videos": 6, "encoded_prompts": 0,
                               "reused_prompts": first["cache"]["encoded_prompts"], "rebuilt_videos": 0,
                               "rebuilt_prompts": 0}


OTHER_TINY_PRESETS = sorted(p.stem for p in (CONF_DIR / "model").glob("*_tiny.yaml") if p.stem != "modelscope_tiny")


@pytest.mark.parametrize("preset", OTHER_TINY_PRESETS)
def test_every_family_trains_from_its_cache_as_on_the_fly(preset, run):
    """The test above for every other discovered family: its latent layout and text states round-trip."""
    plain = run("plain", f"model={preset}")
    cached = run("cached", f"model={preset}", "dataset.cache=latents")
    assert cached["cache"]["encoded_videos"] == 6
    assert cached["final_loss"] == pytest.approx(plain["final_loss"], abs=1e-5)


def test_changing_resolution_or_model_rebuilds(run):
    run("base", "dataset.cache=latents")
    bigger = run("bigger", "dataset.cache=latents", "model.height=40", "model.width=40")
    assert bigger["cache"]["encoded_videos"] == 6  # new geometry: every clip encoded again
    other = run("other", "dataset.cache=latents", "model=animatediff_tiny")
    assert other["cache"]["encoded_videos"] == 6  # another model's latents are never reused
    latent_dirs = sorted(p.name.split("-")[0] for p in (run.cache_dir / "latent_cache" / "latents").iterdir())
    assert latent_dirs == ["animatediff", "modelscope", "modelscope"]


def test_training_from_the_cache_never_runs_the_encoders(compose_train, tmp_path):
    from t2v_exp.engine.trainer import Trainer

    trainer = Trainer.from_config(compose_train([*FAST, f"paths.cache_dir={tmp_path}", "dataset.cache=latents"], tmp_path),
                      tmp_path)
    try:
        calls = []
        for module in (trainer.model.vae.encoder, trainer.model.text_encoder):
            module.register_forward_hook(lambda *_: calls.append(1))
        batches = iter(trainer.batches)
        batch = next(iter(trainer.batches))
        assert "latents" in batch and "video" not in batch
        assert batch["latents"].shape[1:] == (4, 8, 8, 8)  # [C, F, h, w] of the tiny ModelScope twin
        record = trainer.train_step(batches)
        assert record["train/loss"] > 0 and calls == []  # trained without touching VAE or text encoder
    finally:
        trainer.close()


def test_cache_variants_follow_the_epochs_and_extend_without_re_encoding(run, compose_train, tmp_path):
    """Variant v is the clip an uncached run decodes in epoch v; a larger K encodes only the new ones."""
    import torch

    from t2v_exp.engine.batches import instantiate_dataset
    from t2v_exp.engine.trainer import Trainer

    assert run("two", "dataset.cache=latents", "dataset.cache_variants=2")["cache"]["encoded_videos"] == 12
    three = run("three", "dataset.cache=latents", "dataset.cache_variants=3")["cache"]
    assert (three["encoded_videos"], three["reused_videos"]) == (6, 12)

    cfg = compose_train([*FAST, f"paths.cache_dir={run.cache_dir}", "dataset.cache=latents",
                         "dataset.cache_variants=3", "dataset.clip_frames=16"],  # longer clips: random starts
                        tmp_path / "inspect")
    trainer = Trainer.from_config(cfg, tmp_path / "inspect")
    try:
        cached, model = trainer.dataset, trainer.model
        plain = instantiate_dataset(cfg.dataset, split="train", report_dir=None)
        for epoch in (0, 1, 2, 3):
            cached.set_epoch(epoch)
            plain.set_epoch(epoch % 3)
            with torch.no_grad():
                expected = model.encode_videos(plain[0]["video"].unsqueeze(0))[0]
            torch.testing.assert_close(cached[0]["latents"], expected, rtol=1e-5, atol=1e-5)
        cached.set_epoch(0)
        first = cached[0]["latents"]
        cached.set_epoch(1)
        assert not torch.equal(first, cached[0]["latents"])  # another random start: another sample
    finally:
        trainer.close()


def test_cache_variants_must_be_positive(compose_train, tmp_path):
    from t2v_exp.errors import ConfigError

    with pytest.raises(ConfigError, match="dataset.cache_variants=0 must be >= 1"):
        run_training(compose_train([*FAST, "dataset.cache_variants=0"], tmp_path), tmp_path)


def latent_shards(cache_dir) -> list:
    (directory,) = (cache_dir / "latent_cache" / "latents").iterdir()
    return sorted(directory.glob("*.safetensors"))


def test_bad_shards_are_rebuilt_and_training_is_unchanged(run):
    """A truncated shard, a valid shard of the wrong shape and a shard altered in place (same size)
    were reused: the first crashed mid-training, the others trained silently on wrong latents."""
    import torch
    from safetensors.torch import load_file, save_file

    plain = run("plain")
    run("first", "dataset.cache=latents")
    shards = latent_shards(run.cache_dir)
    assert len(shards) == 6 and (shards[0].parent / "index.jsonl").is_file()
    truncated, reshaped, altered = shards[:3]
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    save_file({"latents": torch.zeros(4, 4, 8, 8)}, reshaped)  # a readable shard, half the frames...
    record = {"file": reshaped.name, "size": reshaped.stat().st_size, "shape": [4, 4, 8, 8], "dtype": "torch.float32",
              "sha256": hashlib.sha256(reshaped.read_bytes()).hexdigest()}
    with (reshaped.parent / "index.jsonl").open("a") as index:  # ...recorded too, as a copied cache would be
        index.write(json.dumps(record) + "\n")
    data = bytearray(altered.read_bytes())
    data[-8] ^= 0xFF  # a bit flip inside the tensor bytes
    altered.write_bytes(bytes(data))
    second = run("second", "dataset.cache=latents")
    assert (second["cache"]["encoded_videos"], second["cache"]["reused_videos"]) == (3, 3)
    assert second["cache"]["rebuilt_videos"] == 3
    assert second["final_loss"] == pytest.approx(plain["final_loss"], abs=1e-5)
    good = load_file(shards[3])["latents"]
    for shard in (truncated, reshaped, altered):
        assert load_file(shard)["latents"].shape == good.shape  # every shard readable and of the model's shape
    third = run("third", "dataset.cache=latents")["cache"]  # the rebuilt shards are trusted again
    assert (third["encoded_videos"], third["reused_videos"]) == (0, 6)


def test_vae_weights_changed_in_place_are_not_reused(run):
    """Same checkpoint path, same config, other VAE weights: the latents are encoded again, while
    the prompt embeddings (the text encoder did not change) are still reused."""
    import torch
    from safetensors.torch import load_file, save_file

    first = run("first", "dataset.cache=latents")["cache"]
    (weights,) = (run.cache_dir / "tiny").glob("modelscope_base-*/vae/*.safetensors")
    tensors = load_file(weights)
    name = next(k for k, v in tensors.items() if v.dtype == torch.float32 and v.numel() > 16)
    tensors[name] = tensors[name] * 1.5
    save_file(tensors, weights)
    second = run("second", "dataset.cache=latents")["cache"]
    assert second["encoded_videos"] == 6 and second["reused_videos"] == 0
    assert second["encoded_prompts"] == 0 and second["reused_prompts"] == first["encoded_prompts"]
    assert len(list((run.cache_dir / "latent_cache" / "latents").iterdir())) == 2
