"""One declared spec per model family: everything optional about a family, in one typed object.

A family is a module of this package that declares

    SPEC = FamilySpec(name="wan", config=Config, adapter=WanModel, export_formats=("diffusers", "comfyui"),
                      base_license="apache-2.0", tiny_builders={"wan": build_tiny}, ...)

What every adapter must implement is the ``VideoModel`` protocol (protocol.py); what a family may
declare beyond it (its tiny twins, its published architectures, its extra export formats, a precision
check, how its objective is labelled) is a field here with a default, so nothing in the code asks a
family module or an adapter whether it happens to have a name.

The families are found, not listed: :func:`family_specs` imports every module of this package and
keeps those that declare a ``SPEC``. Lookups by name live here (not in registry.py) so that the
engine-facing helpers below need no import of the registry, which imports this module.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .protocol import VideoModel
    from .published import Architecture

#: Writes a tiny twin (or a shared fitted VAE) into the directory it is given.
TinyBuilder = Callable[[Path], None]


def single_objective_label(model: VideoModel) -> str:
    """The default rule: the label of the one objective the adapter trains with (``model.objective``)."""
    return model.objective.label


@dataclass(frozen=True, eq=False)  # compared and hashed by identity: one spec object per family
class FamilySpec:
    """What one family declares; every field but the first three has the default most families want."""

    #: The family's name: the config key ``model.family``, the Hydra schema ``schema/model/<name>``.
    name: str
    #: The family's config schema (a dataclass extending config.ModelConfig).
    config: type
    #: The adapter class (implements protocol.VideoModel); its ``family`` is ``name``.
    adapter: type[VideoModel]
    #: What the training loss measures, for the report (losses of different objectives are not
    #: comparable): a function of the built model. Families with one objective keep the default;
    #: Wan 2.2 labels its per-expert objectives, LTX builds its objective per token count.
    objective_label: Callable[[Any], str] = single_objective_label
    #: model.export_formats this family can write; diffusers always.
    export_formats: tuple[str, ...] = ("diffusers",)
    #: The model card's license when the base checkpoint's own card does not say.
    base_license: str = "other"
    #: The ``model.*`` keys that locate a checkpoint, in the order ``adapter.resolve`` returns their
    #: directories (AnimateDiff: the SD1.5 base, then the motion adapter).
    checkpoint_keys: tuple[str, ...] = ("pretrained",)
    #: Whether ``model.text_encoder_lora=true`` is offered (its Config has config.TextEncoderLoraSettings).
    supports_text_encoder_lora: bool = False
    #: Tiny twins this family builds, by the name ``tiny:<name>`` uses (AnimateDiff: its SD1.5 base
    #: and its motion adapter).
    tiny_builders: Mapping[str, TinyBuilder] = field(default_factory=dict)
    #: Bump when a tiny builder changes so stale twins in users' caches are rebuilt.
    tiny_version: str = ""
    #: The shared VAEs fitted to the shapes data that this family's twins are built on, by name, with
    #: the builder that fits one afresh (``python -m t2v_exp.tiny_bases record-vae <name>``). Families
    #: that share a VAE (ModelScope and AnimateDiff, Wan 2.1 and 2.2) give it the same builder.
    fitted_vaes: Mapping[str, TinyBuilder] = field(default_factory=dict)
    #: Each real preset's published architecture (published.py), by preset name, for preflight.
    published_architectures: Mapping[str, Architecture] = field(default_factory=dict)
    #: ``check_precision(cfg, roots, mixed_precision)``, from JSON configs only: refuses a precision
    #: the checkpoint cannot run in (CogVideoX-5B in fp16); None: every precision is fine.
    check_precision: Callable[[Any, Any, str], None] | None = None

    def __post_init__(self) -> None:
        # Frozen all the way down: a spec is read by every run, nobody may change it in passing.
        object.__setattr__(self, "tiny_builders", MappingProxyType(dict(self.tiny_builders)))
        object.__setattr__(self, "fitted_vaes", MappingProxyType(dict(self.fitted_vaes)))
        object.__setattr__(self, "published_architectures", MappingProxyType(dict(self.published_architectures)))
        object.__setattr__(self, "export_formats", tuple(self.export_formats))
        object.__setattr__(self, "checkpoint_keys", tuple(self.checkpoint_keys))


@cache
def family_specs() -> dict[str, FamilySpec]:
    """{family name: spec} for every module of t2v_exp.models that declares ``SPEC``."""
    from .. import models  # here, not at the top: the package's __init__ imports this module

    found: dict[str, FamilySpec] = {}
    for info in pkgutil.iter_modules(models.__path__):
        module = importlib.import_module(f"{models.__name__}.{info.name}")
        spec = vars(module).get("SPEC")  # the one name a family module declares itself by
        if not isinstance(spec, FamilySpec):
            continue
        if spec.name in found:
            raise RuntimeError(f"two modules declare family '{spec.name}': "
                               f"{found[spec.name].adapter.__module__}, {module.__name__}")
        found[spec.name] = spec
    return found


def spec_for(subject: Any) -> FamilySpec:
    """The spec of a model config, a built model or an adapter class: each names its ``family``."""
    name = subject.family
    specs = family_specs()
    if name not in specs:
        raise ValueError(f"model.family={name}: no t2v_exp family module declares it (known: {sorted(specs)})")
    return specs[name]


# -- what the engine asks about a built model -------------------------------------------------


def objective_label(model: VideoModel) -> str | None:
    """What the training loss measures, for the report ("DDPM epsilon", "flow matching (velocity)
    (2 experts)", ...): the family's declared rule applied to the model."""
    return spec_for(model).objective_label(model)


def trains_text_encoder(model: VideoModel) -> bool:
    """Whether the text encoder trains too (``model.text_encoder_lora=true``): its prompt embeddings
    then change every step, so they cannot be cached and need one process."""
    return spec_for(model).supports_text_encoder_lora and model.text_encoder_lora is not None
