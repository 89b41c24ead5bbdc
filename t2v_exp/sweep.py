"""Multirun support: per-job status files, one GPU per parallel job, and the end-of-sweep report.

Sweep outside, distribute inside: a Hydra multirun launches one job per experiment; a job that
needs several GPUs is itself an ``accelerate launch``. A failing job records its error in its
``status.json`` and the sweep goes on; when every job failed, the command exits non-zero.
Credentials are masked in the files Hydra writes (``.hydra/*.yaml``, ``multirun.yaml``).
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

    def __init__(self, run_dir: Path, cfg, identity: str | None = None):
        self.path = Path(run_dir) / "status.json"
        self.started = time.time()
        experiment = None
        try:
            from hydra.core.hydra_config import HydraConfig

            experiment = HydraConfig.get().runtime.choices.get("experiment")
        except ValueError:  # HydraConfig not set (called outside @hydra.main)
            pass
        # job_identity: what a rerun of the sweep matches earlier attempts by (t2v_exp/sweep_resume.py)
        self.base = {"model": cfg.model.name, "dataset": cfg.dataset.name, "experiment": experiment,
                     "job_identity": identity}
        self.write("running")

    def write(self, status: str, error: BaseException | None = None, extra: dict[str, Any] | None = None) -> bool:
        """Replace status.json atomically; False (logged) when it cannot be written, e.g. on a full
        disk: the file then keeps the last status written, whole, and the caller still exits non-zero."""
        import torch

        from .engine.tracking import redact

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
            from .engine.tracking import masked_argv

            logger_cfg = config.get("logger")
            with masked_argv():  # the report's W&B run records the command line
                write_report(sweep_dir, log_to_wandb=bool(logger_cfg and logger_cfg.backend == "wandb"),
                             logger_cfg=logger_cfg)
            log.info("Sweep report: %s", sweep_dir / "report.md")
        except Exception:  # a broken report must not hide the jobs' own results
            log.exception("Writing the sweep report failed; job results are intact in %s", sweep_dir)
        fail_if_every_job_failed(sweep_dir)


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


class MaskSecretsCallback(Callback):
    """Mask credentials in what Hydra writes: ``.hydra/*.yaml`` of each job, the sweep's
    ``multirun.yaml`` and the log records of both (Hydra's own lines list the overrides).

    Values of credential-like environment variables (``HF_TOKEN``, ``WANDB_API_KEY``, ...) and of
    overrides whose key looks like a credential (``+hf_token=...``) become ``***``. Hydra writes
    the files before any job code runs; ``on_job_start`` runs right after, in the job's process.
    """

    def on_run_start(self, config, **kwargs) -> None:
        redact_log_records()

    def on_multirun_start(self, config, **kwargs) -> None:
        redact_log_records()

    def on_job_start(self, config, **kwargs) -> None:
        from hydra.types import RunMode

        redact_log_records()
        hydra_cfg = config.hydra
        if hydra_cfg.output_subdir is not None:
            mask_yaml_files(sorted((Path(hydra_cfg.runtime.output_dir) / hydra_cfg.output_subdir).glob("*.yaml")))
        if hydra_cfg.mode == RunMode.MULTIRUN:
            mask_yaml_files([Path(hydra_cfg.sweep.dir) / "multirun.yaml"])

    def on_multirun_end(self, config, **kwargs) -> None:
        mask_yaml_files([Path(config.hydra.sweep.dir) / "multirun.yaml"])


def mask_yaml_files(paths: list[Path]) -> None:
    """Rewrite each YAML file with credentials masked (only when something changed)."""
    from omegaconf import OmegaConf

    for path in paths:
        if not path.is_file():
            continue
        loaded = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
        masked = _mask_tree(loaded)
        if masked != loaded:
            write_atomically(path, OmegaConf.to_yaml(OmegaConf.create(masked)))


def _mask_tree(value, *, by_key: bool = True):
    """Credentials masked in every string; in the task config (not Hydra's own settings, whose
    keys such as ``exclude_keys`` only look like credentials) also every credential-like key."""
    from .engine.tracking import REDACTED, SECRET_KEY, redact_text

    if isinstance(value, dict):
        return {k: REDACTED if by_key and k != "hydra" and SECRET_KEY.search(str(k)) and v is not None
                else _mask_tree(v, by_key=by_key and k != "hydra") for k, v in value.items()}
    if isinstance(value, list):
        return [_mask_tree(v, by_key=by_key) for v in value]
    return redact_text(value) if isinstance(value, str) else value


def redact_log_records() -> None:
    """Mask credentials in every log record from now on (console, train.log, Hydra's own lines).

    Done in the record factory rather than as a handler filter: Hydra reconfigures logging (new
    handlers) before each job and before listing a sweep's jobs, and would drop a filter.
    """
    previous = logging.getLogRecordFactory()
    if getattr(previous, "redacts_secrets", False):
        return

    def factory(*args, **kwargs) -> logging.LogRecord:
        from .engine.tracking import redact_text

        record = previous(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a malformed record is logging's own problem to report
            return record
        clean = redact_text(message)
        if clean != message:
            record.msg, record.args = clean, None
        return record

    factory.redacts_secrets = True
    logging.setLogRecordFactory(factory)
