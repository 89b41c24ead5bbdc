"""The checkpoint format: complete, intact, and recognisable by the experiment that wrote it.

Each checkpoint is written into a temporary directory and renamed into place, so a crash or
kill mid-write never leaves a directory that ``latest`` would pick up. Trainable weights go to
safetensors; optimizer and scheduler state are loaded back with ``weights_only=True``.

Every checkpoint's ``state.json`` also records a *fingerprint*: the settings that shape its
state (model and base weights, fine-tune mode, LoRA settings, dataset and sampling, global batch
geometry, seed, optimizer class). Resuming compares it with the current config: ``latest`` and
``auto`` pass over checkpoints that differ (saying why), an explicit ``resume=PATH`` that differs
is refused listing each key, old -> new. Everything else (step counts, intervals, evaluation,
optimizer hyper-parameters) may change on resume and is logged.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import zipfile
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from ..config import enum_value
from ..errors import CheckpointError
from .randomness import rng_state
from .tracking import redact

log = logging.getLogger(__name__)
CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
REPLACED_RE = re.compile(r"^\.replaced-(checkpoint-\d+)-\d+$")
FILES = ("state.json", "trainable.safetensors", "optimizer.pt", "rng.json", "rng.safetensors")
# dataset.* keys that change how samples are read or cached, not which samples a step sees.
OPERATIONAL_DATASET_KEYS = ("index_dir", "max_bad_fraction", "cache", "cache_variants")
# Config sections that never shape training state: where files go and how to resume.
UNTRACKED_SECTIONS = ("paths", "resume", "sweep_resume")


@dataclass
class TrainState:
    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    samples_seen: int = 0
    skipped_nonfinite: int = 0


def checkpoint_name(step: int) -> str:
    return f"checkpoint-{step:06d}"


def list_checkpoints(ckpt_root: Path) -> list[Path]:
    if not ckpt_root.is_dir():
        return []
    found = [p for p in ckpt_root.iterdir() if CHECKPOINT_RE.match(p.name) and (p / "state.json").is_file()]
    return sorted(found, key=lambda p: int(CHECKPOINT_RE.match(p.name).group(1)))


# -- fingerprint ---------------------------------------------------------------------------------


def fingerprint(cfg, world_size: int) -> dict[str, Any]:
    """The settings a checkpoint's state depends on, as flat ``key: value`` pairs.

    Two runs may continue each other only when these are equal: other weights, another LoRA
    shape or scale, other data, another sampling or batch geometry, another seed (noise and data
    order derive from it) or another optimizer class would silently train something else.
    """
    model = cfg.model
    found: dict[str, Any] = {
        "model.name": model.name, "model.family": model.family, "model.pretrained": model.pretrained,
        "model.motion_adapter": model.get("motion_adapter"), "model.finetune": enum_value(model.finetune),
    }
    if found["model.finetune"] == "lora":
        lora = model.lora
        found.update({
            "model.lora.rank": int(lora.rank), "model.lora.alpha": float(lora.alpha),
            "model.lora.dropout": float(lora.dropout), "model.lora.target_modules": list(lora.target_modules),
            "model.lora.scope": lora.get("scope"),
        })
    dataset = OmegaConf.to_container(cfg.dataset, resolve=True, enum_to_str=True)
    found.update({f"dataset.{k}": v for k, v in sorted(dataset.items()) if k not in OPERATIONAL_DATASET_KEYS})
    batch, accumulation = int(cfg.gpu.batch_size), int(cfg.gpu.gradient_accumulation_steps)
    # The data position counts batches of batch_size x processes; an optimizer step takes
    # `accumulation` of them. Both products must match for the position to mean the same samples.
    found["batch.global (batch_size x gradient_accumulation_steps x processes)"] = batch * accumulation * world_size
    found["batch.per_micro_step (batch_size x processes)"] = batch * world_size
    found["seed"] = int(cfg.seed)
    found["optimizer._target_"] = cfg.optimizer._target_
    return found


def flat_settings(cfg) -> dict[str, Any]:
    """Every other resolved setting (``train.max_steps``, ``optimizer.lr``, ...), flat, secrets
    masked: recorded so that a resume can log what changed."""
    container = redact(OmegaConf.to_container(cfg, resolve=True, enum_to_str=True))
    for section in UNTRACKED_SECTIONS:
        container.pop(section, None)
    container.pop("dataset", None)  # in the fingerprint, apart from the operational keys below
    flat = _flatten(container)
    dataset = cfg.dataset
    flat.update({f"dataset.{k}": enum_value(dataset.get(k)) for k in OPERATIONAL_DATASET_KEYS if k in dataset})
    return flat


def _flatten(value: dict, prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, child in value.items():
        if isinstance(child, dict) and child:
            flat.update(_flatten(child, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = child
    return flat


def differences(old: dict, new: dict) -> list[str]:
    """``key: old -> new`` for every key whose value differs (a key one side lacks included)."""
    missing = "<not recorded>"
    return [f"{key}: {old.get(key, missing)!r} -> {new.get(key, missing)!r}"
            for key in sorted(set(old) | set(new), key=_key_order(new))
            if old.get(key, missing) != new.get(key, missing)]


def _key_order(reference: dict):
    order = {key: i for i, key in enumerate(reference)}
    return lambda key: (order.get(key, len(order)), key)


# -- save ----------------------------------------------------------------------------------------


def save_checkpoint(ckpt_root: Path, *, state: TrainState, trainable: dict[str, torch.Tensor],
                    optimizer_state: dict, scheduler_state: dict, scaler_state: dict | None,
                    keep_last: int, extra: dict | None = None) -> Path:
    ckpt_root.mkdir(parents=True, exist_ok=True)
    recover_replaced(ckpt_root)
    final = ckpt_root / checkpoint_name(state.step)
    staging = ckpt_root / f".tmp-{final.name}-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        save_file({k: v.detach().cpu().contiguous() for k, v in trainable.items()}, staging / "trainable.safetensors")
        torch.save({"optimizer": optimizer_state, "scheduler": scheduler_state, "scaler": scaler_state},
                   staging / "optimizer.pt")
        meta, tensors = rng_state()
        save_file(tensors, staging / "rng.safetensors")
        (staging / "rng.json").write_text(json.dumps(meta))
        # state.json last: its presence marks the content complete even before the rename.
        (staging / "state.json").write_text(json.dumps({**asdict(state), **(extra or {})}, indent=2))
        _fsync_dir(staging)
        _move_into_place(staging, final)
        _fsync_dir(ckpt_root)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    for old in list_checkpoints(ckpt_root)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _move_into_place(staging: Path, final: Path) -> None:
    """Rename ``staging`` to ``final``. Re-saving a step that exists (a resumed finished run, a
    signal right after a periodic save) first moves the old copy aside instead of deleting it, so
    a crash at any moment leaves one complete copy: :func:`recover_replaced` puts it back."""
    if not final.exists():
        os.replace(staging, final)
        return
    aside = final.parent / f".replaced-{final.name}-{os.getpid()}"
    shutil.rmtree(aside, ignore_errors=True)
    os.replace(final, aside)
    try:
        os.replace(staging, final)
    except BaseException:
        os.replace(aside, final)
        raise
    shutil.rmtree(aside, ignore_errors=True)


def recover_replaced(ckpt_root: Path) -> None:
    """Finish what a crash during :func:`_move_into_place` left: restore the old copy when the
    new one never arrived, else drop it."""
    if not ckpt_root.is_dir():
        return
    for aside in ckpt_root.iterdir():
        match = REPLACED_RE.match(aside.name)
        if not match:
            continue
        final = ckpt_root / match.group(1)
        if (final / "state.json").is_file():
            shutil.rmtree(aside, ignore_errors=True)
        else:
            shutil.rmtree(final, ignore_errors=True)
            os.replace(aside, final)
            log.warning("Restored %s: a re-save of that step was interrupted", final)


def _fsync_dir(path: Path) -> None:
    for child in path.iterdir() if path.is_dir() else []:
        if child.is_file():
            with open(child, "rb") as handle:
                os.fsync(handle.fileno())


# -- integrity -----------------------------------------------------------------------------------


class DamagedCheckpoint(CheckpointError):
    """One file of a checkpoint is missing, truncated or of the wrong shape."""

    def __init__(self, checkpoint: Path, file: str, reason: str):
        super().__init__(f"{Path(checkpoint) / file}: {reason}")
        self.checkpoint, self.file, self.reason = Path(checkpoint), file, reason


def read_state(path: Path) -> dict:
    """``state.json`` as a dict, its step counters checked to be non-negative integers."""
    try:
        raw = json.loads((path / "state.json").read_text())
    except (OSError, ValueError) as exc:
        raise DamagedCheckpoint(path, "state.json", f"not readable JSON ({exc})") from None
    if not isinstance(raw, dict):
        raise DamagedCheckpoint(path, "state.json", f"a JSON object expected, found {type(raw).__name__}")
    for name in (f.name for f in fields(TrainState)):
        value = raw.get(name)
        if type(value) is not int or value < 0:  # bool is an int subclass: refused by `type(...) is`
            raise DamagedCheckpoint(path, "state.json", f"'{name}' must be an integer >= 0, found {value!r}")
    for name in ("fingerprint", "settings"):
        if name in raw and not isinstance(raw[name], dict):
            raise DamagedCheckpoint(path, "state.json", f"'{name}' must be an object, found {raw[name]!r}")
    return raw


def _tensor_names(path: Path, file: str) -> list[str]:
    try:
        with safe_open(str(path / file), framework="pt") as handle:
            return list(handle.keys())
    except FileNotFoundError:
        raise DamagedCheckpoint(path, file, "missing") from None
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error type for every defect
        raise DamagedCheckpoint(path, file, f"not a readable safetensors file ({exc})") from None


def _check_rng_meta(path: Path) -> None:
    try:
        meta = json.loads((path / "rng.json").read_text())
        version, keys, _gauss = meta["python"]
        kind, mt, pos, has_gauss, cached = meta["numpy"]
        valid = (isinstance(version, int) and isinstance(keys, list) and len(keys) == 625 and kind == "MT19937"
                 and isinstance(mt, list) and len(mt) == 624 and isinstance(pos, int)
                 and isinstance(has_gauss, int) and isinstance(cached, int | float))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DamagedCheckpoint(path, "rng.json", f"not the saved Python/numpy RNG states ({exc!r})") from None
    if not valid:
        raise DamagedCheckpoint(path, "rng.json", "not the saved Python/numpy RNG states (wrong types or lengths)")


def verify_checkpoint(path: Path) -> dict:
    """Cheap checks of every file (headers, types, sizes; no tensor data read); returns state.json.

    Catches what a disk or a hand edit does to a checkpoint: truncated safetensors, a state.json
    of the wrong types, damaged RNG files, a 0-byte or truncated optimizer.pt.
    """
    path = Path(path)
    state = read_state(path)
    if not _tensor_names(path, "trainable.safetensors"):
        raise DamagedCheckpoint(path, "trainable.safetensors", "holds no tensors")
    if "torch" not in _tensor_names(path, "rng.safetensors"):
        raise DamagedCheckpoint(path, "rng.safetensors", "has no 'torch' RNG state")
    _check_rng_meta(path)
    optimizer = path / "optimizer.pt"
    if not optimizer.is_file() or optimizer.stat().st_size == 0:
        raise DamagedCheckpoint(path, "optimizer.pt", "missing" if not optimizer.exists() else "empty (0 bytes)")
    if not zipfile.is_zipfile(optimizer):  # torch.save writes a zip; truncation loses its directory
        raise DamagedCheckpoint(path, "optimizer.pt", "truncated or not written by torch.save")
    return state


@dataclass
class LoadedCheckpoint:
    path: Path
    state: TrainState
    trainable: dict[str, torch.Tensor]
    optimizer: dict
    scheduler: dict
    scaler: dict | None
    rng_meta: dict
    rng_tensors: dict
    raw_state: dict = field(default_factory=dict)


def load_checkpoint(path: Path) -> LoadedCheckpoint:
    """Every file, fully read and checked; a defect raises :class:`DamagedCheckpoint` naming the file."""
    path = Path(path)
    raw = verify_checkpoint(path)
    state = TrainState(**{f.name: raw[f.name] for f in fields(TrainState)})
    trainable = load_trainable(path)
    try:
        opt = torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - unpickling fails in many ways; all mean the same here
        raise DamagedCheckpoint(path, "optimizer.pt", f"not loadable ({type(exc).__name__}: {exc})") from None
    if not isinstance(opt, dict) or not isinstance(opt.get("optimizer"), dict) or not isinstance(
            opt.get("scheduler"), dict):
        raise DamagedCheckpoint(path, "optimizer.pt", "no optimizer/scheduler state dicts inside")
    rng_tensors = _load_tensors(path, "rng.safetensors")
    if rng_tensors["torch"].dtype != torch.uint8:
        raise DamagedCheckpoint(path, "rng.safetensors", f"torch RNG state of dtype {rng_tensors['torch'].dtype}")
    return LoadedCheckpoint(
        path=path, state=state, trainable=trainable, optimizer=opt["optimizer"], scheduler=opt["scheduler"],
        scaler=opt.get("scaler"), rng_meta=json.loads((path / "rng.json").read_text()), rng_tensors=rng_tensors,
        raw_state=raw,
    )


def load_trainable(path: Path) -> dict[str, torch.Tensor]:
    """The fine-tuned weights of checkpoint ``path``, read and checked (what evaluate and generate load):
    a damaged or non-finite file raises :class:`DamagedCheckpoint` naming it."""
    path = Path(path)
    if not (path / "trainable.safetensors").is_file():
        raise DamagedCheckpoint(path, "trainable.safetensors", "missing (is this a checkpoint-NNNNNN dir of a run?)")
    trainable = _load_tensors(path, "trainable.safetensors")
    nonfinite = [k for k, v in trainable.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if nonfinite:
        raise DamagedCheckpoint(path, "trainable.safetensors", f"non-finite values (NaN/inf) in {len(nonfinite)} of "
                                f"{len(trainable)} trainable tensors, e.g. {nonfinite[0]}")
    return trainable


def _load_tensors(path: Path, file: str) -> dict[str, torch.Tensor]:
    try:
        return load_file(path / file)
    except Exception as exc:  # noqa: BLE001 - see _tensor_names
        raise DamagedCheckpoint(path, file, f"not a readable safetensors file ({exc})") from None


def previous_valid(checkpoint: Path) -> Path | None:
    """The newest intact checkpoint older than ``checkpoint`` in the same folder."""
    step = int(CHECKPOINT_RE.match(checkpoint.name).group(1)) if CHECKPOINT_RE.match(checkpoint.name) else None
    for older in reversed(list_checkpoints(checkpoint.parent)):
        if step is not None and int(CHECKPOINT_RE.match(older.name).group(1)) >= step:
            continue
        try:
            verify_checkpoint(older)
        except CheckpointError:
            continue
        return older
    return None


def unusable(damage: DamagedCheckpoint) -> CheckpointError:
    """The one error a user sees for a damaged checkpoint: the bad file and where to go instead."""
    earlier = previous_valid(damage.checkpoint)
    fallback = (f"The previous valid checkpoint is {earlier}: resume={earlier}" if earlier else
                f"There is no earlier valid checkpoint in {damage.checkpoint.parent}")
    return CheckpointError(f"Checkpoint {damage.checkpoint} is unusable: {damage.file}: {damage.reason}. "
                           f"{fallback} (or delete {damage.checkpoint} and use resume=latest).")
