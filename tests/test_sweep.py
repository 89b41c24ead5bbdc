"""The comparison as one sweep: presets compose, the tiny sweep runs for real, failures stay contained."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from .conftest import CONF_DIR, REPO

EXPERIMENTS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))


def test_seed_study_presets_and_tiny_twins_exist():
    for name in ("modelscope_ssv2", "cogvideox_ubc_fashion", "animatediff_anime"):
        assert name in EXPERIMENTS and f"{name}_tiny" in EXPERIMENTS
        first = (CONF_DIR / "experiment" / f"{name}.yaml").read_text().splitlines()[1]
        assert first.startswith(f"# python -m t2v_exp.train experiment={name}")  # opens with its command


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes(experiment, compose_train, tmp_path):
    cfg = compose_train([f"experiment={experiment}"], run_dir=tmp_path)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    pretraining = experiment.startswith("pretrain_tiny_")  # a base from random init: nothing to compare
    if pretraining:  # pretrain_tiny_<twin> trains model=<twin>_tiny
        assert resolved["model"]["name"] == f"{experiment.removeprefix('pretrain_tiny_')}_tiny"
    else:
        assert resolved["model"]["family"] == experiment.split("_")[0]
    assert resolved["train"]["evaluate_at_end"] and resolved["train"]["evaluate_base"] != pretraining
    if pretraining:
        assert resolved["model"]["pretrained"].endswith("@random") and resolved["model"]["finetune"] == "full"
    elif experiment.endswith("_tiny"):
        assert resolved["model"]["name"].endswith("_tiny") and resolved["dataset"]["name"] == "shapes"
    else:
        assert resolved["precision"]["mixed_precision"].value == "bf16"
    if experiment == "cogvideox_ubc_fashion":
        assert (resolved["model"]["num_frames"], resolved["model"]["lora"]["rank"]) == (49, 64)


@pytest.mark.parametrize("overrides", [
    ["sweep=compare_models"], ["sweep=compare_models_tiny"], ["sweep=replicate_seed_study_tiny"],
    ["hparams_search=optuna_lr_rank"],
    ["hydra/launcher=slurm"], ["hydra/launcher=local_parallel"], ["hydra/launcher=submitit_local"],
])
def test_sweeps_and_launchers_compose_without_slurm(overrides, compose_train):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    compose_train([])  # registers the schemas
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides, return_hydra_config=True)
    if overrides[0].startswith("hydra/launcher=slurm"):
        assert cfg.hydra.launcher.gpus_per_node == 1 and cfg.hydra.launcher.tasks_per_node == 1
        assert "SlurmLauncher" in cfg.hydra.launcher._target_
    if overrides[0].startswith("sweep="):
        assert str(cfg.hydra.mode) == "RunMode.MULTIRUN"
        params = cfg.hydra.sweeper.params
        group = "model" if "model" in params else "experiment"
        swept = params[group].split(",")
        assert all((CONF_DIR / group / f"{name}.yaml").is_file() for name in swept), swept
        if overrides[0] == "sweep=compare_models_tiny":  # controlled: model and training seed vary, every family joins
            assert set(params) == {"model", "seed"} and len(params["seed"].split(",")) >= 3
            assert cfg.dataset.seed == 42  # the data, and so the evaluation prompts, do not follow the training seed
            assert set(swept) == {p.stem for p in (CONF_DIR / "model").glob("*_tiny.yaml")}
        if overrides[0] == "sweep=compare_models":  # one seed-study-style preset per real family
            with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
                families = {compose(config_name="train", overrides=[f"experiment={name}"]).model.family
                            for name in swept}
            assert len(families) == len(swept) >= 6


def run_sweep(*overrides: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "offline"}
    return subprocess.run([sys.executable, "-m", "t2v_exp.train", *overrides], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900)


TINY_SWEEP = ["modelscope_tiny", "cogvideox_tiny", "animatediff_tiny", "cogvideox15_tiny", "wan_tiny", "wan22_tiny",
              "ltx_tiny"]  # conf/sweep/compare_models_tiny.yaml, in its order


def test_tiny_comparison_sweep_trains_evaluates_and_reports(tmp_path):
    sweep_dir = tmp_path / "sweep"
    # One training seed here: the pooling over seeds has its own test below.
    result = run_sweep("sweep=compare_models_tiny", f"hydra.sweep.dir={sweep_dir}", "train.max_steps=6",
                       "evaluation.num_videos=2", "hydra.sweeper.params.seed=1",
                       "evaluation.metrics=[temporal,shapes_oracle]")  # FVD: in the pooled test below (I3D is slow)
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = sorted(p for p in sweep_dir.iterdir() if p.is_dir() and p.name[0].isdigit())
    assert [j.name.split("_", 1)[1] for j in jobs] == [f"{name}_shapes" for name in TINY_SWEEP]
    for job in jobs:
        assert json.loads((job / "status.json").read_text())["status"] == "ok"
        base = json.loads((job / "eval_base" / "metrics.json").read_text())
        tuned = json.loads((job / "eval" / "metrics.json").read_text())
        assert not base["finetuned"] and tuned["finetuned"]
        assert tuned["metrics"]["temporal"]["status"] == "ok" and tuned["metrics"]["shapes_oracle"]["status"] == "ok"
        assert "temporal_ssim" in tuned["comparison"]["temporal"]
        assert sorted(p.name for p in (job / "eval" / "videos").iterdir()) == \
            sorted(p.name for p in (job / "eval_base" / "videos").iterdir())
        wandb_config = (job / "config.yaml").read_text()
        assert "group: compare_models_tiny" in wandb_config
        assert "domain: vertical_motion" in wandb_config  # every job on the same data
    report = (sweep_dir / "report.md").read_text()
    for name in TINY_SWEEP:
        assert name in report
    html = (sweep_dir / "report.html").read_text()
    assert html.count("<video") >= 2 * len(TINY_SWEEP)
    assert (sweep_dir / "loss_curves.png").stat().st_size > 0
    assert (sweep_dir / "frame_grid.png").stat().st_size > 0
    for column in ("objective", "s/step", "shapes (vertical_motion)"):
        assert column in report


def test_training_runs_pool_per_model_with_holm_across_models(tmp_path):
    """Two models x two training seeds: the report's headline pools each model's runs (same evaluation
    prompts and seeds in every run) and Holm-adjusts the primary score across the two models."""
    from t2v_exp.metrics import stats
    from t2v_exp.reporting.aggregate import summarize_models
    from t2v_exp.reporting.collect import collect_jobs

    sweep_dir = tmp_path / "sweep"
    result = run_sweep("sweep=compare_models_tiny", f"hydra.sweep.dir={sweep_dir}", "train.max_steps=4",
                       "evaluation.num_videos=4", "hydra.sweeper.params.model='modelscope_tiny,ltx_tiny'",
                       "hydra.sweeper.params.seed='1,2'", "validation.enabled=false")
    assert result.returncode == 0, result.stderr[-3000:]
    rows = collect_jobs(sweep_dir)
    assert sorted((r.model, r.training_seed) for r in rows) == [("ltx_tiny", 1), ("ltx_tiny", 2),
                                                                ("modelscope_tiny", 1), ("modelscope_tiny", 2)]
    prompts = {frozenset(r.prompt_deltas[("shapes_oracle", "direction_ok")]) for r in rows}
    assert len(prompts) == 1 and len(next(iter(prompts))) == 4  # every run scored the same 4 prompts
    summaries, primary = summarize_models(rows)
    assert primary == "shapes_oracle/direction_ok" and [s.runs for s in summaries] == [2, 2]
    pooled = [s.rows[("shapes_oracle", "direction_ok")] for s in summaries]
    raw = [row["p_value"] for row in pooled]
    assert [row["adjusted_p"] for row in pooled] == stats.holm(raw)
    for summary, row in zip(summaries, pooled, strict=True):
        runs = [r for r in rows if r.model == summary.model]
        matrix = [[r.prompt_deltas[("shapes_oracle", "direction_ok")][p] for p in sorted(next(iter(prompts)))]
                  for r in runs]
        assert row["mean_delta"] == sum(map(sum, matrix)) / 8 and row["runs"] == 2
    report = (sweep_dir / "report.md").read_text()
    assert "## Across training runs" in report and "Primary endpoint: `shapes_oracle/direction_ok`" in report
    assert "2 (seeds 1, 2)" in report and "Exploratory scores" in report and "Holm" in report
    # The sweep scores FVD and KVD too: their paired change per run, pooled, beside the reference's noise floor
    explored = report.split("### Exploratory scores")[1].split("\n\n")[1]
    assert "| fvd/fvd |" in explored and "| fvd/kvd |" in explored and "noise floor" in explored


def test_a_failing_job_leaves_the_others_and_the_report_intact(tmp_path):
    sweep_dir = tmp_path / "sweep"
    # 10 frames is fine for ModelScope but not 4k+1 for CogVideoX: only that job fails.
    result = run_sweep("-m", "experiment=cogvideox_ubc_fashion_tiny,modelscope_ssv2_tiny", "model.num_frames=10",
                       "train.max_steps=3", "evaluation.num_videos=2", f"hydra.sweep.dir={sweep_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    failed = json.loads((sweep_dir / "0_cogvideox_tiny_shapes" / "status.json").read_text())
    ok = json.loads((sweep_dir / "1_modelscope_tiny_shapes" / "status.json").read_text())
    assert failed["status"] == "failed" and "4k+1" in failed["error"] and failed["traceback"]
    assert ok["status"] == "ok" and (sweep_dir / "1_modelscope_tiny_shapes" / "eval" / "metrics.json").is_file()
    report = (sweep_dir / "report.md").read_text()
    failed_rows = [line for line in report.splitlines() if "cogvideox_tiny" in line]
    assert failed_rows and any("fail" in line.lower() for line in failed_rows)
