"""The failure policy around one training job, so the recipe itself reads as a recipe.

``run_as_job(cfg, recipe)`` is everything ``train.main`` does besides training: take the run
dir's lock, record ``status.json`` (running -> ok / failed / interrupted), plan a rerun of an
earlier sweep attempt (reuse a completed one, continue an interrupted one), and choose the exit:
a preempted run exits like the signal (128 + signum), a user error prints one line, and in a
multirun a failed job is logged and the sweep goes on (the command exits non-zero only when
every job failed). A run whose ``status.json`` could not be written exits non-zero too, even when
training itself succeeded, so schedulers never read "running" as success.
"""

from __future__ import annotations

import gc
import logging
import os
from collections.abc import Callable
from pathlib import Path

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from omegaconf import DictConfig, open_dict

from ..engine.checkpoint import CHECKPOINT_RE, fingerprint
from ..engine.preemption import TrainingInterrupted
from ..errors import USER_ERRORS, RunDirLockedError
from .lock import RunDirLock
from .rerun import carry_over, earlier_attempts, job_identity, plan_job, reuse, set_aside
from .status import JobStatus, is_multirun, pin_one_gpu_per_job

log = logging.getLogger("t2v_exp.train")

Recipe = Callable[[DictConfig, Path, RunDirLock], dict]


def run_as_job(cfg: DictConfig, recipe: Recipe) -> float | None:
    """Run ``recipe(cfg, run_dir, lock)`` in Hydra's run dir under the policy above; returns the
    run's objective (Hydra sweepers optimise it), None for a skipped or failed multirun job."""
    quiet_non_main_ranks()
    pinned = pin_one_gpu_per_job()  # before anything touches CUDA
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    lock = lock_run_dir(run_dir)  # before status.json: a second process must not overwrite the first's
    if lock is None:
        return None
    identity = job_identity_or_none(cfg)
    plan = plan_rerun(cfg, run_dir, identity)  # before status.json: it may be the earlier attempt's
    status = JobStatus(run_dir, cfg, identity)
    reused = reuse_completed(plan, run_dir) if plan is not None and plan.action == "reuse" else None
    if reused is not None:
        status.write("ok", extra={**reused, "gpu": pinned})  # before the lock goes: "running" + free = killed
        lock.release()
        return reused.get("objective")
    try:
        summary = recipe(cfg, run_dir, lock)
        # Before the lock goes: a rerun reads "running" with a free lock as a killed attempt.
        recorded = status.write("ok", extra={"final_loss": summary.get("final_loss"),
                                             "objective": summary.get("objective"), "gpu": pinned})
    except BaseException as raised:
        return handle_failure(raised, status, pinned)
    finally:
        lock.release()
        gc.collect()  # free the job's models before the next job of a sequential sweep
        empty_cuda_cache()
    log.info("Done: final loss %s; run dir %s", summary.get("final_loss"), run_dir)
    if not recorded and not is_multirun():
        raise SystemExit(f"error: training finished (weights in {run_dir}), but {status.path} could not be "
                         f"written (disk full?); it still says an earlier status")
    return summary.get("objective")


def handle_failure(raised: BaseException, status: JobStatus, pinned: str | None) -> None:
    """Record the failure, then exit the way the policy says (or return None: the sweep goes on)."""
    exc = user_facing(raised)
    # A failed write is logged and leaves the last good status.json; the exit stays non-zero below.
    status.write("interrupted" if isinstance(exc, KeyboardInterrupt) else "failed", exc, {"gpu": pinned})
    if isinstance(exc, TrainingInterrupted):  # preempted after saving a checkpoint: the signal's exit code
        log.warning("%s", exc)
        raise SystemExit(128 + exc.signum) from None
    if is_multirun() and isinstance(exc, Exception):
        log.error("Job failed (%s: %s); the sweep continues. Details: %s", type(exc).__name__, exc, status.path)
        return None
    if isinstance(exc, USER_ERRORS):
        log.error("%s", exc)
        raise SystemExit(f"error: {exc}") from None
    raise raised


def job_identity_or_none(cfg: DictConfig) -> str | None:
    """The job's identity for sweep resume (None when the config cannot even be resolved: the
    recipe then reports what is wrong with it)."""
    try:
        return job_identity(cfg, world_size())
    except Exception as exc:  # noqa: BLE001 - validation proper happens in the recipe, with a clear message
        log.debug("No job identity (%s)", exc)
        return None


def world_size() -> int:
    """Processes training this job (``accelerate launch`` sets WORLD_SIZE; a multirun job is one)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def plan_rerun(cfg: DictConfig, run_dir: Path, identity: str | None):
    """In a multirun with ``sweep_resume`` and no ``resume=``: what to do about earlier attempts
    of this job (see jobs/rerun.py); sets ``resume`` to the checkpoint to continue."""
    if identity is None or not is_multirun() or not cfg.get("sweep_resume", True) or cfg.get("resume"):
        return None
    sweep_dir = Path(HydraConfig.get().sweep.dir).resolve()
    try:
        attempts = earlier_attempts(sweep_dir, identity)
        plan = plan_job(attempts, fingerprint(cfg, world_size()))  # the fingerprint inside the identity
        if plan.action == "resume":
            carry_over(plan.attempt, run_dir, int(CHECKPOINT_RE.match(plan.checkpoint.name).group(1)))
        elif plan.action == "fresh" and any(a.job_dir.resolve() == run_dir.resolve() for a in attempts):
            moved = set_aside(run_dir)  # a failed attempt in this very dir: start clean, keep its files
            if moved is not None:
                log.info("Sweep resume: the earlier attempt's files are now in %s", moved)
    except (OSError, ValueError) as exc:  # unreadable earlier sweeps must not stop this one
        log.warning("Sweep resume: earlier attempts not usable (%s: %s); training from the start",
                    type(exc).__name__, exc)
        return None
    log.info("Sweep resume: %s", plan.describe())
    if plan.action == "resume":
        with open_dict(cfg):
            cfg.resume = str(plan.checkpoint)
    return plan


def reuse_completed(plan, run_dir: Path) -> dict | None:
    """Skip a job that an earlier sweep completed: bring its results into this job dir and return
    the status fields to record (None, logged, when they cannot be brought: the job then trains)."""
    try:
        return reuse(plan.attempt, run_dir)
    except (OSError, ValueError) as exc:
        log.warning("Could not reuse %s (%s: %s); training this job instead", plan.attempt.job_dir,
                    type(exc).__name__, exc)
        return None


def lock_run_dir(run_dir: Path) -> RunDirLock | None:
    """The run dir's lock (rank 0; other ranks get a no-op lock), or None after logging why not in
    a multirun, where the other jobs go on; a single run exits with the message."""
    lock = RunDirLock(run_dir)
    if int(os.environ.get("RANK", "0")) != 0:
        return lock
    try:
        return lock.acquire()
    except RunDirLockedError as exc:
        if is_multirun():
            log.error("Job skipped: %s", exc)
            return None
        raise SystemExit(f"error: {exc}") from None


def user_facing(exc: BaseException) -> BaseException:
    """Hydra wraps errors raised in a ``_target_`` constructor; report the dataset's own error."""
    if isinstance(exc, InstantiationException) and isinstance(exc.__cause__, ValueError):
        return exc.__cause__
    return exc


def quiet_non_main_ranks() -> None:
    """Under ``accelerate launch`` only rank 0 writes the run's log file; others log warnings only."""
    if int(os.environ.get("RANK", "0")) == 0:
        return
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, logging.FileHandler):
            root.removeHandler(handler)
    root.setLevel(logging.WARNING)


def empty_cuda_cache() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
