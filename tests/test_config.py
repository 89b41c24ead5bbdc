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


def test_every_missing_component_is_reported_at_once_with_its_own_key(compose_train, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = compose_train(["model=animatediff", "model.pretrained=nobody/sd15-not-cached",
                         "model.motion_adapter=nobody/adapter-not-cached"])
    with pytest.raises(RuntimeError) as info:
        resolve_and_validate(cfg.model, cfg.paths.cache_dir)
    message = str(info.value)
    assert "2 of 2" in message
    assert "download nobody/sd15-not-cached" in message and "set model.pretrained=/path/to/sd15-not-cached" in message
    assert "download nobody/adapter-not-cached" in message
    assert "set model.motion_adapter=/path/to/adapter-not-cached" in message
    assert "model=animatediff_tiny" in message and "cogvideox" not in message
    # one present, one missing: only the missing one is listed
    cfg = compose_train(["model=animatediff", "model.motion_adapter=nobody/adapter-not-cached"])
    cfg.model.pretrained = "tiny:sd15"
    with pytest.raises(RuntimeError) as info:
        resolve_and_validate(cfg.model, cfg.paths.cache_dir)
    assert "1 of 2" in str(info.value) and "model.pretrained" not in str(info.value)


@pytest.mark.parametrize("model", [m for m in MODELS if not m.endswith("_tiny")])
def test_missing_checkpoint_suggests_the_tiny_twin_of_the_same_family(compose_train, monkeypatch, model):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = compose_train([f"model={model}", "model.pretrained=nobody/not-cached"])
    with pytest.raises(RuntimeError) as info:
        resolve_and_validate(cfg.model, cfg.paths.cache_dir)
    (suggested,) = [word for word in str(info.value).split() if word.startswith("model=")]
    assert (CONF_DIR / "model" / f"{suggested.removeprefix('model=')}.yaml").is_file()
    twin = compose_train([suggested])
    assert twin.model.family == cfg.model.family and twin.model._target_ == cfg.model._target_


def test_unreachable_hub_id_says_what_to_download(compose_train, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = compose_train(["model=cogvideox", "model.pretrained=THUDM/CogVideoX-2b-not-cached"])
    with pytest.raises(RuntimeError) as info:
        resolve_and_validate(cfg.model, cfg.paths.cache_dir)
    message = str(info.value)
    line = next(line.strip() for line in message.splitlines() if "download THUDM/CogVideoX-2b-not-cached" in line)
    assert "model.pretrained=" in message
    # the printed command is one the installed huggingface_hub provides (hf in 1.x, not huggingface-cli)
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    program = shutil.which(line.split()[0], path=str(Path(sys.executable).parent))
    assert program, line
    help_text = subprocess.run([program, line.split()[1], "--help"], capture_output=True, text=True, timeout=60)
    assert help_text.returncode == 0 and "--local-dir" in help_text.stdout


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["dataset=video_folder", "dataset.frame_stride=-2"], "dataset.frame_stride=-2 must be >= 1"),
        (["dataset=video_folder", "dataset.frame_stride=0"], "dataset.frame_stride=0 must be >= 1"),
        (["train.log_every=0"], "train.log_every=0 must be >= 1"),
        (["train.stop_after_steps=-1"], "train.stop_after_steps=-1 must be >= 0"),
        (["validation.num_videos=-1"], "validation.num_videos=-1 must be >= 0"),
        (["train.max_grad_norm=nan"], "train.max_grad_norm=nan must be a finite number >= 0.0"),
        (["train.max_grad_norm=-1"], "train.max_grad_norm=-1.0 must be a finite number >= 0.0"),
        (["train.checkpoint_every=-1"], "train.checkpoint_every=-1 must be >= 0"),
        (["train.validate_every=-5"], "train.validate_every=-5 must be >= 0"),
        (["dataset=video_folder", "dataset.max_bad_fraction=nan"], "dataset.max_bad_fraction=nan must be in [0, 1]"),
        (["dataset=video_folder", "dataset.max_bad_fraction=-1"], "dataset.max_bad_fraction=-1.0 must be in [0, 1]"),
        (["dataset=video_folder", "dataset.max_bad_fraction=1.5"], "dataset.max_bad_fraction=1.5 must be in [0, 1]"),
        (["+foo=1"], "Unknown key foo=1"),
        (["+optimizer.momentum=0.9"], "Unknown key optimizer.momentum=0.9"),
        (["+model.lora.rnak=8"], "did you mean model.lora.rank?"),
        (["+dataset.colour=red"], "Unknown key dataset.colour=red"),
        (["seed=-1"], "seed=-1 must be in [0, 4294967295]"),
        (["seed=4294967296"], "seed=4294967296 must be in [0, 4294967295]"),
        (["optimizer.lr=0"], "optimizer.lr=0.0 must be a finite number > 0"),
        (["optimizer.lr=nan"], "optimizer.lr=nan must be a finite number > 0"),
        (["optimizer.betas=[0.9,1.0]"], "optimizer.betas=[0.9, 1.0] must be two numbers in [0, 1)"),
        (["optimizer.betas=[-0.1,0.9]"], "optimizer.betas=[-0.1, 0.9] must be two numbers in [0, 1)"),
        (["optimizer.eps=0"], "optimizer.eps=0.0 must be a finite number > 0"),
        (["optimizer.weight_decay=-0.1"], "optimizer.weight_decay=-0.1 must be a finite number >= 0.0"),
        (["model.lora.dropout=2"], "model.lora.dropout=2.0 must be in [0, 1)"),
        (["model.lora.dropout=1"], "model.lora.dropout=1.0 must be in [0, 1)"),
        (["model.num_frames=100000"], "model.num_frames=100000 is more than modelscope takes here (at most 1024)"),
        (["model=cogvideox_tiny", "model.num_frames=100001"], "model.num_frames=100001 is more than cogvideox"),
        (["model.height=10240"], "model.height=10240 is more than modelscope takes here (at most 4096 pixels)"),
        (["model.width=8192"], "model.width=8192 is more than modelscope"),
        (["dataset=video_folder", "dataset.buckets=[[2048,32,32]]"], "dataset.buckets[0]=[2048, 32, 32]: num_frames"),
    ],
)
def test_silently_wrong_settings_fail_naming_the_key_value_and_a_valid_one(compose_train, overrides, message):
    cfg = compose_train(overrides)
    with pytest.raises(ConfigError) as info:
        validate(cfg, cuda_available=False)
    assert message in str(info.value)
    assert "e.g." in str(info.value) or "valid keys" in str(info.value)


