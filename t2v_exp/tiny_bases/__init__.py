"""Tiny pretrained bases: committed weights that make ``tiny:<family>`` a model that knows something.

A random twin generates noise whatever the prompt, so no comparison on it can show what fine-tuning
changes. Each family's base was trained in full, through the normal engine, on the shapes data's
domain A (``experiment=pretrain_tiny_<family>``); the weights of every component of the twin are
committed here as ``<twin>/<component>.safetensors`` (float16; ``<twin>/<twin>.safetensors`` holds
weights at the twin's root) with ``<twin>/record.json`` (recipe,
steps, wall time, machine, oracle scores with CIs, sha256 of each file).

``tiny:<twin>`` is the random twin with a bundle's weights written over it; ``tiny:<twin>@random``
is the random twin itself (what the pretraining recipes start from).
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import ConfigError

BUNDLE_ROOT = Path(__file__).resolve().parent
RANDOM_SUFFIX = "@random"


def bundle_dir(name: str) -> Path | None:
    """The committed bundle of twin ``name``, or None when it has none (the twin stays random)."""
    directory = BUNDLE_ROOT / name
    return directory if (directory / "record.json").is_file() else None


def parse_tiny_spec(spec: str) -> tuple[str, bool]:
    """``"modelscope"`` -> ("modelscope", has a bundle); ``"modelscope@random"`` -> ("modelscope", False)."""
    if spec.endswith(RANDOM_SUFFIX):
        return spec[: -len(RANDOM_SUFFIX)], False
    return spec, bundle_dir(spec) is not None


def bundle_files(name: str) -> dict[str, Path]:
    directory = bundle_dir(name)
    return {} if directory is None else {p.stem: p for p in sorted(directory.glob("*.safetensors"))}


def component_dir(twin_dir: Path, component: str, twin: str) -> Path:
    """Where ``component`` of twin ``twin`` lives: its subfolder, or the twin's root for a component
    named like the twin (a MotionAdapter keeps its weights there)."""
    return twin_dir if component == twin else twin_dir / component


def bundle_record(name: str) -> dict:
    return json.loads((BUNDLE_ROOT / name / "record.json").read_text())


def bundle_fingerprint(name: str) -> str:
    """Changes whenever a committed file of the bundle does: the cached twin built from it is rebuilt."""
    return bundle_record(name)["bundle_sha256"][:16]


def bundle_recipe(name: str) -> str:
    return bundle_record(name)["recipe"]


def apply_bundle(twin_dir: Path, name: str) -> None:
    """Write bundle ``name``'s weights (and component configs) over the random twin in ``twin_dir``.

    Every tensor must match the twin's by name and shape: a bundle made for another architecture
    is refused rather than half-loaded.
    """
    # deferred: safetensors.torch imports torch; only when a bundle is applied
    from safetensors.torch import load_file, save_file


    for component, path in bundle_files(name).items():
        target_dir = component_dir(twin_dir, component, name)
        targets = sorted(target_dir.glob("*.safetensors"))
        if len(targets) != 1:
            raise ConfigError(f"tiny base '{name}': the twin has no single weights file in {component}/")
        current = load_file(targets[0])
        committed = load_file(path)
        mismatched = sorted(set(current) ^ set(committed)) + sorted(
            k for k in set(current) & set(committed) if current[k].shape != committed[k].shape)
        if mismatched:
            raise ConfigError(
                f"tiny base '{name}' ({path}) does not fit the twin's {component} ({len(mismatched)} tensors differ, "
                f"e.g. {mismatched[0]}): the architecture changed after the base was trained. Retrain it "
                f"({bundle_recipe(name)}, then python -m t2v_exp.tiny_bases record RUN_DIR) "
                f"or use model.pretrained=tiny:{name}{RANDOM_SUFFIX}")
        save_file({k: v.to(current[k].dtype) for k, v in committed.items()}, str(targets[0]),
                  metadata={"format": "pt"})
        config = path.with_suffix(".config.json")
        if config.is_file():  # e.g. the fitted VAE's scaling_factor
            (target_dir / "config.json").write_text(config.read_text())
        del current, committed
