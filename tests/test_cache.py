"""Latent/text cache: reuse across runs, rebuild on change, same loss as on-the-fly encoding."""

from __future__ import annotations

import pytest

from t2v_exp.engine.trainer import run_training

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
                               "reused_prompts": first["cache"]["encoded_prompts"]}


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

    trainer = Trainer(compose_train([*FAST, f"paths.cache_dir={tmp_path}", "dataset.cache=latents"], tmp_path),
                      tmp_path)
    try:
        trainer.setup()
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
                         "dataset.cache_variants=3"], tmp_path / "inspect")
    trainer = Trainer(cfg, tmp_path / "inspect")
    try:
        trainer.setup()
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