@pytest.mark.parametrize("overrides", [
    ["validation.num_videos=0"], ["train.max_grad_norm=0"], ["train.stop_after_steps=0"], ["seed=0"],
    ["seed=4294967295"], ["dataset=video_folder", "dataset.frame_stride=2"], ["dataset=video_folder",
                                                                             "dataset.max_bad_fraction=1"],
    ["+evaluation.metric_settings.clip_score.model=/models/ViT-B-32.pt"], ["model.lora.dropout=0.05"],
])
def test_edge_values_that_mean_something_pass(compose_train, overrides):
    validate(compose_train(overrides), cuda_available=False)


def test_every_preset_declares_only_schema_keys(compose_train):
    from t2v_exp.config import unknown_keys

    for group in ("experiment", "dataset", "model"):
        for option in sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml")):
            assert unknown_keys(compose_train([f"{group}={option}"])) == [], (group, option)


@pytest.mark.parametrize("bad", ["train.log_every=0", "seed=-1", "optimizer.betas=[0.9,1.5]", "model.lora.dropout=2",
                                 "+optimizer.foo=1", "model.num_frames=100000"])
def test_bad_settings_fail_before_any_model_loads(bad, compose_train, tmp_path):
    """A checkpoint that does not exist would fail the load: the setting must be refused first."""
    from t2v_exp.train import run_training

    cfg = compose_train(["logger=none", f"model.pretrained={tmp_path}/no-such-checkpoint", bad], tmp_path / "run")
    with pytest.raises(ConfigError) as info:
        run_training(cfg, tmp_path / "run")
    assert bad.lstrip("+").split("=")[0] in str(info.value)


def test_no_validation_videos_trains_and_exports(compose_train, tmp_path):
    from t2v_exp.train import run_training

    summary = run_training(compose_train(["logger=none", "train.max_steps=1", "validation.num_videos=0",
                                          "dataset.num_videos=4"], tmp_path), tmp_path)
    assert summary["finished"] and (tmp_path / "final" / "pytorch_lora_weights.safetensors").is_file()
    assert not (tmp_path / "samples").exists()


@pytest.mark.parametrize("primary", ["direction_ok", "shapes/direction_ok", "shapes_oracle/"])
def test_a_bad_primary_endpoint_is_refused_before_anything_loads(compose_train, tmp_path, primary):
    cfg = compose_train([f"evaluation.primary={primary}"], run_dir=tmp_path)
    with pytest.raises(ConfigError, match=r"evaluation.primary=.* must be auto or <metric>/<score>"):
        validate(cfg, cuda_available=False)


def test_the_documented_primary_endpoints_pass(compose_train, tmp_path):
    for primary in ("auto", "shapes_oracle/direction_ok", "clip_score/clip_sim", "fvd/fvd"):
        validate(compose_train([f"evaluation.primary={primary}"], run_dir=tmp_path), cuda_available=False)
