"""Evaluation: a (prompt, seed) plan -> videos (generated, or read from a folder) -> metrics with CIs.

The plan: ``num_videos`` videos in all, ``seeds_per_prompt`` of them per prompt. Video i shows
prompt i // seeds_per_prompt (repeat i % seeds_per_prompt) from seed ``seed + i``, i.e. seed + p *
seeds_per_prompt + r: the same (prompt, seed) list whatever the model, so base and fine-tuned
videos pair up. Writes ``metrics.json`` (scores, protocol, per-video record, mean and 95% interval
over prompts per score, and with a baseline the paired comparison or why it was refused), ``per_video.csv``,
the videos and, when the FVD metric hands back its features, ``fvd_features.npz``.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import re
from collections import Counter
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf
from tqdm.auto import tqdm

from ..engine.batches import instantiate_dataset
from ..metrics import stats
from ..metrics.suite import METRIC_NAMES, MetricsSettings, compute_metrics
from . import comparison
from .sampling import decoded_frames, generate_videos, slug, write_videos  # noqa: F401 - re-exported for callers

log = logging.getLogger(__name__)
VIDEO_SUFFIXES = (".mp4", ".webm", ".mov", ".mkv", ".avi")
NOT_SCORES = {"seconds", "status"}
SEED_IN_NAME = re.compile(r"_seed(\d+)$")  # write_videos names files <index>_<prompt>_seed<seed>.mp4
FEATURES_FILE = "fvd_features.npz"
AUTO = "auto"  # metrics=[auto]: what can run here with no extra weight files (see resolve_metrics)
ROLES = ("eval", "eval_base")  # W&B prefixes: fine-tuned (or any folder) / base model


def read_prompts_file(path: str | Path) -> list[str]:
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"prompts={path} does not exist")
    if path.suffix == ".jsonl":
        prompts = []
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                prompts.append(str(json.loads(line)["prompt"]))
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise ValueError(f"{path}:{number}: expected a JSON object with a 'prompt' field ({exc})") from exc
        return prompts
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


@dataclass(frozen=True)
class PlannedVideo:
    index: int
    prompt: str
    prompt_index: int
    repeat: int
    seed: int


def evaluation_plan(settings, dataset=None) -> list[PlannedVideo]:
    """``num_videos`` (prompt, seed) pairs, ``seeds_per_prompt`` seeds per prompt (see the module doc).

    Prompts come from the prompts file, else the dataset's captions, cycled if there are fewer;
    when num_videos is not a multiple of seeds_per_prompt the last prompt gets fewer seeds.
    """
    source = read_prompts_file(settings.prompts) if settings.prompts else (
        dataset.captions() if dataset is not None else [])
    if not source:
        raise ValueError("No evaluation prompts: set prompts=FILE or use a dataset with captions")
    per_prompt = int(settings.seeds_per_prompt)
    if per_prompt < 1:
        raise ValueError(f"seeds_per_prompt={per_prompt} must be >= 1, e.g. seeds_per_prompt=2")
    return [PlannedVideo(index=i, prompt=source[(i // per_prompt) % len(source)], prompt_index=i // per_prompt,
                         repeat=i % per_prompt, seed=int(settings.seed) + i) for i in range(int(settings.num_videos))]


def reference_clips(dataset, count: int, split: str = "validation",
                    indices: list[int] | None = None) -> tuple[torch.Tensor, list[str]]:
    """The evaluation split's clips ``indices`` (default: the first ``count``), [N, F, C, H, W] in
    [-1, 1], and their names (``validation[3]``) for fvd_features.npz."""
    indices = list(range(min(count, len(dataset)))) if indices is None else list(indices)
    items = [dataset[i]["video"] for i in tqdm(indices, desc="reference clips", leave=False)]
    return torch.stack(items), [f"{split}[{i}]" for i in indices]


def reference_selection(dataset, plan: list[PlannedVideo]) -> tuple[list[int], dict[str, Any]]:
    """Which clips of the split are the reference for FVD/KVD, and a record of how they were chosen.

    The clips whose captions are the plan's prompts, up to as many per prompt as the plan generates
    of it: the reference then shows the same content, in the same mix, as the generated videos
    (METRICS.md, FVD). Prompts from a prompts file that match no caption fall back to the split's
    first len(plan) clips, with a warning in the record: FVD/KVD then also measure the content gap.
    """
    wanted = Counter(video.prompt for video in plan)  # insertion order: the plan's prompt order
    by_caption: dict[str, list[int]] = {}
    for index, caption in enumerate(dataset.captions() if hasattr(dataset, "captions") else []):
        by_caption.setdefault(caption, []).append(index)
    indices = [index for prompt, count in wanted.items() for index in by_caption.get(prompt, [])[:count]]
    matched = sum(prompt in by_caption for prompt in wanted)
    record: dict[str, Any] = {"selection": "the split's clips whose captions are the plan's prompts (up to as many "
                                           "per prompt as videos generated of it)",
                              "prompts": len(wanted), "prompts_with_clips": matched, "clips": len(indices)}
    if not indices:
        indices = list(range(min(len(plan), len(dataset))))
        record.update(selection=f"the split's first {len(indices)} clips", clips=len(indices), warning=(
            "no clip of the split has one of the plan's prompts as its caption (prompts=FILE?): the reference is the "
            "split's first clips, so FVD/KVD also measure how far their content is from the prompts'"))
    elif matched < len(wanted):
        record["warning"] = (f"{len(wanted) - matched} of {len(wanted)} prompts have no clip in the split: the "
                             f"reference shows the other {matched} prompts' content only")
    if record.get("warning"):
        log.warning("FVD/KVD reference: %s", record["warning"])
    return indices, record


GENERATED_CODEC = "h264 (libx264) crf 18 yuv420p"  # what sampling.write_videos writes (data.video_io.write_video)


def decoded_videos(folder: Path, names: list[str], like: torch.Tensor) -> torch.Tensor:
    """The written video files decoded again, [N, F, C, H, W] in [-1, 1]: what FVD and KVD score, so
    generated videos pass through the same H.264 encode/decode as the reference clips they are set against."""
    frames, height, width = like.shape[1], like.shape[3], like.shape[4]
    clips = []
    for name in names:
        clip = decoded_frames(folder / name)[:, :, :height, :width]  # write_video pads odd sizes to even
        if clip.shape[0] != frames:
            raise ValueError(f"{folder / name}: {clip.shape[0]} frames decoded, {frames} written")
        clips.append(clip)
    return torch.stack(clips) * 2 - 1


def scored_inputs_record(dataset, reference: dict[str, Any] | None) -> dict[str, Any]:
    """How the scored videos and the FVD/KVD reference came to be, for metrics.json (``scored_inputs``)."""
    # deferred: av (PyAV) via the data modules; train --help imports this module
    from ..data.datasets import ShapesDataset

    if reference is None:
        codec = f"generated: {GENERATED_CODEC} (no reference clips)"
    elif isinstance(dataset, ShapesDataset):  # its clips are written by the same write_video
        codec = f"{GENERATED_CODEC}, both sides"
    else:
        codec = f"generated: {GENERATED_CODEC}; reference: the dataset's own files, decoded"
    return {"generated": "FVD / KVD: decoded from the video files written; the other metrics: the generated frames",
            "codec": codec, "reference": reference}


FOLDER_MAX_SIDE = 512  # scored videos are resized to at most this long side (every metric resizes below it)


def folder_geometry(infos) -> tuple[int, int]:
    """The most common frame size among the files, scaled down to FOLDER_MAX_SIDE on its long side
    (even numbers): one odd or huge file no longer sets the size, and memory, of every clip."""
    (height, width), _ = Counter((i.height, i.width) for i in infos).most_common(1)[0]
    scale = min(1.0, FOLDER_MAX_SIDE / max(height, width))
    return max(2, int(height * scale) // 2 * 2), max(2, int(width * scale) // 2 * 2)


@torch.no_grad()
def load_video_folder(folder: str | Path, *, num_frames: int | None = None) -> tuple[torch.Tensor, list[str]]:
    """Every video file of a folder (sorted), at the most common size (long side at most
    FOLDER_MAX_SIDE) and the shortest length; returns the clips and their file names. Files whose
    header declares more than the media limits (decompression bombs) are skipped, never decoded."""
    # deferred: av (PyAV) via the data modules; train --help imports this module
    from ..data.video_io import VideoDecodeError, check_media_limits, probe_video, read_clip

    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"videos={folder} is not a directory")
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES)
    infos = [probe_video(p) for p in paths]
    good = []
    for path, info in zip(paths, infos, strict=True):
        refused = check_media_limits(info) if info.decodable else None
        if not info.decodable or refused:
            log.warning("skipping %s: %s", path, refused or info.error)
        elif info.num_frames > 0:
            good.append((path, info))
    if not good:
        raise FileNotFoundError(f"videos={folder}: no decodable video files ({', '.join(VIDEO_SUFFIXES)})")
    frames = num_frames or min(info.num_frames for _, info in good)
    height, width = folder_geometry([info for _, info in good])
    clips, names = [], []
    for path, _ in tqdm(good, desc="read videos", leave=False):
        try:
            clips.append(read_clip(path, frames, height, width, start="center", short_clip="pad"))
            names.append(path.name)
        except VideoDecodeError as exc:
            log.warning("skipping %s: %s", path, exc.reason)
    return torch.stack(clips), names


def folder_prompts(folder: str | Path, names: list[str], prompts_file: str | None) -> list[str] | None:
    """Prompts for folder videos: a file aligned with the sorted names, else sidecar .txt files."""
    if prompts_file:
        prompts = read_prompts_file(prompts_file)
        if len(prompts) != len(names):
            raise ValueError(f"prompts has {len(prompts)} prompts for {len(names)} videos")
        return prompts
    sidecars = [Path(folder) / (Path(n).stem + ".txt") for n in names]
    if all(s.is_file() for s in sidecars):
        return [s.read_text().strip() for s in sidecars]
    return None


def folder_videos(names: list[str], prompts: list[str] | None) -> list[dict[str, Any]]:
    """Per-video record of a folder: the seed is read from names this project wrote (``_seed7``)."""
    videos = []
    for i, name in enumerate(names):
        match = SEED_IN_NAME.search(Path(name).stem)
        videos.append({"file": name, "prompt": prompts[i] if prompts else None, "prompt_index": None,
                       "repeat": None, "seed": int(match.group(1)) if match else None})
    return videos


def planned_videos(plan: list[PlannedVideo], names: list[str] | None = None) -> list[dict[str, Any]]:
    return [{"file": names[v.index] if names else None, "prompt": v.prompt, "prompt_index": v.prompt_index,
             "repeat": v.repeat, "seed": v.seed} for v in plan]


def scores_of(entry: dict) -> dict[str, float]:
    return {k: float(v) for k, v in entry.items()
            if k not in NOT_SCORES and isinstance(v, int | float) and not isinstance(v, bool)}


def effective_metric_settings(settings) -> dict[str, Any]:
    """Every metric setting with its default filled in: what decides the numbers, recorded and compared."""
    raw = settings.metric_settings or {}
    if type(raw).__module__.startswith("omegaconf"):
        raw = OmegaConf.to_container(raw, resolve=True)
    return asdict(MetricsSettings.from_mapping(raw))


def resolve_metrics(settings, *, frames: int, has_reference: bool, prompts: list[str] | None
                    ) -> tuple[list[str], dict[str, str]]:
    """The metrics to run, and for ``metrics=[auto]`` why each other one was left out.

    An explicit list is taken as it is (and a metric in it that cannot run fails the CLI). ``auto``
    is the default: temporal always; FVD when there are reference clips and the videos are long
    enough for its 16-frame protocol (the tiny twins make 8); the shapes oracle when every prompt
    names a shapes-dataset colour and direction. Metrics that need weight files stay opt-in.
    """
    # deferred: shapes_oracle imports scipy; train --help imports this module
    from ..metrics.shapes_oracle import parse_prompt

    requested = list(settings.metrics)
    if AUTO not in requested:
        return requested, {}
    if requested != [AUTO]:
        raise ValueError(f"metrics={requested}: 'auto' stands alone; list the metrics instead, e.g. metrics='[temporal,fvd]'")
    chosen, left_out = ["temporal"], {}
    fvd_frames = int(effective_metric_settings(settings)["fvd"]["num_frames"])
    if not has_reference:
        left_out["fvd"] = "no reference clips (videos= mode: pass reference=DIR)"
    elif frames < fvd_frames:
        left_out["fvd"] = (f"the videos have {frames} frames, FVD's protocol feeds {fvd_frames}: generate longer videos "
                           f"(model.num_frames={fvd_frames}), or ask for it with metrics='[temporal,fvd]' "
                           f"+metric_settings.fvd.num_frames={frames} (then not comparable with {fvd_frames}-frame FVD)")
    else:
        chosen.append("fvd")
    if prompts and all(None not in parse_prompt(prompt) for prompt in prompts):
        chosen.append("shapes_oracle")
    else:
        left_out["shapes_oracle"] = "the prompts do not all name a shapes-dataset colour and direction"
    for name in METRIC_NAMES:
        if name not in chosen and name not in left_out:
            left_out[name] = f"opt-in: list it in metrics= (e.g. metrics='[{','.join(chosen)},{name}]')"
    return chosen, left_out


def generation_record(settings, plan: list[PlannedVideo] | None) -> dict[str, Any]:
    """The settings that decide which videos exist (None where a folder of videos cannot know)."""
    return {"seed": int(settings.seed) if plan else None,
            "seeds_per_prompt": int(settings.seeds_per_prompt) if plan else None,
            "num_prompts": len({v.prompt_index for v in plan}) if plan else None,
            "num_inference_steps": int(settings.num_inference_steps) if plan else None,
            "guidance_scale": float(settings.guidance_scale) if plan else None,
            "metric_settings": effective_metric_settings(settings)}


# -- loading and checking the baseline -------------------------------------------------------------
def load_baseline(baseline: str | Path) -> tuple[Path, dict]:
    path = Path(baseline).expanduser()
    if not (path / "metrics.json").is_file():
        raise FileNotFoundError(f"baseline={baseline}: no metrics.json there (pass an earlier eval directory)")
    return path, json.loads((path / "metrics.json").read_text())


def check_plan_against_baseline(baseline: str | Path, settings, plan: list[PlannedVideo]) -> None:
    """Refuse before generating anything when the plan already differs from the baseline's."""
    path, base = load_baseline(baseline)
    planned = {**generation_record(settings, plan), "videos": planned_videos(plan)}
    found = comparison.differences(base, planned, plan_only=True)
    if found:
        raise comparison.IncomparableEvaluations(found, str(path), "the planned evaluation")


