"""Every family's declared spec (t2v_exp/models/spec.py) is complete and agrees with its module, its
adapter, its config schema and the YAMLs that use it. The families come from the registry, the presets
from conf/model/: a new family is checked without being listed here."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import pkgutil

import pytest
import yaml

from t2v_exp import models
from t2v_exp.config import EXPORT_FORMATS, ModelConfig
from t2v_exp.models import build_model
from t2v_exp.models.lora import TextEncoderLoraSettings
from t2v_exp.models.protocol import VideoModel
from t2v_exp.models.registry import (
    SCHEMA_GROUP,
    family_specs,
    fitted_vaes,
    published_architectures,
    register_model_schemas,
    tiny_builders,
)
from t2v_exp.models.spec import FamilySpec, objective_label, spec_for, trains_text_encoder

from .conftest import CONF_DIR, FAMILIES

SPECS = family_specs()
PRESETS = sorted(path.stem for path in (CONF_DIR / "model").glob("*.yaml"))
TINY_PREFIX = "tiny:"
#: The labels the report has always shown (engine/trainer.py's objective_label before the specs):
#: a regression guard for the families that existed then; any other family must give some label.
KNOWN_LABELS = {"modelscope": "DDPM epsilon", "cogvideox": "DDPM v-prediction", "animatediff": "DDPM epsilon",
                "wan": "flow matching (velocity)", "wan22": "flow matching (velocity) (2 experts)",
                "ltx": "flow matching"}
PROTOCOL_DATA = sorted(VideoModel.__annotations__)
PROTOCOL_METHODS = sorted(name for name, value in vars(VideoModel).items()
                          if not name.startswith("_") and callable(value))


def preset(name: str) -> tuple[str | None, dict]:
    """(the family whose schema ``conf/model/<name>.yaml`` pulls in, its keys merged down its defaults chain),
    read from the YAML files alone (Hydra composition is test_family_contract's)."""
    data = yaml.safe_load((CONF_DIR / "model" / f"{name}.yaml").read_text())
    family, merged = None, {}
    for entry in data.get("defaults", []):
        if not isinstance(entry, str) or entry == "_self_":
            continue
        if entry.startswith(f"/{SCHEMA_GROUP}/"):
            family = entry.removeprefix(f"/{SCHEMA_GROUP}/").split("@")[0]
        elif not entry.startswith("/"):  # another preset of this group: its keys, then ours on top
            family, base = preset(entry)
            merged.update(base)
    merged.update({k: v for k, v in data.items() if k != "defaults"})
    return family, merged


def presets_of(family: str) -> list[str]:
    return [name for name in PRESETS if preset(name)[0] == family]


def test_the_registry_finds_every_family_module_by_its_spec():
    assert len(SPECS) >= 6 and all(isinstance(spec, FamilySpec) for spec in SPECS.values())
    # A module with a config schema but no SPEC would be a family nobody finds: none may exist.
    schema_modules = set()
    for info in pkgutil.iter_modules(models.__path__):
        module = importlib.import_module(f"{models.__name__}.{info.name}")
        if any(inspect.isclass(v) and issubclass(v, ModelConfig) and v.__module__ == module.__name__
               for v in vars(module).values()):
            schema_modules.add(module.__name__)
    assert schema_modules == {spec.adapter.__module__ for spec in SPECS.values()}
    for name, spec in SPECS.items():
        assert importlib.import_module(spec.adapter.__module__).SPEC is spec, name


@pytest.mark.parametrize("name", sorted(SPECS))
def test_the_name_is_the_config_family_key_and_the_adapter_family(name):
    spec = SPECS[name]
    assert spec.name == name
    assert dataclasses.is_dataclass(spec.config) and issubclass(spec.config, ModelConfig)
    assert {f.name: f.default for f in dataclasses.fields(spec.config)}["family"] == name
    assert spec.adapter.family == name
    assert spec_for(spec.adapter) is spec


def test_each_family_schema_is_registered_under_its_name():
    stored = []

    class Store:
        def store(self, *, group, name, node):
            stored.append((group, name, node))

    register_model_schemas(Store())
    assert sorted(stored, key=lambda s: s[1]) == [(SCHEMA_GROUP, n, SPECS[n].config) for n in sorted(SPECS)]


@pytest.mark.parametrize("name", sorted(SPECS))
def test_the_yamls_that_use_the_family_agree_with_its_spec(name):
    spec = SPECS[name]
    own = presets_of(name)
    assert own, f"no conf/model/*.yaml uses the {name} schema"
    assert f"{name}_tiny" in own, f"conf/model/{name}_tiny.yaml (its tiny twin preset) is missing"
    assert FAMILIES[name] == f"{name}_tiny"
    target = f"{spec.adapter.__module__}.{spec.adapter.__qualname__}"
    for preset_name in own:
        _, keys = preset(preset_name)
        assert keys["_target_"] == target, preset_name
        assert keys.get("family", name) == name, preset_name
        for key in spec.checkpoint_keys:
            value = str(keys.get(key))
            if value.startswith(TINY_PREFIX):
                twin = value.removeprefix(TINY_PREFIX).split("@")[0]
                assert twin in spec.tiny_builders, f"{preset_name}: model.{key}={value} is not a {name} twin"


def test_every_tiny_name_a_yaml_uses_exists_and_every_twin_is_used():
    builders = tiny_builders()  # also: no two families declare one twin name
    used = set()
    for preset_name in PRESETS:
        for key, value in preset(preset_name)[1].items():
            if isinstance(value, str) and value.startswith(TINY_PREFIX):
                twin = value.removeprefix(TINY_PREFIX).split("@")[0]
                assert twin in builders, f"{preset_name}: model.{key}={value} names no spec's tiny builder"
                used.add(twin)
    assert used == set(builders), f"tiny builders no preset uses: {sorted(set(builders) - used)}"


@pytest.mark.parametrize("name", sorted(SPECS))
def test_the_declared_options_are_well_formed(name):
    spec = SPECS[name]
    assert "diffusers" in spec.export_formats and set(spec.export_formats) <= set(EXPORT_FORMATS)
    assert isinstance(spec.base_license, str) and spec.base_license.strip() == spec.base_license != ""
    assert spec.supports_text_encoder_lora == issubclass(spec.config, TextEncoderLoraSettings)
    config_fields = {f.name for f in dataclasses.fields(spec.config)}
    assert spec.checkpoint_keys[0] == "pretrained" and set(spec.checkpoint_keys) <= config_fields
    assert spec.check_precision is None or callable(spec.check_precision)
    assert callable(spec.objective_label)
    assert spec.tiny_builders and all(callable(b) for b in spec.tiny_builders.values())
    assert isinstance(spec.tiny_version, str)
    assert all(callable(b) for b in spec.fitted_vaes.values())
    for preset_name, architecture in spec.published_architectures.items():
        assert preset(preset_name)[0] == name, f"published architecture {preset_name} is not a {name} preset"
        assert preset(architecture.twin)[0] == name, f"{preset_name}'s twin {architecture.twin} is not a {name} preset"
    with pytest.raises(TypeError):  # frozen, mappings included
        spec.tiny_builders["new"] = spec.tiny_builders[next(iter(spec.tiny_builders))]


def test_shared_names_are_one_thing():
    vaes = fitted_vaes()  # raises when two families give one VAE name different builders
    assert vaes and all(any(s.fitted_vaes.get(n) is b for s in SPECS.values()) for n, b in vaes.items())
    assert set(published_architectures()) == {p for s in SPECS.values() for p in s.published_architectures}


@pytest.mark.parametrize("name", sorted(SPECS))
def test_the_adapter_class_implements_the_protocol_methods(name):
    adapter = SPECS[name].adapter
    for method in PROTOCOL_METHODS:
        assert callable(getattr(adapter, method, None)), f"{adapter.__name__} lacks {method}()"
    for method in ("resolve", "validate"):  # called on the class, before any instance exists
        assert isinstance(inspect.getattr_static(adapter, method), staticmethod), f"{adapter.__name__}.{method}"


@pytest.mark.parametrize("name", sorted(SPECS))
def test_a_built_tiny_model_has_every_protocol_member_and_a_label(name, compose_train):
    cfg = compose_train([f"model={FAMILIES[name]}"])
    model = build_model(cfg.model, cfg.paths.cache_dir)
    missing = [member for member in PROTOCOL_DATA + PROTOCOL_METHODS if not hasattr(model, member)]
    assert not missing and isinstance(model, VideoModel), f"{name} lacks {missing}"
    assert spec_for(model) is spec_for(cfg.model) is SPECS[name]
    label = objective_label(model)
    assert isinstance(label, str) and label
    assert label == KNOWN_LABELS.get(name, label)
    assert trains_text_encoder(model) is False  # the tiny presets leave the text encoder frozen


@pytest.mark.parametrize("name", sorted(n for n, s in SPECS.items() if s.supports_text_encoder_lora))
def test_trains_text_encoder_follows_model_text_encoder_lora(name, compose_train):
    cfg = compose_train([f"model={FAMILIES[name]}", "model.text_encoder_lora=true", "model.finetune=lora"])
    assert trains_text_encoder(build_model(cfg.model, cfg.paths.cache_dir)) is True


def test_spec_for_refuses_an_unknown_family():
    class Stranger:
        family = "no_such_family"

    with pytest.raises(ValueError, match="no_such_family"):
        spec_for(Stranger)
