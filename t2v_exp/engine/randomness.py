"""Where training randomness comes from, so a resumed or re-split run draws the same numbers.

Per-sample draws (timestep, noise, caption dropout) come from generators keyed by (seed, step,
sample key); the global RNG that dropout layers use is reseeded from the run's position for each
micro-batch; and the process-wide RNG states travel in every checkpoint.
"""

from __future__ import annotations

import contextlib
import hashlib
import random

import numpy as np
import torch


def sample_generators(seed: int, step: int, keys: list[str]) -> list[torch.Generator]:
    """One generator per sample from (seed, step, sample key): timesteps, noise and caption
    dropout then depend neither on RNG state nor on how the global batch is split over
    processes or accumulation steps."""
    generators = []
    for key in keys:
        key_hash = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little")
        state = np.random.SeedSequence([seed, step, key_hash]).generate_state(2, dtype=np.uint32)
        generators.append(torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1])))
    return generators


def dropout_seed(seed: int, step: int, micro: int, process: int) -> int:
    """The global-RNG seed for one micro-batch's forward/backward. Dropout inside the denoiser
    (UNet3D's temporal convs use p=0.1) draws from the global RNG; seeding it from the run's
    position makes a resumed run draw the same masks as the uninterrupted one, whatever ran in
    between (validation, evaluation, a checkpoint load)."""
    state = np.random.SeedSequence([seed, step, micro, process, 0xD40]).generate_state(2, dtype=np.uint32)
    return int(state[0]) << 32 | int(state[1])


@contextlib.contextmanager
def seeded_global_rng(seed: int, device: torch.device):
    """Run a block on a global RNG seeded with `seed`, leaving the caller's RNG state untouched."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        yield


def apply_caption_dropout(prompts: list[str], probability: float, generators: list[torch.Generator]) -> list[str]:
    if probability <= 0:
        return prompts
    drop = [torch.rand(1, generator=g).item() < probability for g in generators]
    return ["" if d else p for p, d in zip(prompts, drop, strict=True)]


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
