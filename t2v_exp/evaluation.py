"""Evaluation: prompts -> videos (generated with fixed seeds, or read from a folder) -> metrics.

Writes ``metrics.json`` (scores + protocol per metric), ``per_video.csv``, the videos, and logs
a W&B table. With a baseline eval dir, every score gets its absolute and percent change.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from contextlib import nullcontext
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .engine.validation import slug, to_uint8_frames
from .metrics.suite import compute_metrics

log = logging.getLogger(__name__)
VIDEO_SUFFIXES = (".mp4", ".webm", ".mov", ".mkv", ".avi")
NOT_SCORES = {"seconds", "status"}


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


def evaluation_prompts(settings, dataset=None) -> list[str]:
    """``num_videos`` prompts: from the prompts file, else the dataset's captions, cycled if short."""
    source = read_prompts_file(settings.prompts) if settings.prompts else (
        dataset.captions() if dataset is not None else [])
    if not source:
        raise ValueError("No evaluation prompts: set prompts=FILE or use a dataset with captions")
    return [source[i % len(source)] for i in range(settings.num_videos)]


def reference_clips(dataset, count: int) -> torch.Tensor:
    """The first ``count`` clips of the evaluation split, [N, F, C, H, W] in [-1, 1]."""
    count = min(count, len(dataset))
    items = [dataset[i]["video"] for i in tqdm(range(count), desc="reference clips", leave=False)]
    return torch.stack(items)


@torch.no_grad()
def generate_videos(model, prompts: list[str], *, seed: int, num_inference_steps: int, guidance_scale: float,
                    autocast=nullcontext) -> torch.Tensor:
    """Video i from ``seed + i``: the same prompt gets the same noise whatever the model or batch."""
    videos = []
    denoiser = model.denoiser
    was_training = denoiser.training
    denoiser.eval()
    try:
        for i, prompt in enumerate(tqdm(prompts, desc="generate", unit="video")):
            generator = torch.Generator().manual_seed(seed + i)
            with autocast():
                video = model.generate([prompt], num_inference_steps=num_inference_steps,
                                       guidance_scale=guidance_scale, generator=generator)[0]
            videos.append(video)
    finally:
        denoiser.train(was_training)
    return torch.stack(videos)  # [N, F, C, H, W] in [0, 1]


def write_videos(videos01: torch.Tensor, prompts: list[str], out_dir: Path, fps: int) -> list[str]:
    from .data.video_io import write_video

    out_dir.mkdir(parents=True, exist_ok=True)
    names = []
    for i, (video, prompt) in enumerate(zip(videos01, prompts, strict=True)):
        name = f"{i:03d}_{slug(prompt)}.mp4"
        write_video(out_dir / name, to_uint8_frames(video).numpy(), fps=fps)
        names.append(name)
    return names


def load_video_folder(folder: str | Path, *, num_frames: int | None = None) -> tuple[torch.Tensor, list[str]]:
    """Every video file of a folder (sorted), at the first file's size and the shortest length."""
    from .data.video_io import VideoDecodeError, probe_video, read_clip

    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"videos={folder} is not a directory")
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES)
    infos = [probe_video(p) for p in paths]
    good = [(p, i) for p, i in zip(paths, infos, strict=True) if i.decodable and i.num_frames > 0]
    for path, info in zip(paths, infos, strict=True):
        if not info.decodable:
            log.warning("skipping %s: %s", path, info.error)
    if not good:
        raise FileNotFoundError(f"videos={folder}: no decodable video files ({', '.join(VIDEO_SUFFIXES)})")
    frames = num_frames or min(info.num_frames for _, info in good)
    height, width = good[0][1].height, good[0][1].width
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


def scores_of(entry: dict) -> dict[str, float]:
    return {k: float(v) for k, v in entry.items()
            if k not in NOT_SCORES and isinstance(v, int | float) and not isinstance(v, bool)}


