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
        trainer.grad_norm, trainer.update_skipped, trainer.nonfinite_in_a_row = 0.0, False, 0
        record = trainer.train_step(batches)
        assert record["train/loss"] > 0 and calls == []  # trained without touching VAE or text encoder
    finally:
        trainer.close()