# -- scoring ---------------------------------------------------------------------------------------
DETECTOR_METRICS = ("fvd", "kvd")  # compared with reference clips: they score the decoded files (see evaluate_model)


def run_metrics(names: list[str], videos, prompts, reference, settings, detector_videos=None
                ) -> tuple[dict[str, dict], dict[str, dict[str, list]]]:
    """Each metric's entry and its own per-video columns (one compute_metrics call per metric, so a
    column is never attributed to the wrong metric and equal column names cannot collide).
    ``detector_videos``: what FVD and KVD score instead of ``videos`` (the files as decoded)."""
    metric_settings = effective_metric_settings(settings)
    entries, columns = {}, {}
    for name in names:
        scored = detector_videos if detector_videos is not None and name in DETECTOR_METRICS else videos
        result = compute_metrics(scored, prompts, reference, metrics=[name], settings=metric_settings)
        entries[name] = result["metrics"][name]
        columns[name] = {k: v for k, v in result["per_video"].items() if k not in ("video_index", "prompt")}
    return entries, columns


def numeric_column(values: list) -> list[float | None] | None:
    """Per-video values as floats (bools as 0/1, NaN/inf as None), or None for a text column."""
    if not values or not all(v is None or isinstance(v, bool | int | float) for v in values):
        return None
    floats = [None if v is None or not math.isfinite(float(v)) else float(v) for v in values]
    return floats if any(v is not None for v in floats) else None


