"""Sweeps that resume: rerunning a multirun command skips, continues or reruns each job.

Every job records its *identity* in ``status.json``: a digest of what decides what it trains and
how it is scored (the checkpoint fingerprint plus every other resolved setting, except where
files go, how the run is logged, and how an invocation is cut short or resumed). When a multirun
job starts with ``sweep_resume=true`` (the default) and no ``resume=``, it looks for earlier
attempts with the same identity, in its own sweep dir first and then in the sibling sweep dirs
(``outputs/sweeps/*``), newest first:

- **completed** (status ok, ``final/`` present, the summary says finished): the job is skipped.
  Its results are brought into this job dir (``final/`` weights hard-linked, the rest copied;
  not its checkpoints or W&B files) and its ``status.json`` says ``reused_from``, so the sweep
  report reads as if the job had run here.
- **interrupted** (killed, preempted or stopped early, and no process holds its lock) with an
  intact checkpoint of the same experiment: the job resumes from the newest one, exactly as
  ``resume=`` would. The training log rows and the validation samples up to that step are
  carried over (and, as on any resume, the base model's evaluation), since the resumed run does
  not redo them.
- **failed**, or interrupted before its first checkpoint: the job runs again from the start. When
  that attempt is this very job dir (a rerun into the same sweep dir), its files are first moved
  into ``.previous-attempts/<n>/`` there.

``sweep_resume=false`` runs every job afresh.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..engine.checkpoint import fingerprint, flat_settings
from ..engine.resume import compatible_checkpoints
from .lock import RunDirLock
from .status import write_atomically

log = logging.getLogger(__name__)
# Settings that change neither the trained weights nor the evaluation (flat keys, prefixes).
NOT_IDENTITY = ("logger.", "sweep_resume", "train.stop_after_steps", "push_to_hub", "hub_repo_id")
PREVIOUS_ATTEMPTS = ".previous-attempts"
# What belongs to the process that ran an attempt (or to its own W&B run), not to its results.
OWN_FILES = {".hydra", ".train.lock", "status.json", "train.log", "wandb", "checkpoints", PREVIOUS_ATTEMPTS}
# Exported weights this large are hard-linked, not copied: final/ is written into a fresh directory
# and renamed into place (Trainer.export), so neither copy can change the other.
LINK_AT_BYTES = 1 << 20
# Validation samples of one step (Trainer.validate writes samples/step-000042).
SAMPLES_STEP_RE = re.compile(r"^step-(\d+)$")
# What a fresh start in the same dir leaves where it is: the new Hydra config, the lock this
# process holds, the status it is about to write and the log file Hydra has open.
STAY_IN_PLACE = {".hydra", ".train.lock", "status.json", "train.log", PREVIOUS_ATTEMPTS}


def job_identity(cfg, world_size: int) -> str:
    """A digest of everything that shapes a job's result (see the module docstring)."""
    settings = {key: value for key, value in flat_settings(cfg).items() if not key.startswith(NOT_IDENTITY)}
    record = {"fingerprint": fingerprint(cfg, world_size), "settings": settings}
    return hashlib.sha256(json.dumps(record, sort_keys=True, default=str).encode()).hexdigest()[:24]


@dataclass
class Attempt:
    """An earlier job dir with the same identity, and what its status.json says."""

    job_dir: Path
    status: dict[str, Any]

    @property
    def completed(self) -> bool:
        if self.status.get("status") != "ok" or not (self.job_dir / "final").is_dir():
            return False
        try:
            return bool(json.loads((self.job_dir / "summary.json").read_text()).get("finished"))
        except (OSError, ValueError, AttributeError):
            return False

    @property
    def interrupted(self) -> bool:
        """Killed (status still "running"), preempted ("interrupted") or stopped early ("ok",
        unfinished), with nobody training it now."""
        if self.status.get("status") not in ("running", "interrupted", "ok") or self.completed:
            return False
        holder = RunDirLock.holder(self.job_dir)
        return holder is None or holder == str(os.getpid())  # this process: a rerun into the same dir


def earlier_attempts(sweep_dir: Path, identity: str) -> list[Attempt]:
    """Job dirs of this sweep dir, then of its sibling sweep dirs (newest first), whose status.json
    records ``identity``. A dir that cannot be read is passed over."""
    sweep_dir = Path(sweep_dir)
    siblings = []
    try:
        siblings = sorted((d for d in sweep_dir.parent.iterdir() if d.is_dir() and d != sweep_dir),
                          key=_mtime, reverse=True)
    except OSError as exc:
        log.warning("Sweep resume: cannot list %s (%s); looking in this sweep dir only", sweep_dir.parent, exc)
    found = []
    for root in [sweep_dir, *siblings]:
        try:
            job_dirs = sorted(p for p in root.iterdir() if p.is_dir())
        except OSError:  # gone, or not readable: nothing of ours there
            continue
        for job_dir in job_dirs:
            status = _read_status(job_dir)
            if status.get("job_identity") == identity:
                found.append(Attempt(job_dir, status))
    return found


