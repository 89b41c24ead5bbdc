"""Run tracking: a local metrics.jsonl that always exists, plus W&B (offline unless logged in)."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import sys
from pathlib import Path
from typing import Any

from ..config import enum_value

log = logging.getLogger(__name__)
SECRET_KEY = re.compile(r"(_TOKEN|_KEY|SECRET|PASSWORD)", re.IGNORECASE)
# `key=value` text (an override, a log line) whose key looks like a credential: +hf_token=..., logger.api_key=...
CREDENTIAL_ASSIGNMENT = re.compile(r"(?<![\w.])([+~]*[\w.-]*(?:token|key|secret|password)[\w.-]*=)([^\s,'\"\]]+)",
                                   re.IGNORECASE)
REDACTED = "***"


def secret_values() -> list[str]:
    """Values of environment variables that look like credentials (WANDB_API_KEY, HF_TOKEN, ...)."""
    return [v for k, v in os.environ.items() if SECRET_KEY.search(k) and len(v) >= 6]


def redact(value: Any, secrets: list[str] | None = None) -> Any:
    """Copy of a config/metrics structure with credential-looking keys and secret values masked."""
    secrets = secret_values() if secrets is None else secrets
    if isinstance(value, dict):
        return {k: (REDACTED if SECRET_KEY.search(str(k)) else redact(v, secrets)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact(v, secrets) for v in value]
    if isinstance(value, str):
        for secret in secrets:
            value = value.replace(secret, REDACTED)
    return value


def redact_text(text: str, secrets: list[str] | None = None) -> str:
    """``text`` with secret values and the values of credential-like ``key=value`` pairs masked."""
    text = CREDENTIAL_ASSIGNMENT.sub(lambda match: match.group(1) + REDACTED, text)
    for secret in secret_values() if secrets is None else secrets:
        text = text.replace(secret, REDACTED)
    return text


@contextlib.contextmanager
def masked_argv():
    """W&B records ``sys.argv`` in its run metadata while ``wandb.init`` runs: mask the overrides'
    credentials there for that moment (``logger.name=run-$HF_TOKEN``, ``+hf_token=...``)."""
    saved = sys.argv
    sys.argv = [redact_text(arg) for arg in saved]
    try:
        yield
    finally:
        sys.argv = saved


@contextlib.contextmanager
def staged_in(directory: Path):
    directory.mkdir(parents=True, exist_ok=True)
    saved = os.environ.get("WANDB_DATA_DIR")
    os.environ["WANDB_DATA_DIR"] = str(directory)
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("WANDB_DATA_DIR", None)
        else:
            os.environ["WANDB_DATA_DIR"] = saved


def wandb_mode(mode: str) -> str:
    if mode != "auto":
        return mode
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    try:
        import wandb  # deferred: about a second to import, paid only when a W&B run starts

        logged_in = bool(wandb.api.api_key)
    except Exception:  # noqa: BLE001 - any failure to read credentials means "not logged in"
        logged_in = False
    return "online" if logged_in else "offline"


class Tracker:
    """Writes every logged record to ``metrics.jsonl`` and mirrors it to W&B when enabled."""

    def __init__(self, run_dir: Path, *, logger_cfg, config: dict, job_type: str = "train",
                 enabled: bool = True, extra_tags: list[str] | None = None, run_id: str | None = None):
        """``run_id``: continue that W&B run (a resumed training run keeps its W&B run)."""
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self.run = None
        self._jsonl = None
        if not enabled:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._jsonl = open(self.run_dir / "metrics.jsonl", "a", encoding="utf-8")  # noqa: SIM115 - lives for the run
        if logger_cfg.backend == "wandb" and str(enum_value(logger_cfg.mode)) != "disabled":
            self.run = self._start_wandb(logger_cfg, redact(config), job_type, extra_tags or [], run_id)

    def _start_wandb(self, logger_cfg, config: dict, job_type: str, extra_tags: list[str], run_id: str | None):
        import wandb  # deferred: about a second to import, paid only when a W&B run starts

        wandb_dir = self.run_dir  # W&B puts its own "wandb/" folder inside this directory
        mode = wandb_mode(str(enum_value(logger_cfg.mode)))
        tags = redact(list(dict.fromkeys([*(logger_cfg.tags or []), *extra_tags])))
        with masked_argv():
            run = wandb.init(
                project=logger_cfg.project, entity=logger_cfg.entity, group=redact(logger_cfg.group),
                tags=tags, name=redact(logger_cfg.name or self.run_dir.name), job_type=job_type,
                dir=str(wandb_dir), mode=mode, config=config, reinit="finish_previous",
                id=run_id, resume="allow" if run_id else None,
                settings=wandb.Settings(console="off", silent=True),
            )
        log.info("W&B run %s (%s) in %s", run.id, mode, wandb_dir / "wandb")
        return run

    def log(self, record: dict[str, Any], step: int | None = None) -> None:
        if not self.enabled:
            return
        row = {"step": step, **record} if step is not None else dict(record)
        self._jsonl.write(json.dumps(redact(_finite_or_none(row))) + "\n")
        self._jsonl.flush()
        if self.run is not None:
            self.run.log(record, step=step)

    def log_videos(self, videos: list[tuple[str, Path]], step: int, fps: int) -> None:
        """Validation samples as ``samples/0``, ``samples/1``, ... with the prompt as caption: the same
        key is the same prompt slot in every run, so one W&B panel lines the models up."""
        if self.run is None or not videos:
            return
        import wandb  # deferred: about a second to import, paid only when a W&B run starts

        self.run.log({f"samples/{i}": wandb.Video(str(path), caption=prompt, format="mp4")
                      for i, (prompt, path) in enumerate(videos)}, step=step)

    def log_table(self, key: str, rows: list[dict], *, videos: dict[str, tuple[str, Path]]) -> None:
        """A W&B table, one row per video, the videos themselves playable in the row.

        ``videos``: table column -> (row field holding a file name, folder of that file), e.g.
        {"video": ("file", eval/videos), "base video": ("base_file", eval_base/videos)}; a row whose
        file is missing gets an empty cell instead of failing the whole table.
        """
        if self.run is None or not rows:
            return
        import wandb  # deferred: about a second to import, paid only when a W&B run starts

        fields = list(dict.fromkeys(field for row in rows for field in row))
        table = wandb.Table(columns=[*videos, *fields])
        for row in rows:
            cells = []
            for field, folder in videos.values():
                path = Path(folder) / str(row.get(field)) if row.get(field) else None
                cells.append(wandb.Video(str(path), format="mp4") if path is not None and path.is_file() else None)
            table.add_data(*cells, *(row.get(field) for field in fields))
        # W&B stages a table's media as artifact files under WANDB_DATA_DIR (default: the user's data
        # dir, outside the run): stage them inside the run dir so a copied outputs/ syncs complete.
        with staged_in(self.run_dir / "wandb" / "data"):
            self.run.log({key: table})

    def summary(self, values: dict[str, Any]) -> None:
        if not self.enabled:
            return
        (self.run_dir / "summary.json").write_text(json.dumps(redact(_finite_or_none(values)), indent=2))
        if self.run is not None:
            self.run.summary.update(values)

    def finish(self, exit_code: int = 0) -> None:
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None
        if self.run is not None:
            self.run.finish(exit_code=exit_code)
            self.run = None


def _finite_or_none(row: dict) -> dict:
    # JSON has no NaN/inf; keep the file parseable by strict readers.
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}
