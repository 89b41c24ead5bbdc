"""Checkpoints that are either complete or absent.

Each checkpoint is written into a temporary directory and renamed into place, so a crash or
kill mid-write never leaves a directory that ``latest`` would pick up. Trainable weights go to
safetensors; optimizer and scheduler state are loaded back with ``weights_only=True``.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

log = logging.getLogger(__name__)
CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")


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


def rng_state() -> tuple[dict, dict]:
    np_state = np.random.get_state()
    meta = {
        "python": _to_json(random.getstate()),
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
    }
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda{i}"] = state
    return meta, tensors


def restore_rng_state(meta: dict, tensors: dict) -> None:
    random.setstate(_from_json(meta["python"]))
    kind, keys, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(tensors["torch"])
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith("cuda")]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def _to_json(value):
    return [_to_json(v) for v in value] if isinstance(value, tuple | list) else value


def _from_json(value):
    return tuple(_from_json(v) for v in value) if isinstance(value, list) else value


def save_checkpoint(ckpt_root: Path, *, state: TrainState, trainable: dict[str, torch.Tensor],
                    optimizer_state: dict, scheduler_state: dict, scaler_state: dict | None,
                    keep_last: int, extra: dict | None = None) -> Path:
    ckpt_root.mkdir(parents=True, exist_ok=True)
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
        if final.exists():  # re-saving the same step (e.g. final == periodic): replace atomically
            shutil.rmtree(final)
        os.replace(staging, final)
        _fsync_dir(ckpt_root)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    for old in list_checkpoints(ckpt_root)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _fsync_dir(path: Path) -> None:
    for child in path.iterdir() if path.is_dir() else []:
        if child.is_file():
            with open(child, "rb") as handle:
                os.fsync(handle.fileno())


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


def load_checkpoint(path: Path) -> LoadedCheckpoint:
    raw = json.loads((path / "state.json").read_text())
    fields = TrainState.__dataclass_fields__
    state = TrainState(**{k: v for k, v in raw.items() if k in fields})
    opt = torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True)
    return LoadedCheckpoint(
        path=path, state=state, trainable=load_file(path / "trainable.safetensors"),
        optimizer=opt["optimizer"], scheduler=opt["scheduler"], scaler=opt.get("scaler"),
        rng_meta=json.loads((path / "rng.json").read_text()), rng_tensors=load_file(path / "rng.safetensors"),
    )


def find_resume_checkpoint(resume: str, run_dir: Path, run_suffix: str) -> Path:
    """``latest``: newest checkpoint of this run dir, else of the newest sibling run of the same
    model and dataset (``..._<model>_<dataset>``); or an explicit checkpoint / run directory."""
    if resume != "latest":
        path = Path(resume).expanduser()
        if (path / "state.json").is_file():
            return path
        found = list_checkpoints(path / "checkpoints")
        if found:
            return found[-1]
        raise FileNotFoundError(f"resume={resume}: no complete checkpoint there (expected a checkpoint-NNNNNN "
                                f"directory or a run directory containing checkpoints/)")
    candidates = list_checkpoints(run_dir / "checkpoints")
    if not candidates:
        siblings = [d for d in run_dir.parent.glob(f"*{run_suffix}") if d != run_dir]
        for sibling in sorted(siblings, key=lambda d: d.stat().st_mtime, reverse=True):
            candidates = list_checkpoints(sibling / "checkpoints")
            if candidates:
                break
    if not candidates:
        raise FileNotFoundError(
            f"resume=latest: no complete checkpoint in {run_dir} nor in earlier runs matching "
            f"'{run_dir.parent}/*{run_suffix}'. Pass resume=/path/to/run_dir or a checkpoint directory."
        )
    return candidates[-1]
