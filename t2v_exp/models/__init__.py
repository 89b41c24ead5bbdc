"""Model families behind one protocol. ``build_model`` is the only entry the engine uses."""

from __future__ import annotations

from hydra.utils import get_class

from ..errors import ConfigError

# What the engine may use besides the protocol: the prompt-truncation counter families report
# into, and posterior sampling with per-sample generators (shared by cached and on-the-fly runs).
from .common import TruncatedPrompts, sample_posterior
from .protocol import VideoModel
from .spec import spec_for


def model_class(model_cfg):
    """The adapter class named by the config's ``_target_`` (the config is the registry)."""
    return get_class(model_cfg._target_)


def resolve_and_validate(model_cfg, cache_dir: str | None, mixed_precision: str | None = None):
    """Locate the checkpoint and check geometry from its JSON configs only (no weights loaded);
    with ``mixed_precision`` (no | fp16 | bf16), also whether the checkpoint can run in it (the
    family's ``FamilySpec.check_precision``, when it declares one)."""
    cls = model_class(model_cfg)
    spec = spec_for(cls)
    check_export_formats(model_cfg, spec.export_formats)
    roots = cls.resolve(model_cfg, cache_dir)
    cls.validate(model_cfg, roots)
    if mixed_precision is not None and spec.check_precision is not None:
        spec.check_precision(model_cfg, roots, mixed_precision)
    return cls, roots


def check_export_formats(model_cfg, offered: tuple[str, ...]) -> None:
    """Formats beyond diffusers are offered by the family's ``FamilySpec.export_formats`` (default: diffusers only)."""
    missing = [f for f in (model_cfg.get("export_formats") or []) if f not in offered]
    if missing:
        raise ConfigError(f"model.export_formats={list(model_cfg.export_formats)}: {model_cfg.family} does not "
                          f"export {missing} (it offers {list(offered)}); e.g. model.export_formats='[diffusers]'")


def build_model(model_cfg, cache_dir: str | None = None) -> VideoModel:
    cls, roots = resolve_and_validate(model_cfg, cache_dir)
    return cls(model_cfg, roots)


__all__ = ["TruncatedPrompts", "VideoModel", "build_model", "model_class", "resolve_and_validate", "sample_posterior"]