def summarize(entries: dict[str, dict], columns: dict[str, dict[str, list]], count: int,
              prompts: list | None = None) -> dict:
    """summary[metric][score]: for per-video scores the mean over prompts of each prompt's mean, with
    a 95% t-interval over prompts (the prompt is the unit: its seeds are correlated); for set
    metrics the value, with the metric's own interval where it has an honest one (KVD)."""
    summary: dict[str, dict] = {}
    for name, entry in entries.items():
        if entry.get("status") != "ok":
            continue
        numeric = {score: floats for score, values in columns.get(name, {}).items()
                   if (floats := numeric_column(values)) is not None}
        for score, floats in numeric.items():
            kept = [i for i, v in enumerate(floats) if v is not None]
            groups = [prompts[i] for i in kept] if prompts else None
            ci = stats.mean_with_ci([floats[i] for i in kept], groups)
            summary.setdefault(name, {})[score] = {"value": ci.pop("mean"), **ci, "statistic": "mean over prompts",
                                                   "dropped": len(floats) - len(kept)}
        if numeric:
            continue
        for score, value in scores_of(entry).items():
            ci = comparison.set_ci(entry, name, score) or {}
            summary.setdefault(name, {})[score] = {
                "value": value, "ci_low": ci.get("ci_low"), "ci_high": ci.get("ci_high"), "n": count,
                **{k: v for k, v in ci.items() if k not in ("ci_low", "ci_high", "n")},
                "statistic": "set", "indicative_only": comparison.indicative_only(name, entry)}
    return summary


