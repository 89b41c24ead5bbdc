"""Read a sweep directory into one row per job, tolerating whatever a failed job left behind."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)
NOT_SCORES = {"seconds", "status"}


@dataclass
class JobRow:
    directory: Path
    name: str
    status: str = "incomplete"
    error: str | None = None
    model: str = "?"
    family: str = "?"
    dataset: str = "?"
    finetune: str = "?"
    lora_rank: int | None = None
    trainable: int | None = None
    trainable_pct: float | None = None
    wall_time_s: float | None = None
    gpu_hours: float | None = None
    device: str | None = None
    peak_mem_mb: float | None = None
    final_loss: float | None = None
    losses: list[tuple[int, float]] = field(default_factory=list)
    before: dict[str, dict[str, float]] = field(default_factory=dict)
    after: dict[str, dict[str, float]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    eval_protocol: dict[str, Any] = field(default_factory=dict)
    videos: list[tuple[str, Path | None, Path | None]] = field(default_factory=list)  # name, base, tuned


def _json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        if path.exists():
            log.warning("unreadable %s: %s", path, exc)
        return None


def scores(metrics: dict) -> tuple[dict[str, dict[str, float]], dict[str, str]]:
    """Numeric scores of every ok metric, and the reason of every skipped/failed one."""
    found, skipped = {}, {}
    for name, entry in (metrics or {}).items():
        if entry.get("status") == "ok":
            found[name] = {k: float(v) for k, v in entry.items()
                           if k not in NOT_SCORES and isinstance(v, int | float) and not isinstance(v, bool)}
        else:
            skipped[name] = entry.get("reason") or entry.get("error") or entry.get("status", "?")
    return found, skipped


def read_job(directory: Path) -> JobRow:
    row = JobRow(directory=directory, name=directory.name)
    status = _json(directory / "status.json") or {}
    row.status = status.get("status", "incomplete")
    row.error = (status.get("error") or "").splitlines()[0] if status.get("error") else None
    row.model = status.get("model", row.model)
    row.dataset = status.get("dataset", row.dataset)
    row.wall_time_s, row.gpu_hours = status.get("wall_time_s"), status.get("gpu_hours")
    row.device = status.get("device_name")
    config_path = directory / "config.yaml"
    if config_path.is_file():
        from omegaconf import OmegaConf

        config = OmegaConf.to_container(OmegaConf.load(config_path))
        model = config.get("model", {})
        row.model, row.family = model.get("name", row.model), model.get("family", row.family)
        row.finetune = str(model.get("finetune", "?"))
        row.lora_rank = (model.get("lora") or {}).get("rank") if row.finetune == "lora" else None
        row.dataset = config.get("dataset", {}).get("name", row.dataset)
    summary = _json(directory / "summary.json") or {}
    row.trainable, row.trainable_pct = summary.get("params/trainable"), summary.get("params/trainable_pct")
    row.final_loss = summary.get("final_loss")
    metrics_file = directory / "metrics.jsonl"
    if metrics_file.is_file():
        peaks = []
        for line in metrics_file.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a kill
            if isinstance(record.get("train/loss"), int | float) and record.get("step") is not None:
                row.losses.append((int(record["step"]), float(record["train/loss"])))
            if isinstance(record.get("train/peak_mem_mb"), int | float):
                peaks.append(float(record["train/peak_mem_mb"]))
        row.peak_mem_mb = max(peaks) if peaks else None
        if row.final_loss is None and row.losses:
            row.final_loss = row.losses[-1][1]
    base, tuned = _json(directory / "eval_base" / "metrics.json"), _json(directory / "eval" / "metrics.json")
    if base:
        row.before, _ = scores(base.get("metrics"))
    if tuned:
        row.after, row.skipped = scores(tuned.get("metrics"))
        row.eval_protocol = {k: tuned.get(k) for k in ("num_videos", "frames", "resolution")}
    tuned_videos = sorted((directory / "eval" / "videos").glob("*.mp4"))
    base_dir = directory / "eval_base" / "videos"
    for video in tuned_videos:
        twin = base_dir / video.name
        row.videos.append((video.name, twin if twin.is_file() else None, video))
    return row


def collect_jobs(sweep_dir: Path) -> list[JobRow]:
    """Job dirs are the sweep's subdirectories named ``<job number>_...``, in job order."""
    jobs = [d for d in Path(sweep_dir).iterdir() if d.is_dir() and d.name.split("_", 1)[0].isdigit()]
    return [read_job(d) for d in sorted(jobs, key=lambda d: int(d.name.split("_", 1)[0]))]


def pct_change(before: float | None, after: float | None) -> float | None:
    if before is None or after is None or before == 0:
        return None
    return 100.0 * (after - before) / abs(before)


def metric_columns(rows: list[JobRow]) -> list[tuple[str, str]]:
    """(metric, score) pairs present in any job, in a stable order."""
    seen: dict[tuple[str, str], None] = {}
    for row in rows:
        for metric, values in {**row.before, **row.after}.items():
            for key in values:
                seen[(metric, key)] = None
    return list(seen)
