"""Fake evaluation dirs for the rating tests: metrics.json as the evaluator writes it (videos with
prompt and seed) beside small real mp4s, laid out as a run or a sweep. No test functions here."""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np

PROMPTS = ("a red circle moving left", "a blue square moving up", "a green triangle moving right",
           "a yellow circle moving down")
MODEL_NAMES = ("modelscope_tiny", "cogvideox_tiny")


def write_clip(path: Path, colour: tuple[int, int, int], shift: int, frames: int = 8, size: int = 48) -> None:
    """A square of ``colour`` sliding over grey: different per system and per (prompt, seed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=8)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "30", "threads": "1"}
        for t in range(frames):
            image = np.full((size, size, 3), 96, dtype=np.uint8)
            x = (shift * 5 + t * 4) % (size - 12)
            image[18:30, x:x + 12] = colour
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def write_eval(directory: Path, colour: tuple[int, int, int], *, prompts=PROMPTS, seeds_per_prompt: int = 1,
               model: str = "modelscope_tiny") -> Path:
    """An evaluation dir: metrics.json (with a model name and paths a leak test looks for) + videos/."""
    videos = []
    for p, prompt in enumerate(prompts):
        for r in range(seeds_per_prompt):
            seed = p * seeds_per_prompt + r
            name = f"{len(videos):03d}_{prompt.replace(' ', '_')}_seed{seed}.mp4"
            write_clip(directory / "videos" / name, colour, shift=seed)
            videos.append({"file": name, "prompt": prompt, "prompt_index": p, "repeat": r, "seed": seed,
                           "scores": {}})
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "metrics.json").write_text(json.dumps({
        "mode": "run_dir", "model": model, "out_dir": str(directory), "video_dir": str(directory / "videos"),
        "num_videos": len(videos), "videos": videos, "metrics": {}}))
    return directory


def make_run(root: Path, name: str = "2026-01-01_00-00-00-000000_modelscope_tiny_shapes", **kwargs) -> Path:
    run = root / name
    write_eval(run / "eval_base", (200, 40, 40), **kwargs)
    write_eval(run / "eval", (40, 200, 40), **kwargs)
    return run


def make_sweep(root: Path, jobs: int = 2, **kwargs) -> Path:
    """A sweep of ``jobs`` families (one job each): each with its own base."""
    sweep = root / "sweep"
    for job in range(jobs):
        model = MODEL_NAMES[job % len(MODEL_NAMES)]
        directory = sweep / f"{job}_{model}_shapes"
        write_eval(directory / "eval_base", (200, 40 + 60 * job, 40), model=model, **kwargs)
        write_eval(directory / "eval", (40, 200, 40 + 60 * job), model=model, **kwargs)
        (directory / "status.json").write_text(json.dumps({"status": "ok", "model": model}))
    return sweep