def write_fvd_features(entry: dict, out_dir: Path, names: list[str], reference_names: list[str] | None) -> None:
    """Move FVD's detector features out of the entry (arrays do not belong in JSON) into fvd_features.npz.

    Names: generated = the evaluation's sorted file order, reference = folder file names or
    dataset indices such as ``validation[3]``; the FVD runner does not know them, so they are
    attached here unless it already did.
    """
    features = entry.pop("features", None)
    if features is None:
        return
    generated, reference = np.asarray(features["generated"]), np.asarray(features["reference"])
    generated_names = list(features.get("generated_names") or names)
    reference_names = list(features.get("reference_names") or reference_names or [])
    for what, rows, labels in (("generated", generated, generated_names), ("reference", reference, reference_names)):
        if len(labels) != rows.shape[0]:
            entry.setdefault("warnings", []).append(
                f"fvd_features.npz: {len(labels)} {what} names for {rows.shape[0]} feature rows; names left empty")
            labels.clear()
    np.savez(out_dir / FEATURES_FILE, generated=generated, reference=reference,
             generated_names=np.array(generated_names, dtype=str), reference_names=np.array(reference_names, dtype=str))
    entry["features_file"] = FEATURES_FILE


def entrypoint_hints(entries: dict[str, dict], prompts, settings_prefix: str = "") -> None:
    """Fixes as overrides that work when pasted into the entrypoint that ran: the metrics write them for
    ``python -m t2v_exp.evaluate`` (``+metric_settings.<metric>.<key>=...``); inside training the same
    keys live under ``evaluation.`` (``settings_prefix``). compute_metrics phrases a missing-prompts
    fix for Python callers; say what to pass to the CLI instead."""
    for entry in entries.values():
        if settings_prefix and isinstance(entry.get("fix"), str):
            entry["fix"] = entry["fix"].replace("+metric_settings.", f"+{settings_prefix}metric_settings.")
        if entry.get("status") == "skipped" and prompts is None and "prompt" in str(entry.get("reason")):
            entry["fix"] = ("pass prompts=FILE (one prompt per line, in the videos' sorted file order) or put "
                            "<video name>.txt prompt files beside the videos")


