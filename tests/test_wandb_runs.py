"""What W&B receives, read back from the offline ``.wandb`` files the real library writes."""

from __future__ import annotations

import json

import pytest

from .test_evaluate import wandb_records
from .test_generate import run_module


def history_keys(records) -> set[str]:
    return {item.key or item.nested_key[0] for r in records if r.WhichOneof("record_type") == "history"
            for item in r.history.item}


def run_record(records):
    (run,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    return run


@pytest.fixture(scope="module")
def logged_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("wb") / "run"
    done = run_module("t2v_exp.train", "train.evaluate_base=false", "train.evaluate_at_end=false", "train.max_steps=2",
                      "validation.num_videos=2", "logger.group=my_study", "logger.tags=[lr_test]",
                      f"hydra.run.dir={run_dir}")
    assert done.returncode == 0, done.stderr[-3000:]
    return run_dir


def test_validation_samples_have_stable_keys_with_the_prompt_as_caption(logged_run):
    records = wandb_records(logged_run)
    keys = {k for k in history_keys(records) if k.startswith("samples/")}
    assert keys == {"samples/0", "samples/1"}
    values = [json.loads(item.value_json) for r in records if r.WhichOneof("record_type") == "history"
              for item in r.history.item if (item.key or item.nested_key[0]) == "samples/0" and item.value_json]
    captions = [v.get("caption") for v in values if isinstance(v, dict)]
    captions += [v for r in records if r.WhichOneof("record_type") == "history" for item in r.history.item
                 if list(item.nested_key) == ["samples/0", "caption"] for v in [json.loads(item.value_json)]]
    assert captions and all(" moving " in c for c in captions if c)


def test_a_standalone_evaluation_joins_the_runs_group_and_is_tagged(logged_run, tmp_path):
    out = tmp_path / "eval"
    done = run_module("t2v_exp.evaluate", f"run_dir={logged_run}", "num_videos=2", "num_inference_steps=2",
                      f"hydra.run.dir={out}")
    assert done.returncode == 0, done.stderr[-3000:]
    run = run_record(wandb_records(out))
    assert run.run_group == "my_study"
    assert {"modelscope_tiny", "shapes", "fine-tuned", "lr_test"} <= set(run.tags)
    # .hydra/config.yaml names what was evaluated, not the composed default
    assert "pretrained: tiny:modelscope" in (out / ".hydra" / "config.yaml").read_text()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["finetuned"] is True


def test_evaluation_dir_is_named_after_the_run_it_evaluates_not_the_default_model(logged_run):
    from hydra import compose, initialize_config_dir

    from t2v_exp.config import CONF_DIR, register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="evaluate", overrides=[f"run_dir={logged_run}"], return_hydra_config=True)
        by_run = str(cfg.hydra.run.dir)
        cfg = compose(config_name="evaluate", overrides=["model=cogvideox_tiny"], return_hydra_config=True)
        by_model = str(cfg.hydra.run.dir)
    assert by_run.endswith("_" + logged_run.name) and "modelscope_tiny_shapes" not in by_run.split("/")[-1][:30]
    assert by_model.endswith("_cogvideox_tiny_shapes")
