"""Config composition and validation: every combination composes; bad input fails early and clearly."""

from __future__ import annotations

import itertools

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, ValidationError

from t2v_exp.config import validate
from t2v_exp.errors import ConfigError
from t2v_exp.models import resolve_and_validate

from .conftest import CONF_DIR

MODELS = sorted(p.stem for p in (CONF_DIR / "model").glob("*.yaml"))
PRECISIONS = sorted(p.stem for p in (CONF_DIR / "precision").glob("*.yaml"))
GPUS = sorted(p.stem for p in (CONF_DIR / "gpu").glob("*.yaml"))


def test_groups_have_the_documented_options():
    assert {"modelscope", "cogvideox", "animatediff", "modelscope_tiny", "cogvideox_tiny",
            "animatediff_tiny"} <= set(MODELS)
    assert set(PRECISIONS) == {"fp32", "fp16", "bf16"}
    assert {"cpu", "a100_80gb", "h100_80gb", "h200_141gb", "rtx4090_24gb"} <= set(GPUS)


def test_every_model_precision_gpu_combination_composes(compose_train, tmp_path):
    for model, precision, gpu in itertools.product(MODELS, PRECISIONS, GPUS):
        cfg = compose_train([f"model={model}", f"precision={precision}", f"gpu={gpu}"], run_dir=tmp_path)
        resolved = OmegaConf.to_container(cfg, resolve=True)
        assert resolved["model"]["name"] == model
        assert resolved["precision"]["mixed_precision"].value == {"fp32": "no"}.get(precision, precision)
        assert resolved["gpu"]["name"] == gpu
        assert resolved["model"]["_target_"].startswith("t2v_exp.models.")


def test_unknown_key_fails_naming_it(compose_train):
    with pytest.raises(ConfigCompositionException) as info:
        compose_train(["model.lora.rnak=8"])
    assert "rnak" in str(info.value.__cause__ or info.value)


def test_wrong_type_fails_naming_the_key(compose_train):
    with pytest.raises(ConfigCompositionException) as info:
        compose_train(["train.max_steps=many"])
    cause = info.value.__cause__
    assert isinstance(cause, ValidationError | ConfigKeyError) and "max_steps" in str(cause)


def test_bad_enum_value_lists_valid_ones(compose_train):
    with pytest.raises(ConfigCompositionException) as info:
        compose_train(["model.finetune=partial"])
    message = str(info.value.__cause__)
    assert "finetune" in message and "lora" in message and "full" in message


def test_unknown_group_option_lists_choices(compose_train):
    with pytest.raises(ConfigCompositionException) as info:
        compose_train(["model=cogvidex"])
    message = str(info.value)
    assert "cogvideox_tiny" in message and "animatediff" in message


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        (["optimizer.lr=-1e-4"], "optimizer.lr"),
        (["model.num_frames=0"], "model.num_frames"),
        (["model.lora.rank=0"], "model.lora.rank"),
        (["gpu.batch_size=0"], "gpu.batch_size"),
        (["model.caption_dropout=1.5"], "model.caption_dropout"),
        (["precision=fp16", "gpu=cpu"], "precision=fp16"),
        (["gpu=a100_80gb"], "gpu.device=cuda"),
    ],
)
def test_validation_rejects_bad_values_with_the_key(compose_train, overrides, needle):
    cfg = compose_train(overrides)
    with pytest.raises(ConfigError) as info:
        validate(cfg, cuda_available=False)
    assert needle in str(info.value)


def test_cpu_defaults_pass_validation(compose_train):
    validate(compose_train([]), cuda_available=False)


def test_cogvideox_frames_must_be_4k_plus_1_with_nearest_values(compose_train):
    cfg = compose_train(["model=cogvideox_tiny", "model.num_frames=12"])
    with pytest.raises(ConfigError) as info:
        resolve_and_validate(cfg.model, cfg.paths.cache_dir)
    assert "4k+1" in str(info.value) and "9 or 13" in str(info.value)


def test_height_must_fit_vae_and_patch_with_nearest_values(compose_train):
    cfg = compose_train(["model=cogvideox_tiny", "model.height=40"])
    with pytest.raises(ConfigError) as info:
        resolve_and_validate(cfg.model, cfg.paths.cache_dir)
    assert "model.height=40" in str(info.value) and "32 or 48" in str(info.value)


def test_missing_local_checkpoint_says_what_to_do(compose_train, tmp_path):
    cfg = compose_train(["model=cogvideox", f"model.pretrained={tmp_path}/nope"])
    with pytest.raises(RuntimeError) as info:
        resolve_and_validate(cfg.model, cfg.paths.cache_dir)
    assert "model.pretrained" in str(info.value) and "does not exist" in str(info.value)


def test_unreachable_hub_id_says_what_to_download(compose_train, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = compose_train(["model=cogvideox", "model.pretrained=THUDM/CogVideoX-2b-not-cached"])
    with pytest.raises(RuntimeError) as info:
        resolve_and_validate(cfg.model, cfg.paths.cache_dir)
    message = str(info.value)
    assert "huggingface-cli download THUDM/CogVideoX-2b-not-cached" in message and "model.pretrained=" in message