def problems(report: dict) -> list[dict[str, str]]:
    """Every requested metric that has no score: its status, reason and fix."""
    found = []
    for name, entry in report["metrics"].items():
        if entry.get("status") == "ok":
            continue
        reason = entry.get("reason") or entry.get("error") or f"status {entry.get('status')!r}"
        fix = entry.get("fix") or f"see the traceback in {Path(report.get('out_dir', '.')) / 'metrics.json'} " \
                                   f"(metrics.{name}.traceback)"
        found.append({"metric": name, "status": str(entry.get("status")), "reason": str(reason), "fix": str(fix)})
    return found


def score_and_report(out_dir: Path, *, videos: torch.Tensor, names: list[str], video_records: list[dict],
                     reference: torch.Tensor | None, reference_names: list[str] | None, settings,
                     description: dict, baseline: str | None, video_dir: Path, tracker=None,
                     plan: list[PlannedVideo] | None = None, role: str = "eval",
                     detector_videos: torch.Tensor | None = None) -> dict:
    """videos: [N, F, C, H, W] in [-1, 1], in the order of ``names`` / ``video_records``;
    ``detector_videos`` (same layout): what FVD / KVD score instead, when given.

    Writes metrics.json and per_video.csv into ``out_dir``. A baseline that is not comparable is
    recorded as ``comparison_refused`` (the caller decides whether that is fatal).
    """
    if role not in ROLES:
        raise ValueError(f"role={role!r}; expected one of {ROLES}")
    out_dir.mkdir(parents=True, exist_ok=True)
    prompts = [v["prompt"] for v in video_records] if all(v["prompt"] is not None for v in video_records) else None
    names_to_run, left_out = resolve_metrics(settings, frames=int(videos.shape[1]), has_reference=reference is not None,
                                             prompts=prompts)
    if left_out:
        log.info("metrics=auto: scoring %s; left out: %s", ", ".join(names_to_run),
                 "; ".join(f"{k} ({v})" for k, v in left_out.items() if not v.startswith("opt-in")) or "-")
    entries, columns = run_metrics(names_to_run, videos, prompts, reference, settings, detector_videos)
    entrypoint_hints(entries, prompts, str(description.get("settings_prefix") or ""))
    if "fvd" in entries:
        write_fvd_features(entries["fvd"], out_dir, names, reference_names)
    count = int(videos.shape[0])
    records = [{**record, "scores": {name: {column: values[i] for column, values in cols.items()}
                                     for name, cols in columns.items() if cols}}
               for i, record in enumerate(video_records)]
    report = {**description, "role": role, "out_dir": str(out_dir), "video_dir": str(video_dir),
              "num_videos": count, "frames": int(videos.shape[1]),
              "resolution": [int(videos.shape[3]), int(videos.shape[4])], **generation_record(settings, plan),
              "metrics_requested": names_to_run, "metrics_left_out": left_out or None,
              "reference": None if reference is None else {"num_videos": int(reference.shape[0]),
                                                           "names": list(reference_names or [])},
              "videos": records, "metrics": entries, "summary": summarize(entries, columns, count, prompts)}
    report["problems"] = problems(report)
    base = None
    if baseline:
        base_dir, base = load_baseline(baseline)
        report["baseline"] = str(base_dir)
        try:
            report["comparison"], report["comparison_protocol"] = comparison.compare(
                base, report, base_name=str(base_dir), tuned_name=str(out_dir),
                primary=str(getattr(settings, "primary", "auto") or "auto"))
        except comparison.IncomparableEvaluations as refused:
            report["comparison_refused"] = {"differences": refused.differences, "message": str(refused)}
            log.warning("Not compared with %s: differs in %s (details in metrics.json comparison_refused)",
                        base_dir, ", ".join(d["field"] for d in refused.differences))
            base = None
    (out_dir / "metrics.json").write_text(json.dumps(report, indent=2, default=str))
    write_per_video_csv(out_dir / "per_video.csv", records)
    log.info("Scores (%d videos, mean and 95%% t-interval over prompts):\n%s", count, format_summary(report))
    if "comparison" in report:
        log.info("Paired by %s against %s, the prompt as the unit (primary: %s; other scores exploratory, "
                 "BH q-values):\n%s", comparison.PAIRING, report["baseline"],
                 report["comparison_protocol"].get("primary") or "none",
                 comparison.format_comparison(report["comparison"]))
    if tracker is not None:
        log_to_tracker(tracker, report, role, base)
    return report


