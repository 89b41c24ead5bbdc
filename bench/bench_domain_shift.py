"""The default experiment, timed: what `make train` does and shows, as figures and a picture.

Runs ``python -m t2v_exp.train`` with no overrides (the tiny pretrained ModelScope base, LoRA on
the shapes domain B, base-vs-fine-tuned evaluation), then prints the before/after table from its
eval/metrics.json and writes:
- bench/results/domain_shift.json: wall time, machine, load average, the paired comparison rows;
- bench/results/domain_shift_strip.png: four frames of one held-out prompt and seed, the base
  model above the fine-tuned one (the picture in the README).

With ``--load N`` it runs the same command while N busy-looping processes compete for the CPU
(another job on the machine) and writes only the timing, to bench/results/domain_shift_load<N>.json.

Usage: .venv/bin/python bench/bench_domain_shift.py [--out bench/results] [--load N] [ARGS...]  (extra Hydra overrides)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def readme_table(report: dict) -> str:
    """The comparison as the README shows it: the primary score first, then the exploratory ones."""
    from t2v_exp.scoring.comparison import change_text, p_text, verdict

    protocol = report["comparison_protocol"]
    rows = [(f"{m}/{s}", row) for m, scores in report["comparison"].items() for s, row in scores.items()]
    rows.sort(key=lambda item: item[1].get("role") != "primary")
    lines = [f"| score ({protocol['n_pairs']} held-out domain-B videos, {protocol['n_prompts']} prompts) | base | "
             "fine-tuned | change [95% CI] | p (BH q) | verdict |", "|---|---|---|---|---|---|"]
    for name, row in rows:
        label = f"**{name}** (primary)" if row.get("role") == "primary" else name
        lines.append(f"| {label} | {row['base_mean']:.3g} | {row['tuned_mean']:.3g} | {change_text(row)} | "
                     f"{p_text(row)} | {verdict(row)} |")
    return "\n".join(lines)


def strip_pair(base_video: Path, tuned_video: Path, out: Path) -> None:
    import numpy as np
    from PIL import Image

    from t2v_exp.scoring.sampling import decoded_frames, frame_strip

    rows = [frame_strip(decoded_frames(v), 4) for v in (base_video, tuned_video)]
    gap = np.full((8, rows[0].shape[1], 3), 255, np.uint8)
    Image.fromarray(np.concatenate([rows[0], gap, rows[1]])).save(out)


BUSY_LOOP = "import time\nwhile True: sum(i * i for i in range(10_000))"


def run_default(run_dir: Path, overrides: list[str]) -> tuple[subprocess.CompletedProcess, float]:
    """``python -m t2v_exp.train`` (W&B off) into ``run_dir``; the process and its wall time."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "t2v_exp.train", "logger=none", f"hydra.run.dir={run_dir}",
                           *overrides], cwd=REPO, env={**os.environ, "WANDB_MODE": "offline"},
                          capture_output=True, text=True)
    return done, time.perf_counter() - started


def timed_under_load(overrides: list[str], load: int, out: Path) -> int:
    """The default command's wall time with ``load`` CPU-bound processes running beside it."""
    busy = [subprocess.Popen([sys.executable, "-c", BUSY_LOOP]) for _ in range(load)]
    try:
        with tempfile.TemporaryDirectory(prefix="t2v_domain_shift_") as tmp:
            done, wall = run_default(Path(tmp) / "run", overrides)
    finally:
        for process in busy:
            process.kill()
    if done.returncode != 0:
        print(done.stderr[-4000:], file=sys.stderr)
        return done.returncode
    result = {"command": "python -m t2v_exp.train " + " ".join(overrides), "wall_time_s": round(wall, 1),
              "busy_processes_beside_it": load,
              "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count()}}
    out.mkdir(parents=True, exist_ok=True)
    (out / f"domain_shift_load{load}.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"wall time {wall:.0f} s with {load} busy process(es) beside it; wrote {out / f'domain_shift_load{load}.json'}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    parser.add_argument("--load", type=int, default=0, help="busy processes to run beside the job (timing only)")
    args, overrides = parser.parse_known_args()
    if args.load:
        return timed_under_load(overrides, args.load, args.out)
    with tempfile.TemporaryDirectory(prefix="t2v_domain_shift_") as tmp:
        run_dir = Path(tmp) / "run"
        load_before = os.getloadavg()
        done, wall = run_default(run_dir, overrides)
        if done.returncode != 0:
            print(done.stderr[-4000:], file=sys.stderr)
            return done.returncode
        report = json.loads((run_dir / "eval" / "metrics.json").read_text())
        from t2v_exp.scoring.comparison import format_comparison

        table = format_comparison(report["comparison"])
        print(table)
        markdown = readme_table(report)
        print("\n" + markdown)
        print(f"\nwall time {wall:.0f} s (python -m t2v_exp.train, tiny ModelScope base, LoRA on domain B); "
              f"load average before {load_before[0]:.2f}")
        name = report["videos"][0]["file"]
        args.out.mkdir(parents=True, exist_ok=True)
        strip_pair(run_dir / "eval_base" / "videos" / name, run_dir / "eval" / "videos" / name,
                   args.out / "domain_shift_strip.png")
        result = {
            "command": "python -m t2v_exp.train " + " ".join(overrides), "wall_time_s": round(wall, 1),
            "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                        "load_average_before": load_before},
            "strip_prompt": report["videos"][0]["prompt"], "strip_seed": report["videos"][0]["seed"],
            "comparison": report["comparison"], "protocol": report["comparison_protocol"], "table": table,
            "readme_table": markdown,
        }
        (args.out / "domain_shift.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"Wrote {args.out / 'domain_shift.json'} and {args.out / 'domain_shift_strip.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
