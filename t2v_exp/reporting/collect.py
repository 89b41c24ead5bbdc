"""Read a sweep directory into one row per job, tolerating whatever a failed job left behind.

Every reader here returns "nothing" for a missing, truncated or malformed file instead of raising:
a report is most needed exactly when some jobs died half-way.
"""

from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from ..scoring.comparison import indicative_only, keyed_videos, paired_scores, per_video_values

log = logging.getLogger(__name__)

# Keys of a metric entry that are bookkeeping, not scores (same rule as t2v_exp.scoring.evaluation).
NOT_SCORES = {"seconds", "status"}
# A job whose status.json still says "running" after the sweep ended was killed before it could
# write its final status (OOM killer, SLURM time limit, Ctrl-C of the whole sweep).
UNFINISHED = {"running", "incomplete", "unknown"}


@dataclass
class Score:
    """One score of one evaluation: the value and, when the evaluation computed it, its 95% CI."""

    value: float
    ci_low: float | None = None
    ci_high: float | None = None
    indicative_only: bool = False  # FVD from fewer than 256 videos

    @property
    def has_ci(self) -> bool:
        return self.ci_low is not None and self.ci_high is not None


@dataclass
class JobRow:
    directory: Path
    name: str
    status: str = "incomplete"
    error: str | None = None  # first line only: the table cell
    traceback: str | None = None  # the whole thing: a collapsible block in the HTML page
    model: str = "?"
    family: str | None = None
    dataset: str = "?"
    domain: str | None = None  # the shapes slice a job trained on (dataset.domain), when it has one
    objective: str | None = None  # what the loss measures (DDPM epsilon / v-prediction, flow matching)
    s_per_step: float | None = None  # median seconds per optimizer step (cost)
    experiment: str | None = None
    finetune: str | None = None
    lora_rank: int | None = None
    trainable: int | None = None
    trainable_pct: float | None = None
    wall_time_s: float | None = None
    gpu_hours: float | None = None
    device: str | None = None
    peak_mem_mb: float | None = None
    final_loss: float | None = None
    losses: list[tuple[int, float]] = field(default_factory=list)
    before: dict[str, dict[str, Score]] = field(default_factory=dict)  # metric -> score -> Score (eval_base)
    after: dict[str, dict[str, Score]] = field(default_factory=dict)  # same, fine-tuned (eval)
    # metric -> score -> the evaluator's paired (or set) delta row: mean_delta/delta, ci_low, ci_high, p_value, ...
    deltas: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    refused: str | None = None  # why eval was not compared with eval_base (the differing fields)
    training_seed: int | None = None  # the job's `seed` (training); evaluation prompts and seeds do not depend on it
    primary: str | None = None  # the comparison's primary score (metric/score)
    # (metric, score) -> {prompt: that prompt's mean delta (tuned - base over its seeds)}: what the
    # across-runs summary pools, with the prompt as the unit
    prompt_deltas: dict[tuple[str, str], dict[str, float]] = field(default_factory=dict)
    binary: set[tuple[str, str]] = field(default_factory=set)  # scores that are 0/1 per video (accuracies)
    skipped: dict[str, str] = field(default_factory=dict)  # metric -> why it has no score
    protocol: dict[str, Any] = field(default_factory=dict)  # num_videos, frames, resolution
    videos: list[tuple[str, Path | None, Path | None]] = field(default_factory=list)  # name, base, tuned

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def finetune_label(self) -> str:
        if self.finetune is None:
            return "?"
        return f"{self.finetune} r{self.lora_rank}" if self.lora_rank else self.finetune


def read_json(path: Path) -> dict | None:
    """A JSON object from ``path``, or None when absent, cut short or not an object."""
    try:
        value = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("unreadable %s: %s", path, exc)
        return None
    return value if isinstance(value, dict) else None


