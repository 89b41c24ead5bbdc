"""A job's status.json, one GPU per parallel job, and what a sweep's statuses add up to.

Sweep outside, distribute inside: a Hydra multirun launches one job per experiment; a job that
needs several GPUs is itself an ``accelerate launch``. A failing job records its error in its
``status.json`` and the sweep goes on; when every job failed, the command exits non-zero.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import time
import traceback
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def is_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig  # deferred: hydra; importing this module stays light
    from hydra.types import RunMode  # deferred: hydra, as above

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def visible_gpus() -> list[str]:
    """GPU ids this process may use, without initialising CUDA (so they can still be narrowed)."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [g for g in listed.split(",") if g.strip()]
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, line in enumerate(out.splitlines()) if line.startswith("GPU ")]


def pin_one_gpu_per_job() -> str | None:
    """Under a parallel local launcher, give job k the (k mod n)-th visible GPU."""
    from hydra.core.hydra_config import HydraConfig  # deferred: hydra; importing this module stays light

    if not is_multirun() or "joblib" not in str(HydraConfig.get().runtime.choices.get("hydra/launcher", "")):
        return None
    gpus = visible_gpus()
    if len(gpus) < 2:
        return None
    chosen = gpus[HydraConfig.get().job.num % len(gpus)]
    os.environ["CUDA_VISIBLE_DEVICES"] = chosen
    return chosen


class JobStatus:
    """Writes ``status.json`` in the job dir: ok/failed, error, wall time and GPU-hours."""

    def __init__(self, run_dir: Path, cfg, identity: str | None = None):
        self.path = Path(run_dir) / "status.json"
        self.started = time.time()
        experiment = None
        try:
            # deferred: hydra; importing this module stays light
            from hydra.core.hydra_config import HydraConfig

            experiment = HydraConfig.get().runtime.choices.get("experiment")
        except ValueError:  # HydraConfig not set (called outside @hydra.main)
            pass
        # job_identity: what a rerun of the sweep matches earlier attempts by (t2v_exp/jobs/rerun.py)
        self.base = {"model": cfg.model.name, "dataset": cfg.dataset.name, "experiment": experiment,
                     "job_identity": identity}
        self.write("running")

    def write(self, status: str, error: BaseException | None = None, extra: dict[str, Any] | None = None) -> bool:
        """Replace status.json atomically; False (logged) when it cannot be written, e.g. on a full
        disk: the file then keeps the last status written, whole, and the caller still exits non-zero."""
        import torch  # deferred: torch, only to count GPUs when a status is written

        from ..engine.tracking import redact  # deferred: engine.tracking imports config, hence hydra

        if int(os.environ.get("RANK", "0")) != 0:  # under accelerate launch only rank 0 reports
            return True
        wall = time.time() - self.started
        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        world = int(os.environ.get("WORLD_SIZE", "1"))
        record = {
            **self.base, "status": status, "wall_time_s": wall, "num_gpus": gpus * world if gpus else 0,
            "gpu_hours": wall / 3600 * (gpus * world if gpus else 0),
            "device_name": torch.cuda.get_device_name(0) if gpus else "cpu",
            "error": f"{type(error).__name__}: {error}" if error else None,
            "traceback": "".join(traceback.format_exception(error)) if error else None, **(extra or {}),
        }
        try:
            write_atomically(self.path, json.dumps(redact(record), indent=2))
        except OSError as exc:
            log.error("Could not record status %r in %s (%s); it keeps the last status written", status,
                      self.path, exc)
            return False
        return True


def write_atomically(path: Path, text: str) -> None:
    """Write a sibling temporary file, fsync it, rename it over ``path``; on any failure remove
    the temporary file and leave ``path`` as it was."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def job_statuses(sweep_dir: Path) -> dict[str, str]:
    """``job dir name -> status`` for every job dir of a sweep ("missing": died before writing one)."""
    statuses = {}
    for job in sorted(p for p in Path(sweep_dir).iterdir() if p.is_dir()):
        if not ((job / ".hydra").is_dir() or (job / "status.json").is_file()):
            continue  # not a job dir (e.g. the report's wandb/ folder)
        try:
            statuses[job.name] = str(json.loads((job / "status.json").read_text()).get("status"))
        except (OSError, ValueError, AttributeError):
            statuses[job.name] = "missing"
    return statuses


def fail_if_every_job_failed(sweep_dir: Path) -> None:
    """A sweep with no successful job exits non-zero, so CI and schedulers see the failure (a
    partly failed sweep exits 0: its report shows which jobs failed)."""
    statuses = job_statuses(sweep_dir)
    if statuses and "ok" not in statuses.values():
        listed = ", ".join(f"{name}: {status}" for name, status in statuses.items())
        raise SystemExit(f"error: every job of the sweep failed ({listed}); errors in each job's status.json "
                         f"and in {Path(sweep_dir) / 'report.md'}")
