"""Sweeps that resume (issue 14, item 9): rerunning a killed multirun gives the uninterrupted result.

The end-to-end tests run the real Hydra multirun (basic launcher, one process) three times: an
uninterrupted reference sweep, the same command killed with SIGKILL while its second job trains,
and the same command again. The rerun must skip the completed job, resume the killed one from its
checkpoint, run the job that never started, and end with the reference's weights and losses.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from t2v_exp.jobs.rerun import Attempt, earlier_attempts, plan_job

from .conftest import REPO

STEPS = 8
# The closing evaluations stay on (2 videos): a resumed job must still compare base and fine-tuned.
SWEEP = ("-m", "seed=1,2,3", f"train.max_steps={STEPS}", "train.checkpoint_every=2", "train.keep_last=4",
         "validation.enabled=false", "logger=none", "gpu.batch_size=2", "model.lora.rank=4", "model.lora.alpha=4",
         "evaluation.num_videos=2")
TIMESTAMPED = "${now:%Y-%m-%d_%H-%M-%S-%f}"  # the default sweep dir's pattern: each run gets a new dir


def sweep_command(sweep_dir: str) -> list[str]:
    return [sys.executable, "-m", "t2v_exp.train", *SWEEP, f"hydra.sweep.dir={sweep_dir}"]


def run_sweep(sweep_dir: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(sweep_command(sweep_dir), cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def kill_during_second_job(sweep_dir: str, root: Path) -> Path:
    """Start the sweep, SIGKILL it once its second job has written checkpoint 2; the job dir."""
    env = {**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen(sweep_command(sweep_dir), cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 600
    try:
        while time.monotonic() < deadline and process.poll() is None:
            found = list(root.glob("**/1_modelscope_tiny_shapes/checkpoints/checkpoint-000002"))
            if found:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
                return found[0].parents[1]
            time.sleep(0.05)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    pytest.fail("the sweep ended before its second job wrote a checkpoint")


def jobs(sweep_dir: Path) -> list[Path]:
    return sorted(p for p in sweep_dir.iterdir() if p.is_dir() and p.name[0].isdigit())


def losses(job: Path) -> list[tuple[int, float]]:
    rows = [json.loads(line) for line in (job / "metrics.jsonl").read_text().splitlines()]
    return [(row["step"], row["train/loss"]) for row in rows if "train/loss" in row]


def report_rows(sweep_dir: Path) -> dict[str, tuple[str, str]]:
    """job -> (status, final loss) from report.md's job table."""
    rows = {}
    for line in (sweep_dir / "report.md").read_text().splitlines():
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if cells and cells[0][:1].isdigit() and "_" in cells[0]:
            rows[cells[0]] = (cells[1], cells[-1])
    return rows


def status(job: Path) -> dict:
    return json.loads((job / "status.json").read_text())


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    sweep_dir = tmp_path_factory.mktemp("reference") / "sweep"
    run_sweep(str(sweep_dir))
    return sweep_dir


def assert_same_results(rerun: Path, reference: Path) -> None:
    assert [j.name for j in jobs(rerun)] == [j.name for j in jobs(reference)]
    for job, expected in zip(jobs(rerun), jobs(reference), strict=True):
        assert status(job)["status"] == "ok", job
        ours = load_file(job / "final" / "pytorch_lora_weights.safetensors")
        theirs = load_file(expected / "final" / "pytorch_lora_weights.safetensors")
        assert ours.keys() == theirs.keys()
        for name in ours:
            assert torch.equal(ours[name], theirs[name]), (job.name, name)
        # One uninterrupted loss curve: every step once, the reference's values bit for bit.
        assert losses(job) == losses(expected), job.name
        assert [step for step, _ in losses(job)] == list(range(1, STEPS + 1))
        # The closing evaluation, base vs fine-tuned: the base's scores carried over to a resumed job.
        ours, theirs = (json.loads((d / "eval" / "metrics.json").read_text()) for d in (job, expected))
        assert ours["comparison"] and ours["comparison"] == theirs["comparison"], job.name
    assert report_rows(rerun) == report_rows(reference)
    assert all(row_status == "ok" for row_status, _ in report_rows(rerun).values())


def test_rerun_of_a_killed_sweep_skips_resumes_and_runs_to_the_uninterrupted_result(reference, tmp_path):
    sweeps = tmp_path / "sweeps"
    killed = kill_during_second_job(str(sweeps / TIMESTAMPED), sweeps)
    first = killed.parent
    assert status(killed)["status"] == "running"  # killed mid-job: nothing recorded its end
    assert not (killed / "final").exists() and not (first / "2_modelscope_tiny_shapes").exists()
    checkpoints = sorted(p.name for p in (killed / "checkpoints").iterdir())

    run_sweep(str(sweeps / TIMESTAMPED))
    rerun = next(d for d in sweeps.iterdir() if d.is_dir() and d != first)
    done, resumed, fresh = jobs(rerun)
    # The completed job is reused, not retrained: its status points at the first sweep's job.
    assert status(done)["reused_from"] == str(first / done.name)
    assert json.loads((done / "summary.json").read_text())["final_dir"] == str(done / "final")
    # The killed job continues from its newest checkpoint in the first sweep.
    resumed_from = json.loads((resumed / "summary.json").read_text())["resumed_from"]
    assert resumed_from == str(killed / "checkpoints" / checkpoints[-1])
    assert "reused_from" not in status(resumed)
    assert (resumed / "eval_base" / "metrics.json").is_file()  # scored before the kill, not redone
    # The job that never started trains from the start.
    assert json.loads((fresh / "summary.json").read_text())["resumed_from"] is None
    assert_same_results(rerun, reference)