def csv_columns(records: list[dict]) -> dict[str, tuple[str, str]]:
    """CSV header -> (metric, column): plain column names, prefixed ``metric.`` only when two metrics share one."""
    pairs = list(dict.fromkeys((m, c) for r in records for m, cols in r["scores"].items() for c in cols))
    names = [c for _, c in pairs]
    return {(c if names.count(c) == 1 else f"{m}.{c}"): (m, c) for m, c in pairs}


def write_per_video_csv(path: Path, records: list[dict]) -> None:
    columns = csv_columns(records)
    fields = ["file", "video_index", "prompt", "prompt_index", "repeat", "seed", *columns]
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        for index, record in enumerate(records):
            row = {key: record.get(key) for key in ("file", "prompt", "prompt_index", "repeat", "seed")}
            row["video_index"] = index
            row.update({header: record["scores"].get(m, {}).get(c) for header, (m, c) in columns.items()})
            writer.writerow(row)


# -- printing and W&B ------------------------------------------------------------------------------
def format_summary(report: dict) -> str:
    lines = [f"{'metric/score':<34}{'value':>12}  {'95% CI':<24}{'n':>6}  note"]
    missing = {p["metric"]: p for p in report["problems"]}
    for name in report["metrics"]:
        if name in missing:
            lines.append(f"{name:<34}{missing[name]['status']:>12}  {missing[name]['reason']}; fix: {missing[name]['fix']}")
            continue
        for score, row in report["summary"].get(name, {}).items():
            ci = "" if row.get("ci_low") is None else f"[{row['ci_low']:.4g}, {row['ci_high']:.4g}]"
            note = "indicative only (under 256 videos)" if row.get("indicative_only") else ""
            lines.append(f"{name + '/' + score:<34}{row['value']:>12.4g}  {ci:<24}{row.get('n') or '':>6}  {note}")
    return "\n".join(lines)


