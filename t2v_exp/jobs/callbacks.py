"""Hydra callbacks of every entrypoint: credentials masked in what Hydra writes, and the sweep
report written when a multirun ends."""

from __future__ import annotations

import logging
from pathlib import Path

from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import OmegaConf

from ..engine.tracking import REDACTED, SECRET_KEY, masked_argv, redact_text
from .status import fail_if_every_job_failed, write_atomically

log = logging.getLogger(__name__)


class SweepReportCallback(Callback):
    """After a multirun, write report.md / report.html / plots into the sweep directory."""

    def on_multirun_end(self, config, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        try:
            # deferred: the report pulls in torch; only after a multirun
            from ..reporting.write import write_report
        except ImportError as exc:  # the report module is optional for a plain multirun
            log.warning("No sweep report (%s)", exc)
            return
        try:
            logger_cfg = config.get("logger")
            with masked_argv():  # the report's W&B run records the command line
                write_report(sweep_dir, log_to_wandb=bool(logger_cfg and logger_cfg.backend == "wandb"),
                             logger_cfg=logger_cfg)
            log.info("Sweep report: %s", sweep_dir / "report.md")
        except Exception:  # a broken report must not hide the jobs' own results
            log.exception("Writing the sweep report failed; job results are intact in %s", sweep_dir)
        fail_if_every_job_failed(sweep_dir)


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