@pytest.mark.slow
def test_rerun_into_the_same_sweep_dir_continues_it_in_place(reference, tmp_path):
    sweep_dir = tmp_path / "sweep"
    killed = kill_during_second_job(str(sweep_dir), sweep_dir)
    done_before = status(sweep_dir / "0_modelscope_tiny_shapes")
    run_sweep(str(sweep_dir))
    done = sweep_dir / "0_modelscope_tiny_shapes"
    assert "reused_from" not in status(done)  # skipped in place: nothing to point at
    assert status(done)["wall_time_s"] == done_before["wall_time_s"]
    assert json.loads((killed / "summary.json").read_text())["resumed_from"].startswith(str(killed / "checkpoints"))
    assert_same_results(sweep_dir, reference)


def test_failed_attempts_run_again_and_completed_ones_are_reused(tmp_path):
    def attempt(name: str, state: str, *, finished: bool) -> Attempt:
        job_dir = tmp_path / "sweeps" / name / "0_job"
        (job_dir / "final").mkdir(parents=True)
        (job_dir / "summary.json").write_text(json.dumps({"finished": finished}))
        record = {"status": state, "job_identity": "abc"}
        (job_dir / "status.json").write_text(json.dumps(record))
        return Attempt(job_dir, record)

    failed = attempt("2026-01-02", "failed", finished=False)
    assert plan_job([failed], {}).action == "fresh"
    stopped_early = attempt("2026-01-03", "ok", finished=False)  # train.stop_after_steps, no checkpoint
    assert not stopped_early.completed and plan_job([stopped_early], {}).action == "fresh"
    completed = attempt("2026-01-01", "ok", finished=True)
    plan = plan_job([failed, completed], {})
    assert plan.action == "reuse" and plan.attempt.job_dir == completed.job_dir
    # Attempts are found by identity, the sweep's own dir first, then its siblings.
    found = earlier_attempts(tmp_path / "sweeps" / "2026-01-02", "abc")
    assert found[0].job_dir == failed.job_dir
    assert {a.job_dir for a in found} == {failed.job_dir, completed.job_dir, stopped_early.job_dir}
    assert earlier_attempts(tmp_path / "sweeps" / "2026-01-02", "other") == []


def test_job_identity_follows_what_shapes_the_result(compose_train, tmp_path):
    from t2v_exp.jobs.rerun import job_identity

    def identity(*overrides: str) -> str:
        return job_identity(compose_train(list(overrides), run_dir=tmp_path), 1)

    base = identity()
    assert identity("logger=none") == base  # how it is logged
    assert identity("train.stop_after_steps=3") == base  # how one invocation is cut short
    assert identity("sweep_resume=false") == base
    assert identity("optimizer.lr=0.01") != base
    assert identity("train.max_steps=7") != base
    assert identity("evaluation.num_videos=4") != base
    assert identity("seed=3") != base


def test_a_failed_attempt_in_the_same_dir_is_set_aside_before_the_fresh_start(tmp_path):
    from t2v_exp.jobs.rerun import set_aside

    job_dir = tmp_path / "0_job"
    for name in ("checkpoints/checkpoint-000002/state.json", "metrics.jsonl", "final/weights.safetensors",
                 ".hydra/config.yaml", "status.json", "train.log"):
        (job_dir / name).parent.mkdir(parents=True, exist_ok=True)
        (job_dir / name).write_text(name)
    moved = set_aside(job_dir)
    assert moved == job_dir / ".previous-attempts" / "1"
    assert sorted(p.name for p in moved.iterdir()) == ["checkpoints", "final", "metrics.jsonl"]
    assert sorted(p.name for p in job_dir.iterdir()) == [".hydra", ".previous-attempts", "status.json", "train.log"]
    (job_dir / "metrics.jsonl").write_text("second attempt")
    assert set_aside(job_dir) == job_dir / ".previous-attempts" / "2"


def test_reusing_fails_whole_or_not_at_all(tmp_path, monkeypatch):
    import shutil

    from t2v_exp.jobs.rerun import reuse

    done = tmp_path / "old" / "0_job"
    for name in ("final/README.md", "summary.json", "eval/metrics.json", "metrics.jsonl"):
        (done / name).parent.mkdir(parents=True, exist_ok=True)
        (done / name).write_text("{}")
    job_dir = tmp_path / "new" / "0_job"
    (job_dir / ".hydra").mkdir(parents=True)
    calls = []

    def copy_then_fail(source, target):
        calls.append(source)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        return shutil.copyfile(source, target)

    monkeypatch.setattr(shutil, "copy2", copy_then_fail)
    with pytest.raises(OSError):
        reuse(Attempt(done, {"status": "ok"}), job_dir)
    assert sorted(p.name for p in job_dir.iterdir()) == [".hydra"]  # nothing half-copied left behind
    monkeypatch.undo()
    fields = reuse(Attempt(done, {"status": "ok", "objective": 0.5}), job_dir)
    assert fields == {**dict.fromkeys(("final_loss", "wall_time_s", "gpu_hours", "num_gpus", "device_name")),
                      "objective": 0.5, "reused_from": str(done)}
    assert sorted(p.name for p in job_dir.iterdir()) == [".hydra", "eval", "final", "metrics.jsonl", "summary.json"]
