"""Multirun support: per-job status files, one GPU per parallel job, and the end-of-sweep report.

Sweep outside, distribute inside: a Hydra multirun launches one job per experiment; a job that
needs several GPUs is itself an ``accelerate launch``. A failing job records its error in its
``status.json`` and the sweep goes on.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import time
import traceback
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

log = logging.getLogger(__name__)


def is_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

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
    from hydra.core.hydra_config import HydraConfig

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

    def __init__(self, run_dir: Path, cfg):
        self.path = Path(run_dir) / "status.json"
        self.started = time.time()
        experiment = None
        try:
            from hydra.core.hydra_config import HydraConfig

            experiment = HydraConfig.get().runtime.choices.get("experiment")
        except ValueError:  # HydraConfig not set (called outside @hydra.main)
            pass
        self.base = {"model": cfg.model.name, "dataset": cfg.dataset.name, "experiment": experiment}
        self.write("running")

    def write(self, status: str, error: BaseException | None = None, extra: dict[str, Any] | None = None) -> None:
        import torch

        if int(os.environ.get("RANK", "0")) != 0:  # under accelerate launch only rank 0 reports
            return
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
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(record, indent=2))
        os.replace(tmp, self.path)


class SweepReportCallback(Callback):
    """After a multirun, write report.md / report.html / plots into the sweep directory."""

    def on_multirun_end(self, config, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        try:
            from .report import write_report
        except ImportError as exc:  # the report module is optional for a plain multirun
            log.warning("No sweep report (%s)", exc)
            return
        try:
            logger_cfg = config.get("logger")
            write_report(sweep_dir, log_to_wandb=bool(logger_cfg and logger_cfg.backend == "wandb"),
                         logger_cfg=logger_cfg)
            log.info("Sweep report: %s", sweep_dir / "report.md")
        except Exception:  # a broken report must not hide the jobs' own results
            log.exception("Writing the sweep report failed; job results are intact in %s", sweep_dir)