@dataclass
class Plan:
    """What a job does about its earlier attempts: ``reuse`` one, ``resume`` from a checkpoint, or
    run ``fresh``."""

    action: str
    attempt: Attempt | None = None
    checkpoint: Path | None = None

    def describe(self) -> str:
        if self.action == "reuse":
            return f"already completed in {self.attempt.job_dir}: skipped, its results reused"
        if self.action == "resume":
            return f"interrupted in {self.attempt.job_dir}: resuming from {self.checkpoint.name}"
        return "no earlier attempt to continue: training from the start"


def plan_job(attempts: list[Attempt], expected_fingerprint: dict) -> Plan:
    """Any completed attempt is reused; else the newest interrupted one with an intact, compatible
    checkpoint is resumed; else (failed attempts, none at all) the job runs from the start."""
    for attempt in attempts:
        if attempt.completed:
            return Plan("reuse", attempt)
    for attempt in attempts:
        if not attempt.interrupted:
            continue
        search = compatible_checkpoints([attempt.job_dir], expected_fingerprint)
        if search.passed_over:
            log.warning("Sweep resume passed over:%s", search.report())
        if search.candidates:
            return Plan("resume", attempt, search.candidates[0])
    return Plan("fresh")


def reuse(attempt: Attempt, job_dir: Path) -> dict[str, Any]:
    """Bring a completed attempt's results into ``job_dir``; returns the status fields to record.

    Everything is gathered in a staging dir first and moved into place at the end, so a failure
    (a full disk) leaves ``job_dir`` as it was and the job can still train there."""
    job_dir = Path(job_dir)
    same_dir = attempt.job_dir.resolve() == job_dir.resolve()  # a rerun into the same sweep dir
    if not same_dir:
        staging = job_dir / ".reuse-staging"
        shutil.rmtree(staging, ignore_errors=True)
        try:
            for source in sorted(attempt.job_dir.iterdir()):
                if source.name not in OWN_FILES:
                    _bring(source, staging / source.name, linkable=source.name == "final")
            summary_path = staging / "summary.json"
            summary = json.loads(summary_path.read_text())
            if summary.get("final_dir"):
                summary["final_dir"] = str(job_dir / "final")
            summary_path.write_text(json.dumps(summary, indent=2))
            for entry in sorted(staging.iterdir()):
                os.replace(entry, job_dir / entry.name)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    kept = ("final_loss", "objective", "wall_time_s", "gpu_hours", "num_gpus", "device_name")
    fields = {key: attempt.status.get(key) for key in kept}
    origin = attempt.status.get("reused_from") or (None if same_dir else str(attempt.job_dir))
    return {**fields, "reused_from": origin} if origin else fields


def carry_over(attempt: Attempt, job_dir: Path, step: int) -> None:
    """Before resuming ``attempt`` at ``step`` in ``job_dir``: start ``metrics.jsonl`` with the
    attempt's rows up to that step (rows past it belong to work the kill discarded), so the loss
    curve reads as one uninterrupted run; from another dir, also bring the validation samples up
    to that step (the trainer itself brings the base model's evaluation on any resume)."""
    job_dir = Path(job_dir)
    source = attempt.job_dir / "metrics.jsonl"
    rows = []
    if source.is_file():
        for line in source.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue  # a line cut by the kill
            if isinstance(row, dict) and int(row.get("step", 0)) <= step:
                rows.append(line)
    write_atomically(job_dir / "metrics.jsonl", "".join(f"{row}\n" for row in rows))
    if attempt.job_dir.resolve() == job_dir.resolve():
        return
    samples = attempt.job_dir / "samples"
    for folder in sorted(samples.glob("step-*")) if samples.is_dir() else []:
        found = SAMPLES_STEP_RE.match(folder.name)
        if found and int(found.group(1)) <= step:
            _bring(folder, job_dir / "samples" / folder.name)


def set_aside(job_dir: Path) -> Path | None:
    """Move an earlier attempt's files out of the way (into ``.previous-attempts/<n>/``) so a
    fresh start in the same dir neither refuses its checkpoints nor appends to its logs."""
    job_dir = Path(job_dir)
    entries = [p for p in sorted(job_dir.iterdir()) if p.name not in STAY_IN_PLACE]
    if not entries:
        return None
    root = job_dir / PREVIOUS_ATTEMPTS
    root.mkdir(exist_ok=True)
    target = root / str(1 + sum(1 for _ in root.iterdir()))
    target.mkdir()
    for entry in entries:
        os.replace(entry, target / entry.name)
    return target


def _bring(source: Path, target: Path, *, linkable: bool = False) -> None:
    """Copy ``source`` (a file or a tree) to ``target``; symlinks stay symlinks. With ``linkable``,
    files of LINK_AT_BYTES or more are hard-linked where the filesystem allows."""
    if source.is_symlink():
        target.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.readlink(source), target)
        return
    if source.is_dir():
        target.mkdir(parents=True, exist_ok=True)
        for child in sorted(source.iterdir()):
            _bring(child, target / child.name, linkable=linkable)
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        target.unlink()
    if linkable and source.stat().st_size >= LINK_AT_BYTES:
        try:
            os.link(source, target)
            return
        except OSError:  # another filesystem, or links not allowed: copy
            pass
    shutil.copy2(source, target)


def _read_status(job_dir: Path) -> dict[str, Any]:
    try:
        status = json.loads((job_dir / "status.json").read_text())
    except (OSError, ValueError):
        return {}
    return status if isinstance(status, dict) else {}


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0
