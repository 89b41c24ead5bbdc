"""Run tracking: a local metrics.jsonl that always exists, plus W&B (offline unless logged in)."""

from __future__ import annotations

import json
import logging
import math
import os
import re
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)
SECRET_KEY = re.compile(r"(_TOKEN|_KEY|SECRET|PASSWORD)", re.IGNORECASE)
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


def wandb_mode(mode: str) -> str:
    if mode != "auto":
        return mode
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    try:
        import wandb

        logged_in = bool(wandb.api.api_key)
    except Exception:  # noqa: BLE001 - any failure to read credentials means "not logged in"
        logged_in = False
    return "online" if logged_in else "offline"


class Tracker:
    """Writes every logged record to ``metrics.jsonl`` and mirrors it to W&B when enabled."""

    def __init__(self, run_dir: Path, *, logger_cfg, config: dict, job_type: str = "train",
                 enabled: bool = True, extra_tags: list[str] | None = None):
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self.run = None
        self._jsonl = None
        if not enabled:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._jsonl = open(self.run_dir / "metrics.jsonl", "a", encoding="utf-8")  # noqa: SIM115 - lives for the run
        if logger_cfg.backend == "wandb" and str(getattr(logger_cfg.mode, "value", logger_cfg.mode)) != "disabled":
            self.run = self._start_wandb(logger_cfg, redact(config), job_type, extra_tags or [])

    def _start_wandb(self, logger_cfg, config: dict, job_type: str, extra_tags: list[str]):
        import wandb

        wandb_dir = self.run_dir  # W&B puts its own "wandb/" folder inside this directory
        mode = wandb_mode(str(getattr(logger_cfg.mode, "value", logger_cfg.mode)))
        tags = redact(list(dict.fromkeys([*(logger_cfg.tags or []), *extra_tags])))
        run = wandb.init(
            project=logger_cfg.project, entity=logger_cfg.entity, group=redact(logger_cfg.group),
            tags=tags, name=redact(logger_cfg.name or self.run_dir.name), job_type=job_type,
            dir=str(wandb_dir), mode=mode, config=config, reinit="finish_previous",
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

    def log_videos(self, videos: dict[str, Path], step: int, fps: int) -> None:
        if self.run is None or not videos:
            return
        import wandb

        self.run.log({f"samples/{k}": wandb.Video(str(p), format="mp4") for k, p in videos.items()}, step=step)

    def log_table(self, key: str, rows: list[dict], *, video_dir: Path, video_column: str) -> None:
        """A W&B table, one row per video, the video itself playable in the row."""
        if self.run is None or not rows:
            return
        import wandb

        columns = ["video", *rows[0].keys()]
        table = wandb.Table(columns=columns)
        for row in rows:
            table.add_data(wandb.Video(str(video_dir / row[video_column]), format="mp4"), *row.values())
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