def number(value: Any) -> float | None:
    """A real number or None: JSON may hold null, strings, booleans or NaN where a score should be."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def scores(metrics: Any, summary: Any = None) -> tuple[dict[str, dict[str, Score]], dict[str, str]]:
    """Scores of every ok metric (from the summary, with CIs, when the evaluation wrote one; else
    the entry's numbers), and the reason of every skipped/failed one."""
    found: dict[str, dict[str, Score]] = {}
    skipped: dict[str, str] = {}
    summary = summary if isinstance(summary, dict) else {}
    for name, entry in (metrics if isinstance(metrics, dict) else {}).items():
        if not isinstance(entry, dict):
            continue
        if entry.get("status") == "ok":
            indicative = indicative_only(name, entry)
            rows = summary.get(name) if isinstance(summary.get(name), dict) else None
            found[name] = _summary_scores(rows, indicative) if rows else _entry_scores(entry, indicative)
        else:
            reason = _first_line(entry.get("reason") or entry.get("error")) or f"status {entry.get('status')!r}"
            fix = _first_line(entry.get("fix"))
            skipped[name] = f"{reason}; fix: {fix}" if fix else reason
    return found, skipped


def _summary_scores(rows: dict, indicative: bool) -> dict[str, Score]:
    found = {}
    for score, row in rows.items():
        value = number(row.get("value")) if isinstance(row, dict) else None
        if value is not None:
            found[score] = Score(value, number(row.get("ci_low")), number(row.get("ci_high")),
                                 indicative or row.get("indicative_only") is True)
    return found


def _entry_scores(entry: dict, indicative: bool) -> dict[str, Score]:
    found = {}
    for key, raw in entry.items():
        value = number(raw) if key not in NOT_SCORES else None
        if value is None:
            continue
        ci = entry.get(f"{key}_ci")
        ci = ci if isinstance(ci, dict) else {}
        found[key] = Score(value, number(ci.get("ci_low")), number(ci.get("ci_high")), indicative)
    return found


DELTA_FIELDS = ("kind", "mean_delta", "delta", "base", "tuned", "ci_low", "ci_high", "p_value", "q_value",
                "adjusted_p", "role", "unit", "binary", "pct_change", "significant", "n", "n_prompts",
                "indicative_only", "noise_floor", "method")
DELTA_KINDS = ("paired", "set", "set_change")


def deltas(comparison: Any) -> dict[str, dict[str, dict[str, Any]]]:
    """The evaluator's comparison rows (metric -> score -> row); rows of older formats are left out."""
    found: dict[str, dict[str, dict[str, Any]]] = {}
    for metric, rows in (comparison if isinstance(comparison, dict) else {}).items():
        for score, row in (rows if isinstance(rows, dict) else {}).items():
            if isinstance(row, dict) and row.get("kind") in DELTA_KINDS:
                found.setdefault(metric, {})[score] = {k: row.get(k) for k in DELTA_FIELDS}
    return found


def refusal(report: dict) -> str | None:
    refused = report.get("comparison_refused")
    if not isinstance(refused, dict):
        return None
    fields = [str(d.get("field")) for d in refused.get("differences") or [] if isinstance(d, dict)]
    return "differs in " + ", ".join(fields) if fields else _first_line(refused.get("message")) or "refused"


def _first_line(text: Any) -> str | None:
    lines = [line for line in str(text or "").strip().splitlines() if line.strip()]
    return lines[0].strip() if lines else None


def _read_status(row: JobRow, directory: Path) -> None:
    status = read_json(directory / "status.json")
    if status is None:
        row.status = "incomplete"
        row.error = "no status.json: the job died before reporting (killed, out of memory?)"
        return
    row.status = str(status.get("status") or "unknown")
    row.traceback = status.get("traceback") or None
    # The error's first line; failing that, the traceback's last line names the exception.
    row.error = _first_line(status.get("error"))
    if row.error is None and row.traceback:
        row.error = row.traceback.strip().splitlines()[-1].strip()
    if row.status in UNFINISHED:
        row.error = row.error or f"status.json still says {row.status!r}: the job was killed before it ended"
        row.status = "incomplete"
    row.model = str(status.get("model") or row.model)
    row.dataset = str(status.get("dataset") or row.dataset)
    row.experiment = status.get("experiment") or None
    row.wall_time_s, row.gpu_hours = number(status.get("wall_time_s")), number(status.get("gpu_hours"))
    row.device = status.get("device_name") or None


def _read_config(row: JobRow, directory: Path) -> None:
    path = directory / "config.yaml"
    if not path.is_file():
        return
    try:
        config = OmegaConf.to_container(OmegaConf.load(path))
    except Exception as exc:  # noqa: BLE001 - a malformed YAML file is one more thing a dead job leaves
        log.warning("unreadable %s: %s", path, exc)
        return
    seed = config.get("seed") if isinstance(config, dict) else None
    row.training_seed = seed if isinstance(seed, int) and not isinstance(seed, bool) else None
    model = config.get("model") if isinstance(config, dict) else None
    if isinstance(model, dict):
        row.model = str(model.get("name") or row.model)
        row.family = model.get("family") or None
        row.finetune = str(model["finetune"]) if model.get("finetune") is not None else None
        lora = model.get("lora")
        if row.finetune == "lora" and isinstance(lora, dict):
            row.lora_rank = lora.get("rank")
    dataset = config.get("dataset") if isinstance(config, dict) else None
    if isinstance(dataset, dict):
        row.dataset = str(dataset.get("name") or row.dataset)
        row.domain = str(dataset["domain"]) if dataset.get("domain") else None


def _read_summary(row: JobRow, directory: Path) -> None:
    summary = read_json(directory / "summary.json") or {}
    trainable, total = number(summary.get("params/trainable")), number(summary.get("params/total"))
    row.trainable = int(trainable) if trainable is not None else None
    row.trainable_pct = number(summary.get("params/trainable_pct"))
    if row.trainable_pct is None and trainable is not None and total:
        row.trainable_pct = 100.0 * trainable / total
    row.final_loss = number(summary.get("final_loss"))
    row.objective = summary.get("objective_kind") if isinstance(summary.get("objective_kind"), str) else None


def _read_metrics_log(row: JobRow, directory: Path) -> None:
    try:
        lines = (directory / "metrics.jsonl").read_text().splitlines()
    except OSError:
        return
    peaks, step_seconds = [], []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue  # the last line of a killed job is often cut in half
        if not isinstance(record, dict):
            continue
        step, loss = number(record.get("step")), number(record.get("train/loss"))
        if step is not None and loss is not None:
            row.losses.append((int(step), loss))
        peak = number(record.get("train/peak_mem_mb"))
        if peak is not None:
            peaks.append(peak)
        seconds = number(record.get("train/step_s"))
        if seconds is not None:
            step_seconds.append(seconds)
    row.peak_mem_mb = max(peaks) if peaks else None
    if step_seconds:  # the median: the first steps (compilation, caches) and stalls do not count
        row.s_per_step = sorted(step_seconds)[len(step_seconds) // 2]
    if row.final_loss is None and row.losses:
        row.final_loss = row.losses[-1][1]  # summary.json is only complete for finished jobs


def _read_evals(row: JobRow, directory: Path) -> None:
    base, tuned = read_json(directory / "eval_base" / "metrics.json"), read_json(directory / "eval" / "metrics.json")
    for report, is_base in ((base, True), (tuned, False)):
        if report is None:
            continue
        found, skipped = scores(report.get("metrics"), report.get("summary"))
        if is_base:
            row.before = found
        else:
            row.after = found
            row.deltas = deltas(report.get("comparison"))
            row.refused = refusal(report)
            row.primary = (report.get("comparison_protocol") or {}).get("primary")
            if base is not None and row.refused is None:
                row.prompt_deltas, row.binary = per_prompt_deltas(base, report)
        for name, reason in skipped.items():
            row.skipped.setdefault(name, reason)
        # Read base first, then fine-tuned: the fine-tuned protocol wins (they share it by construction).
        row.protocol = {k: report.get(k) for k in ("num_videos", "frames", "resolution", "seeds_per_prompt",
                                                   "num_prompts")}
        interval = next((s for rows in (report.get("summary") or {}).values() if isinstance(rows, dict)
                         for s in rows.values() if isinstance(s, dict) and s.get("n_prompts")), None)
        if interval:
            row.protocol["interval"] = {k: interval.get(k) for k in ("confidence", "method", "n_prompts")}
    # Base and fine-tuned files share names (same prompt, same seed): pair them by name, keeping
    # the unpaired ones so a job that died between the two evaluations still shows its samples.
    base_videos = {p.name: p for p in sorted((directory / "eval_base" / "videos").glob("*.mp4"))}
    tuned_videos = {p.name: p for p in sorted((directory / "eval" / "videos").glob("*.mp4"))}
    for name in sorted(base_videos.keys() | tuned_videos.keys()):
        row.videos.append((name, base_videos.get(name), tuned_videos.get(name)))


def per_prompt_deltas(base: dict, tuned: dict) -> tuple[dict[tuple[str, str], dict[str, float]], set]:
    """(metric, score) -> {prompt: mean over the prompt's seeds of tuned - base}, pairing videos by
    (prompt, seed) like the evaluator; and which scores are 0/1. Unreadable records give nothing."""
    try:
        base_videos, tuned_videos = keyed_videos(base), keyed_videos(tuned)
    except (ValueError, TypeError, AttributeError):
        return {}, set()
    found: dict[tuple[str, str], dict[str, float]] = {}
    binary: set[tuple[str, str]] = set()
    for metric in (tuned.get("comparison") or {}):
        for score in paired_scores(tuned, metric):
            sums: dict[str, list[float]] = {}
            values = []
            for key, video in tuned_videos.items():
                before = per_video_values(base_videos.get(key, {}), metric, score)
                after = per_video_values(video, metric, score)
                if before is not None and after is not None:
                    sums.setdefault(str(key[1]), []).append(after - before)
                    values += [before, after]
            if sums:
                found[(metric, score)] = {prompt: sum(d) / len(d) for prompt, d in sums.items()}
                if all(v in (0.0, 1.0) for v in values):
                    binary.add((metric, score))
    return found, binary


def read_job(directory: Path) -> JobRow:
    row = JobRow(directory=directory, name=directory.name)
    _read_status(row, directory)
    _read_config(row, directory)
    _read_summary(row, directory)
    _read_metrics_log(row, directory)
    _read_evals(row, directory)
    return row


def job_number(directory: Path) -> int | None:
    """Hydra's sweep subdir is ``<job num>_<model>_<dataset>`` (or a bare number by default)."""
    head = directory.name.split("_", 1)[0]
    return int(head) if head.isdigit() else None


def collect_jobs(sweep_dir: Path) -> list[JobRow]:
    """One row per job directory of the sweep, in job order."""
    sweep_dir = Path(sweep_dir)
    jobs = [d for d in sweep_dir.iterdir() if d.is_dir() and job_number(d) is not None]
    if not jobs:
        hint = ("it looks like a single run dir; pass the sweep dir that holds it"
                if (sweep_dir / "status.json").is_file() or (sweep_dir / "config.yaml").is_file()
                else "expected subdirectories like 0_modelscope_tiny_shapes (see outputs/sweeps/)")
        raise FileNotFoundError(f"sweep_dir={sweep_dir} has no job directories: {hint}")
    return [read_job(d) for d in sorted(jobs, key=lambda d: (job_number(d), d.name))]


def sweep_params(sweep_dir: Path) -> dict[str, str]:
    """What the sweep varied (``experiment: a,b,c``), from Hydra's multirun.yaml when present."""
    path = Path(sweep_dir) / "multirun.yaml"
    if not path.is_file():
        return {}
    try:
        config = OmegaConf.load(path)
        params = OmegaConf.select(config, "hydra.sweeper.params", default=None)
        return {str(k): str(v) for k, v in (OmegaConf.to_container(params) or {}).items()} if params else {}
    except Exception as exc:  # noqa: BLE001 - the report does not need it
        log.warning("unreadable %s: %s", path, exc)
        return {}


def prompt_label(file_name: str) -> str:
    """``003_a_red_circle_seed3.mp4`` -> ``a red circle (seed 3)`` (the evaluator names files
    index_prompt-slug_seed)."""
    stem = Path(file_name).stem
    head, _, rest = stem.partition("_")
    text = rest if head.isdigit() and rest else stem
    match = re.search(r"_seed(\d+)$", text)
    if match:
        return f"{text[:match.start()].replace('_', ' ')} (seed {match.group(1)})"
    return text.replace("_", " ")


def videos_by_prompt(rows: list[JobRow]) -> tuple[list[JobRow], list[tuple[str, dict[str, Path]]]]:
    """The fine-tuned samples of every prompt that two or more jobs generated, for a side-by-side view.

    Returns the jobs that appear (in job order) and, per shared prompt (in first-seen order), the
    job name -> video of each job that has one. Jobs on different datasets usually share none.
    """
    per_prompt: dict[str, dict[str, Path]] = {}
    for row in rows:
        for name, _base, tuned in row.videos:
            if tuned is not None:
                per_prompt.setdefault(prompt_label(name), {}).setdefault(row.name, tuned)
    shared = [(prompt, videos) for prompt, videos in per_prompt.items() if len(videos) >= 2]
    names = {name for _, videos in shared for name in videos}
    return [row for row in rows if row.name in names], shared


def metric_columns(rows: list[JobRow]) -> list[tuple[str, str]]:
    """(metric, score) pairs present in any job, in first-seen order."""
    seen: dict[tuple[str, str], None] = {}
    for row in rows:
        for side in (row.before, row.after):
            for metric, values in side.items():
                for key in values:
                    seen[(metric, key)] = None
    return list(seen)