def compare_to_baseline(current: dict, baseline: dict) -> dict[str, dict[str, dict[str, float | None]]]:
    """Per metric and score: baseline, current, absolute change, percent change."""
    table: dict[str, dict] = {}
    for name, entry in current.items():
        base_entry = baseline.get(name, {})
        if entry.get("status") != "ok" or base_entry.get("status") != "ok":
            continue
        base_scores = scores_of(base_entry)
        for key, value in scores_of(entry).items():
            if key not in base_scores:
                continue
            before = base_scores[key]
            pct = None if before == 0 or not math.isfinite(before) else 100.0 * (value - before) / abs(before)
            table.setdefault(name, {})[key] = {"baseline": before, "current": value, "change": value - before,
                                               "pct_change": pct}
    return table


def format_comparison(table: dict) -> str:
    lines = [f"{'metric':<32}{'baseline':>12}{'current':>12}{'change':>12}{'%':>9}"]
    for name, scores in table.items():
        for key, row in scores.items():
            pct = "n/a" if row["pct_change"] is None else f"{row['pct_change']:+.1f}"
            lines.append(f"{name + '/' + key:<32}{row['baseline']:>12.4f}{row['current']:>12.4f}"
                         f"{row['change']:>+12.4f}{pct:>9}")
    return "\n".join(lines)


def score_and_report(out_dir: Path, *, videos: torch.Tensor, prompts: list[str] | None, names: list[str],
                     reference: torch.Tensor | None, settings, description: dict, baseline: str | None,
                     video_dir: Path, tracker=None) -> dict:
    """videos: [N, F, C, H, W] in [-1, 1]. Writes metrics.json and per_video.csv into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    result = compute_metrics(videos, prompts, reference, metrics=list(settings.metrics),
                             settings=dict(settings.metric_settings or {}))
    report = {**description, "num_videos": int(videos.shape[0]), "frames": int(videos.shape[1]),
              "resolution": [int(videos.shape[3]), int(videos.shape[4])], "metrics": result["metrics"]}
    if baseline:
        base_file = Path(baseline).expanduser() / "metrics.json"
        if not base_file.is_file():
            raise FileNotFoundError(f"baseline={baseline}: no metrics.json there (pass an earlier eval directory)")
        report["baseline"] = str(Path(baseline).expanduser())
        report["comparison"] = compare_to_baseline(result["metrics"], json.loads(base_file.read_text())["metrics"])
        log.info("Change against %s:\n%s", baseline, format_comparison(report["comparison"]))
    (out_dir / "metrics.json").write_text(json.dumps(report, indent=2, default=str))
    per_video = {"file": names, **result["per_video"]}
    rows = [{column: per_video[column][i] for column in per_video} for i in range(len(names))]
    with open(out_dir / "per_video.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(per_video))
        writer.writeheader()
        writer.writerows(rows)
    for name, entry in result["metrics"].items():
        state = entry["status"] if entry["status"] != "ok" else ", ".join(
            f"{k}={v:.4f}" for k, v in scores_of(entry).items())
        log.info("%-16s %s%s", name, state, f" ({entry.get('reason')}; fix: {entry.get('fix')})"
                 if entry["status"] == "skipped" else "")
    if tracker is not None:
        flat = {f"eval/{n}/{k}": v for n, e in result["metrics"].items() if e["status"] == "ok"
                for k, v in scores_of(e).items()}
        tracker.log(flat)
        tracker.log_table("eval/videos", rows, video_dir=video_dir, video_column="file")
    return report


def evaluate_model(model, dataset, settings, out_dir: Path, *, fps: int, autocast=nullcontext,
                   description: dict | None = None, baseline: str | None = None, tracker=None) -> dict:
    """Generate ``settings.num_videos`` videos and score them against the dataset's clips."""
    prompts = evaluation_prompts(settings, dataset)
    videos01 = generate_videos(model, prompts, seed=settings.seed, num_inference_steps=settings.num_inference_steps,
                               guidance_scale=settings.guidance_scale, autocast=autocast)
    names = write_videos(videos01, prompts, out_dir / "videos", fps)
    needs_reference = "fvd" in settings.metrics
    reference = reference_clips(dataset, len(prompts)) if needs_reference and dataset is not None else None
    return score_and_report(out_dir, videos=videos01 * 2 - 1, prompts=prompts, names=names, reference=reference,
                            settings=settings, description=description or {}, baseline=baseline,
                            video_dir=out_dir / "videos", tracker=tracker)