def wandb_scalars(report: dict, role: str) -> dict[str, float]:
    """<role>/<metric>/<score> (+ _ci_low/_ci_high) and eval_delta/<metric>/<score>/<field>."""
    flat: dict[str, float] = {}
    for name, entry in report["metrics"].items():
        if entry.get("status") == "ok":
            flat.update({f"{role}/{name}/{k}": v for k, v in scores_of(entry).items()})
    for name, scores in report["summary"].items():
        for score, row in scores.items():
            flat[f"{role}/{name}/{score}"] = row["value"]
            if row.get("ci_low") is not None:
                flat[f"{role}/{name}/{score}_ci_low"], flat[f"{role}/{name}/{score}_ci_high"] = row["ci_low"], row["ci_high"]
    for name, scores in (report.get("comparison") or {}).items():
        for score, row in scores.items():
            for field in ("mean_delta", "delta", "ci_low", "ci_high", "p_value", "q_value", "adjusted_p", "pct_change"):
                if isinstance(row.get(field), int | float):
                    flat[f"eval_delta/{name}/{score}/{field}"] = float(row[field])
    return flat


def per_video_table(report: dict, base: dict | None) -> list[dict]:
    """One row per video; with a comparison, the base video and base/tuned/delta of each score,
    matched by (prompt, seed)."""
    base_videos = comparison.keyed_videos(base) if base else {}
    paired = [(m, s) for m, scores in (report.get("comparison") or {}).items()
              for s, row in scores.items() if row["kind"] == "paired"]
    rows = []
    for video in report["videos"]:
        row = {key: video.get(key) for key in ("file", "prompt", "seed", "repeat")}
        for metric, columns in video["scores"].items():
            row.update({f"{metric}/{column}": value for column, value in columns.items()})
        if base is not None:
            match = base_videos.get(comparison.video_key(video), {})
            row["base_file"] = match.get("file")
            for metric, score in paired:
                before = comparison.per_video_values(match, metric, score)
                after = comparison.per_video_values(video, metric, score)
                row[f"{metric}/{score} base"], row[f"{metric}/{score} tuned"] = before, after
                row[f"{metric}/{score} delta"] = None if before is None or after is None else after - before
        rows.append(row)
    return rows


