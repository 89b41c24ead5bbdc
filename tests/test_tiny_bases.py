"""The committed tiny pretrained bases: what ``tiny:<twin>`` loads, what ``@random`` keeps, what is refused."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from t2v_exp import tiny_bases
from t2v_exp.errors import ConfigError
from t2v_exp.models.registry import tiny_builders, tiny_twin

from .conftest import REPO

RECORDS = {p.parent.name: json.loads(p.read_text()) for p in sorted(tiny_bases.BUNDLE_ROOT.glob("*/record.json"))}
BASES = sorted(name for name, record in RECORDS.items() if "oracle" in record)  # pretrained models
FITTED_VAES = sorted(name for name, record in RECORDS.items() if "fit" in record)  # shared fitted VAEs


def test_every_tiny_model_preset_has_a_committed_base():
    presets = {p.stem for p in (REPO / "conf" / "model").glob("*_tiny.yaml")}
    assert {RECORDS[name]["model"] for name in BASES} == presets
    assert {"modelscope", "cogvideox", "sd15", "motion_adapter"} <= set(BASES)


@pytest.mark.parametrize("twin", sorted(RECORDS))
def test_every_committed_file_is_the_one_its_record_names(twin):
    directory = tiny_bases.BUNDLE_ROOT / twin
    record = RECORDS[twin]
    for name, digest in record["files"].items():
        assert hashlib.sha256((directory / name).read_bytes()).hexdigest() == digest, name
    assert set(record["files"]) == {p.name for p in directory.iterdir() if p.name != "record.json"}


def test_the_shared_vaes_are_committed_fits():
    from t2v_exp.models.registry import fitted_vaes

    assert sorted(fitted_vaes()) == FITTED_VAES  # every VAE the twins fit is committed: no machine fits one
    # Round-trip PSNR on the shapes clips: the 2-D VAE sees single frames; the 3-D ones also compress
    # time (LTX-Video's 8x in time and space into 8 channels, the hardest).
    floors = {"image_vae": 28, "cogvideox_vae": 20, "wan_vae": 20, "ltx_vae": 18}
    for name in FITTED_VAES:
        assert RECORDS[name]["fit"]["psnr_db"] > floors[name] and RECORDS[name]["recipe"].endswith(f"record-vae {name}")


def test_the_fitted_image_vae_is_the_committed_one():
    from t2v_exp.models.tiny import fitted_image_vae

    vae = fitted_image_vae()
    committed = load_file(tiny_bases.BUNDLE_ROOT / "image_vae" / "vae.safetensors")
    state = vae.state_dict()
    assert all(torch.equal(state[k], v.float()) for k, v in committed.items())
    config = json.loads((tiny_bases.BUNDLE_ROOT / "image_vae" / "vae.config.json").read_text())
    assert vae.config.scaling_factor == pytest.approx(config["scaling_factor"])


@pytest.mark.parametrize("twin", BASES)
def test_a_base_record_says_how_it_was_made_and_what_it_scores(twin):
    record = RECORDS[twin]
    scores = record["oracle"]["scores"]
    for score in ("color_ok", "direction_ok"):
        assert scores[score]["ci_low"] <= scores[score]["value"] <= scores[score]["ci_high"]
    assert record["recipe"].startswith("python -m t2v_exp.train experiment=pretrain_tiny_")
    assert (REPO / "conf" / "model" / f"{record['model']}.yaml").is_file()  # the preset it is the base of


def test_all_bases_together_fit_the_size_budget():
    total = sum(p.stat().st_size for p in tiny_bases.BUNDLE_ROOT.glob("*/*.safetensors"))
    assert total <= 30e6, f"{total / 1e6:.1f} MB of committed tiny bases (budget 30 MB)"


@pytest.mark.parametrize("twin", BASES)
def test_tiny_spec_loads_the_committed_weights_and_random_keeps_the_random_twin(twin, isolated_environment):
    from t2v_exp.models.common import checkpoint_dir

    builders = tiny_builders()
    pretrained = checkpoint_dir(f"tiny:{twin}", None, what=twin, tiny_builders={twin: builders[twin]})
    random_dir = tiny_twin(twin)
    trained = {c for c, how in tiny_bases.bundle_record(twin)["components"].items() if how == "trained"}
    assert trained, "a base trains at least one component"
    for component, path in tiny_bases.bundle_files(twin).items():
        committed = load_file(path)
        (loaded_file,) = tiny_bases.component_dir(tiny_bases.Path(pretrained), component, twin).glob("*.safetensors")
        (random_file,) = tiny_bases.component_dir(tiny_bases.Path(random_dir), component, twin).glob("*.safetensors")
        loaded, random = load_file(loaded_file), load_file(random_file)
        assert set(loaded) == set(committed)
        for key, value in committed.items():
            assert torch.equal(loaded[key], value.to(loaded[key].dtype)), (component, key)
        # Untrained components (a shared fitted VAE, the text encoder) may equal the random twin's.
        if component in trained:
            assert any(not torch.equal(loaded[k], random[k]) for k in loaded), f"{component} is still random"


def test_a_bundle_for_another_architecture_is_refused(tmp_path, monkeypatch):
    source = tiny_bases.BUNDLE_ROOT / "modelscope"
    fake_root = tmp_path / "bases"
    shutil.copytree(source, fake_root / "modelscope")
    unet = fake_root / "modelscope" / "unet.safetensors"
    tensors = load_file(unet)
    key = next(iter(tensors))
    tensors[key] = torch.zeros(3, 3, dtype=torch.float16)
    save_file(tensors, str(unet))
    monkeypatch.setattr(tiny_bases, "BUNDLE_ROOT", fake_root)
    twin_dir = tmp_path / "twin"
    shutil.copytree(tiny_twin("modelscope"), twin_dir)
    with pytest.raises(ConfigError, match=r"does not fit the twin's unet .*tiny:modelscope@random"):
        tiny_bases.apply_bundle(twin_dir, "modelscope")


def short_pretraining(family: str, run_dir):
    """experiment=pretrain_tiny_<family> cut to two steps and two evaluation videos."""
    command = [sys.executable, "-m", "t2v_exp.train", f"experiment=pretrain_tiny_{family}", "train.max_steps=2",
               "train.warmup_steps=1", "dataset.num_videos=4", "gpu.batch_size=2", "evaluation.num_videos=2",
               "model.num_inference_steps=2", "validation.enabled=false", "logger=none",
               f"hydra.run.dir={run_dir}"]
    subprocess.run(command, cwd=REPO, check=True, capture_output=True, timeout=600)
    return run_dir


def test_record_turns_a_finished_pretraining_run_into_a_bundle(tmp_path, isolated_environment):
    run_dir = short_pretraining("modelscope", tmp_path / "run")
    from t2v_exp.tiny_bases.record import record

    (out,) = record(run_dir, out_root=tmp_path / "bases")
    rec = json.loads((out / "record.json").read_text())
    assert rec["steps"] == 2 and rec["twin"] == "modelscope" and rec["domain"] == "horizontal_motion"
    assert set(rec["components"]) == {"text_encoder", "unet", "vae"}
    assert rec["components"]["unet"] == "trained"
    trained = load_file(run_dir / "final" / "unet" / "diffusion_pytorch_model.safetensors")
    bundled = load_file(out / "unet.safetensors")
    assert all(bundled[k].dtype == torch.float16 for k in bundled)
    assert max((bundled[k].float() - trained[k]).abs().max().item() for k in trained) < 1e-2
    with pytest.raises(ConfigError, match="full"):
        lora_run = tmp_path / "lora_run"
        shutil.copytree(run_dir, lora_run)
        (lora_run / "config.yaml").write_text((run_dir / "config.yaml").read_text().replace(
            "finetune: full", "finetune: lora"))
        record(lora_run, out_root=tmp_path / "bases2")


def test_record_of_an_animatediff_run_writes_both_bases_the_run_trained(tmp_path, isolated_environment):
    """AnimateDiff pretrains two checkpoints at once (the SD1.5 twin's UNet and the motion adapter):
    both become bundles, and loading them back gives exactly the trained UNetMotionModel."""
    from diffusers import UNet2DConditionModel

    run_dir = short_pretraining("animatediff", tmp_path / "run")
    from t2v_exp.tiny_bases.record import record

    written = record(run_dir, out_root=tmp_path / "bases")
    assert sorted(p.name for p in written) == ["motion_adapter", "sd15"]
    sd15 = json.loads((tmp_path / "bases" / "sd15" / "record.json").read_text())
    adapter = json.loads((tmp_path / "bases" / "motion_adapter" / "record.json").read_text())
    assert sd15["components"]["unet"] == adapter["components"]["motion_adapter"] == "trained"
    assert sd15["components"]["vae"].startswith("as in the twin") and sd15["trained_with"] == ["motion_adapter"]
    # The exported image UNet is the motion model's spatial half, loadable by the stock 2-D class.
    unet = UNet2DConditionModel.from_pretrained(run_dir / "final" / "unet")
    random_unet = UNet2DConditionModel.from_pretrained(tiny_twin("sd15"), subfolder="unet")
    assert any(not torch.equal(a, b) for a, b in zip(unet.state_dict().values(), random_unet.state_dict().values(),
                                                        strict=True))
    bundled = load_file(tmp_path / "bases" / "sd15" / "unet.safetensors")
    assert set(bundled) == set(unet.state_dict())
    assert set(load_file(tmp_path / "bases" / "motion_adapter" / "motion_adapter.safetensors")) == set(
        load_file(run_dir / "final" / "motion_adapter" / "diffusion_pytorch_model.safetensors"))
