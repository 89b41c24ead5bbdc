"""The model families, found rather than listed: every module of this package that declares a ``SPEC``.

A family module declares itself with one name (spec.py):

    @dataclass
    class Config(ModelConfig): ...      # its config schema: the shared fields plus its own
    class WanModel: ...                 # its adapter (protocol.VideoModel)
    SPEC = FamilySpec(name="wan", config=Config, adapter=WanModel, ...)

Its schema is stored in Hydra's ConfigStore as ``schema/model/<name>``; the family's YAMLs
pull it in with ``defaults: [/schema/model/<name>@_here_, _self_]``, so Hydra type-checks
every key of ``model`` against that family's schema. Adding a family is adding its module and
its YAMLs: nothing here or in the engine names a family. Everything below is a view over the specs.
"""

from __future__ import annotations

import sys
from types import ModuleType

from .spec import FamilySpec, TinyBuilder, family_specs, spec_for
from .tiny import tiny_checkpoint

SCHEMA_GROUP = "schema/model"

__all__ = ["SCHEMA_GROUP", "family_modules", "family_specs", "fitted_vaes", "published_architectures",
           "register_model_schemas", "spec_for", "tiny_builders", "tiny_twin", "twin_spec"]


def family_modules() -> dict[str, ModuleType]:
    """{family name: the module that declares its spec}, for code that reads a family module's own
    names (its ``load_pipeline``, its ``Config``)."""
    return {name: sys.modules[spec.adapter.__module__] for name, spec in family_specs().items()}


def register_model_schemas(config_store) -> None:
    for name, spec in family_specs().items():
        config_store.store(group=SCHEMA_GROUP, name=name, node=spec.config)


def _merged(field: str, entries: dict[str, dict], allow_shared: bool = False) -> dict:
    """One dict from the families' ``{name: value}`` entries; a name two families declare must be the same
    object (and may only be shared when ``allow_shared``), else which one wins would depend on module order."""
    merged: dict = {}
    owner: dict[str, str] = {}
    for family, values in entries.items():
        for name, value in values.items():
            if name in merged and (not allow_shared or merged[name] is not value):
                raise RuntimeError(f"FamilySpec.{field}['{name}'] is declared differently by {owner[name]} and {family}")
            merged[name], owner[name] = value, family
    return merged


def tiny_builders() -> dict[str, TinyBuilder]:
    """Every tiny twin any family can build, by name ({"modelscope": build_tiny, "sd15": ...})."""
    return _merged("tiny_builders", {n: s.tiny_builders for n, s in family_specs().items()})


def fitted_vaes() -> dict[str, TinyBuilder]:
    """Every shared fitted VAE the twins are built on, by name, with the builder that fits it afresh."""
    return _merged("fitted_vaes", {n: s.fitted_vaes for n, s in family_specs().items()}, allow_shared=True)


def published_architectures() -> dict:
    """Every real preset's published architecture (models/published.py), by preset name."""
    return _merged("published_architectures", {n: s.published_architectures for n, s in family_specs().items()})


def twin_spec(name: str) -> FamilySpec:
    """The spec of the family that builds tiny twin ``name``."""
    for spec in family_specs().values():
        if name in spec.tiny_builders:
            return spec
    raise ValueError(f"unknown tiny twin '{name}'; valid: {sorted(tiny_builders())}")


def tiny_twin(name: str, cache_dir: str | None = None) -> str:
    """The directory of the tiny twin ``name`` (built on first use), for scripts and tests that
    want a twin by name rather than through a model config."""
    spec = twin_spec(name)
    return tiny_checkpoint(name, cache_dir, builder=spec.tiny_builders[name], version=spec.tiny_version)