def log_to_tracker(tracker, report: dict, role: str, base: dict | None) -> None:
    tracker.log(wandb_scalars(report, role))
    videos = {"video": ("file", Path(report["video_dir"]))}
    if base is not None:
        videos["base video"] = ("base_file", Path(base.get("video_dir") or Path(report["baseline"]) / "videos"))
    tracker.log_table(f"{role}/videos", per_video_table(report, base), videos=videos)


def evaluate_model(model, dataset, settings, out_dir: Path, *, fps: int, autocast=nullcontext,
                   description: dict | None = None, baseline: str | None = None, tracker=None,
                   plan: list[PlannedVideo] | None = None, role: str = "eval") -> dict:
    """Generate the plan's videos and score them against the dataset's clips."""
    plan = plan or evaluation_plan(settings, dataset)
    prompts, seeds = [v.prompt for v in plan], [v.seed for v in plan]
    videos01 = generate_videos(model, prompts, seeds=seeds, num_inference_steps=settings.num_inference_steps,
                               guidance_scale=settings.guidance_scale, autocast=autocast)
    names = write_videos(videos01, prompts, out_dir / "videos", fps, seeds=seeds)
    reference, reference_names, selection, decoded = None, None, None, None
    if any(name in settings.metrics for name in ("fvd", "kvd", AUTO)) and dataset is not None:
        indices, selection = reference_selection(dataset, plan)
        reference, reference_names = reference_clips(dataset, len(indices), settings.split, indices)
        # FVD / KVD set the generated videos beside reference clips that went through H.264: the
        # generated side goes through the same encode/decode. The other metrics score the frames the
        # model made (temporal SSIM of the model, not of the codec).
        decoded = decoded_videos(out_dir / "videos", names, videos01)
    description = {**(description or {}), "scored_inputs": scored_inputs_record(dataset, selection)}
    return score_and_report(out_dir, videos=videos01 * 2 - 1, names=names, video_records=planned_videos(plan, names),
                            reference=reference, reference_names=reference_names, settings=settings,
                            description=description, baseline=baseline, video_dir=out_dir / "videos",
                            tracker=tracker, plan=plan, role=role, detector_videos=decoded)


def evaluate_in_training(cfg, run_dir: Path, model, *, step: int, base: bool, autocast, tracker) -> dict:
    """Score the model into ``<run>/eval`` (fine-tuned, paired with ``eval_base`` when it exists) or
    ``<run>/eval_base`` (before any step: LoRA is still a no-op, full weights untouched).

    Never fails the run for its numbers: a skipped metric or a refused comparison (eval and
    eval_base not comparable) is recorded in metrics.json and logged, and training goes on.
    """
    settings = cfg.evaluation
    out_dir = run_dir / ("eval_base" if base else "eval")
    baseline = run_dir / "eval_base"
    dataset = instantiate_dataset(cfg.dataset, split=settings.split, report_dir=str(run_dir))
    description = {"mode": "model" if base else "run_dir", "model": cfg.model.name, "dataset": cfg.dataset.name,
                   "finetuned": not base, "step": step,
                   "settings_prefix": "evaluation."}  # fixes name +evaluation.metric_settings...
    report = evaluate_model(
        model, dataset, settings, out_dir, fps=cfg.model.fps, autocast=autocast, description=description,
        tracker=tracker, role="eval_base" if base else "eval",
        baseline=str(baseline) if not base and (baseline / "metrics.json").is_file() else None,
    )
    for missing in problems(report):
        log.warning("%s: %s %s (%s; fix: %s)", out_dir.name, missing["metric"], missing["status"],
                    missing["reason"], missing["fix"])
    if report.get("comparison_refused"):
        log.error("%s\n(recorded in %s; training goes on and the fine-tuned weights are kept)",
                  report["comparison_refused"]["message"], out_dir / "metrics.json")
    return report
