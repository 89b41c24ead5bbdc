"""Model families behind one protocol. ``build_model`` is the only entry the engine uses."""

from __future__ import annotations

from .protocol import VideoModel


def model_class(model_cfg):
    """The adapter class named by the config's ``_target_`` (the config is the registry)."""
    from hydra.utils import get_class

    return get_class(model_cfg._target_)


def resolve_and_validate(model_cfg, cache_dir: str | None, mixed_precision: str | None = None):
    """Locate the checkpoint and check geometry from its JSON configs only (no weights loaded);
    with ``mixed_precision`` (no | fp16 | bf16), also whether the checkpoint can run in it (a family's
    optional ``check_precision``)."""
    cls = model_class(model_cfg)
    check_export_formats(model_cfg, cls)
    roots = cls.resolve(model_cfg, cache_dir)
    cls.validate(model_cfg, roots)
    check_precision = getattr(cls, "check_precision", None)
    if mixed_precision is not None and check_precision is not None:
        check_precision(model_cfg, roots, mixed_precision)
    return cls, roots


def check_export_formats(model_cfg, cls) -> None:
    """Formats beyond diffusers are offered by a family module's EXPORT_FORMATS (default: diffusers only)."""
    import importlib

    from ..errors import ConfigError

    offered = getattr(importlib.import_module(cls.__module__), "EXPORT_FORMATS", ("diffusers",))
    missing = [f for f in (model_cfg.get("export_formats") or []) if f not in offered]
    if missing:
        raise ConfigError(f"model.export_formats={list(model_cfg.export_formats)}: {model_cfg.family} does not "
                          f"export {missing} (it offers {list(offered)}); e.g. model.export_formats='[diffusers]'")


def build_model(model_cfg, cache_dir: str | None = None) -> VideoModel:
    cls, roots = resolve_and_validate(model_cfg, cache_dir)
    return cls(model_cfg, roots)


__all__ = ["VideoModel", "build_model", "model_class", "resolve_and_validate"]
