"""Shared helpers for the benchmarks: machine info, versions, alternating timing, tables, configs.

Import it as ``bench.common`` after putting the repository root on ``sys.path`` (the scripts do
that first), so Hydra can also locate ``bench.common.InMemoryClips`` as a ``dataset._target_``.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path

# Every benchmark runs offline and untracked; set before torch, diffusers or wandb is imported.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CONF_DIR = REPO / "conf"
RESULTS = REPO / "bench" / "results"
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

TINY_FAMILIES = ["modelscope_tiny", "cogvideox_tiny", "animatediff_tiny"]
PACKAGES = ["torch", "diffusers", "transformers", "accelerate", "peft", "hydra-core", "omegaconf", "numpy"]


# -- machine and versions ------------------------------------------------------------------------
def versions(packages: Sequence[str] = PACKAGES) -> dict[str, str | None]:
    found = {}
    for name in packages:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    found["torch"] = torch.__version__  # with the +cuXXX suffix
    return found


def machine_info(packages: Sequence[str] = PACKAGES) -> dict:
    info = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "cuda_available": torch.cuda.is_available(),
        "versions": versions(packages),
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info["gpu"] = {"name": props.name, "memory_gib": round(props.total_memory / 2**30, 1),
                       "capability": f"{props.major}.{props.minor}", "cuda": torch.version.cuda,
                       "count": torch.cuda.device_count()}
    return info


# -- timing ----------------------------------------------------------------------------------------
def alternate(sides: dict[str, Callable[[], float]], rounds: int) -> dict[str, list[float]]:
    """Run each side's block once per round, alternating, and rotate which side goes first.

    Each callable runs one block and returns its own measurement (seconds, or anything
    comparable); drift in machine load then hits every side alike. Returns the raw values.
    """
    names = list(sides)
    raw: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(rounds):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            raw[name].append(sides[name]())
    return raw


def timed(function: Callable[[], object]) -> float:
    started = time.perf_counter()
    function()
    return time.perf_counter() - started


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


# -- output ---------------------------------------------------------------------------------------
def print_table(columns: Sequence[tuple[str, str, int]], rows: Sequence[dict]) -> None:
    """``columns``: (key, header, width); numbers print with 3 significant decimals, None as n/a."""

    def cell(value, width):
        if value is None:
            text = "n/a"
        elif isinstance(value, float):
            text = f"{value:.3f}" if abs(value) < 1e4 else f"{value:.3e}"
        else:
            text = str(value)
        return text.rjust(width) if not isinstance(value, str) else text.ljust(width)

    header = " ".join(h.rjust(w) if i else h.ljust(w) for i, (_, h, w) in enumerate(columns))
    print(header)
    print("-" * len(header))
    for row in rows:
        print(" ".join(cell(row.get(key), width) for key, _, width in columns))


def write_json(path: Path, record: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2, default=str) + "\n")
    print(f"wrote {path}")


# -- configs ----------------------------------------------------------------------------------------
def compose_train(overrides: Sequence[str] = (), run_dir: Path | None = None, config_name: str = "train"):
    """Compose conf/<config_name>.yaml as ``@hydra.main`` would (see ``t2v_exp.config.compose_job_config``)."""
    from t2v_exp.config import compose_job_config

    return compose_job_config(overrides, run_dir, config_name)


def build_tiny_twins() -> None:
    """Build (or find) every tiny twin before anything is timed: a first build, with its ~40 s VAE
    fit (t2v_exp/models/tiny_vae.py), must not land inside a measurement."""
    from t2v_exp.models.registry import tiny_builders, tiny_twin

    for name in tiny_builders():
        tiny_twin(name)


IN_MEMORY_DATASET = "bench.common.InMemoryClips"


class InMemoryClips(torch.utils.data.Dataset):
    """Fixed random clips held in memory: the engine's item contract without any decoding.

    Accepts (and ignores) the keys of any dataset config, so ``dataset._target_`` of e.g. the
    shapes config can point here and everything else (geometry, seed) still comes from the config.
    """

    COLOURS = ["red", "green", "blue", "yellow"]
    SHAPES = ["circle", "square", "triangle", "star"]

    def __init__(self, num_videos: int = 16, num_frames: int = 8, height: int = 32, width: int = 32,
                 seed: int = 0, split: str = "train", **_ignored):
        generator = torch.Generator().manual_seed(int(seed) + (0 if split == "train" else 1))
        self.videos = torch.rand(num_videos, num_frames, 3, height, width, generator=generator) * 2 - 1
        self.prompts = [
            f"a {self.COLOURS[i % 4]} {self.SHAPES[(i // 4) % 4]} moving {'left' if i % 2 else 'right'}"
            for i in range(num_videos)
        ]
        self.split = split

    def __len__(self) -> int:
        return len(self.prompts)

    def __getitem__(self, index: int) -> dict:
        return {"video": self.videos[index], "prompt": self.prompts[index], "key": f"{self.split}-{index:05d}"}

    def set_epoch(self, epoch: int) -> None:  # fixed clips: nothing to reshuffle
        pass

    def captions(self) -> list[str]:
        return list(self.prompts)
