"""Latent cache vs on-the-fly encoding: training steps/s, peak RSS, cache build clips/s.

Each measurement runs in a fresh process (peak RSS only grows within a process); the two sides
alternate within every round and the table reports medians and ratios. Writes
bench/results/cache.json. Usage: python bench/bench_cache.py [--rounds 2] [--steps 20]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FAMILIES = ["modelscope_tiny", "cogvideox_tiny", "animatediff_tiny"]

WORKER = r"""
import json, resource, sys, time
from pathlib import Path
from t2v_exp.config import compose_job_config
from t2v_exp.engine.trainer import Trainer

model, cache, steps, cache_dir, run_dir = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]
cfg = compose_job_config([f"model={model}", f"dataset.cache={cache}", "logger=none", "validation.enabled=false",
                          f"train.max_steps={steps + 5}", "dataset.num_videos=16", f"paths.cache_dir={cache_dir}"],
                         run_dir)
trainer = Trainer.from_config(cfg, Path(run_dir))
started = time.perf_counter()
setup_s = time.perf_counter() - started
batches = iter(trainer.batches)
for _ in range(3):  # warm-up
    trainer.train_step(batches)
started = time.perf_counter()
for _ in range(steps):
    trainer.train_step(batches)
elapsed = time.perf_counter() - started
trainer.close()
stats = trainer.cache.stats if trainer.cache else None
print(json.dumps({"steps_per_s": steps / elapsed, "setup_s": setup_s,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "encoded_videos": stats.encoded_videos if stats else None}))
"""


def run_worker(model: str, cache: str, steps: int, cache_dir: str) -> dict:
    with tempfile.TemporaryDirectory() as run_dir:
        out = subprocess.run([sys.executable, "-c", WORKER, model, cache, str(steps), cache_dir, run_dir],
                             cwd=REPO, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    # The build rate below must not include a first build of the twins. In a child process: a
    # forked child's ru_maxrss starts at its parent's, so this process must stay small.
    subprocess.run([sys.executable, "-c", "from bench.common import build_tiny_twins; build_tiny_twins()"],
                   cwd=REPO, check=True)
    raw: dict[str, dict[str, list[dict]]] = {}
    with tempfile.TemporaryDirectory() as cache_dir:
        for model in FAMILIES:
            raw[model] = {"none": [], "latents": [], "build": []}
            # the first cached run builds the cache; its setup time gives the build rate
            first = run_worker(model, "latents", args.steps, cache_dir)
            raw[model]["build"].append(first)
            for round_index in range(args.rounds):
                order = ["none", "latents"] if round_index % 2 == 0 else ["latents", "none"]
                for side in order:
                    raw[model][side].append(run_worker(model, side, args.steps, cache_dir))
    rows = []
    for model, sides in raw.items():
        plain = statistics.median(r["steps_per_s"] for r in sides["none"])
        cached = statistics.median(r["steps_per_s"] for r in sides["latents"])
        rss_plain = statistics.median(r["peak_rss_mb"] for r in sides["none"])
        rss_cached = statistics.median(r["peak_rss_mb"] for r in sides["latents"])
        build = sides["build"][0]
        build_rate = build["encoded_videos"] / max(build["setup_s"], 1e-9)
        rows.append({"model": model, "steps_per_s_uncached": plain, "steps_per_s_cached": cached,
                     "speedup": cached / plain, "peak_rss_mb_uncached": rss_plain, "peak_rss_mb_cached": rss_cached,
                     "cache_build_clips_per_s_incl_setup": build_rate})
    header = f"{'model':<18}{'uncached st/s':>14}{'cached st/s':>13}{'ratio':>7}{'RSS MB un/ca':>16}{'build clips/s':>15}"
    print(header)
    for r in rows:
        print(f"{r['model']:<18}{r['steps_per_s_uncached']:>14.2f}{r['steps_per_s_cached']:>13.2f}{r['speedup']:>7.2f}"
              f"{r['peak_rss_mb_uncached']:>8.0f}/{r['peak_rss_mb_cached']:<7.0f}{r['cache_build_clips_per_s_incl_setup']:>15.2f}")
    import torch

    results = {"machine": {"platform": platform.platform(), "processor": platform.processor(),
                           "cpus": __import__("os").cpu_count(), "python": platform.python_version(),
                           "torch": torch.__version__},
               "settings": vars(args), "rows": rows, "raw": raw,
               "note": "16 shapes clips, batch 2, fp32 on CPU; build rate includes model setup time"}
    out = REPO / "bench" / "results" / "cache.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
