"""The model families, found rather than listed: every module of this package that declares one.

A family module declares itself with two names:

    FAMILY = "wan"                      # the family's name (config key model.family)
    @dataclass
    class Config(ModelConfig): ...      # its config schema: the shared fields plus its own

Its schema is stored in Hydra's ConfigStore as ``schema/model/<FAMILY>``; the family's YAMLs
pull it in with ``defaults: [/schema/model/<FAMILY>@_here_, _self_]``, so Hydra type-checks
every key of ``model`` against that family's schema. Adding a family is adding its module and
its YAMLs: nothing here or in the engine names a family.
"""

from __future__ import annotations

import importlib
import pkgutil
from functools import cache
from types import ModuleType

SCHEMA_GROUP = "schema/model"


@cache
def family_modules() -> dict[str, ModuleType]:
    """{family name: module} for every module of t2v_exp.models that declares FAMILY and Config."""
    from .. import models

    found: dict[str, ModuleType] = {}
    for info in pkgutil.iter_modules(models.__path__):
        module = importlib.import_module(f"{models.__name__}.{info.name}")
        family = getattr(module, "FAMILY", None)
        if isinstance(family, str) and hasattr(module, "Config"):
            if family in found:
                raise RuntimeError(f"two modules declare family '{family}': {found[family].__name__}, {module.__name__}")
            found[family] = module
    return found


def register_model_schemas(config_store) -> None:
    for family, module in family_modules().items():
        config_store.store(group=SCHEMA_GROUP, name=family, node=module.Config)


def tiny_builders() -> dict:
    """Every tiny twin any family can build, by name ({"modelscope": build_tiny, "sd15": ...})."""
    from .tiny import BUILDERS

    builders = dict(BUILDERS)
    for module in family_modules().values():
        builders.update(getattr(module, "TINY_BUILDERS", {}))
    return builders


def published_architectures() -> dict:
    """Every real preset's published architecture (models/published.py), by preset name."""
    found = {}
    for module in family_modules().values():
        found.update(getattr(module, "PUBLISHED_ARCHITECTURES", {}))
    return found


def tiny_twin(name: str, cache_dir: str | None = None) -> str:
    """The directory of the tiny twin ``name`` (built on first use), for scripts and tests that
    want a twin by name rather than through a model config."""
    from .tiny import tiny_checkpoint

    builders = tiny_builders()
    if name not in builders:
        raise ValueError(f"unknown tiny twin '{name}'; valid: {sorted(builders)}")
    module = next((m for m in family_modules().values() if name in getattr(m, "TINY_BUILDERS", {})), None)
    version = getattr(module, "TINY_VERSION", "") if module else ""
    return tiny_checkpoint(name, cache_dir, builder=builders[name], version=version)
