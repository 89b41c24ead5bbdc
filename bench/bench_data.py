"""Data pipeline speed: sparse keyframe-seek clip reading vs decoding every frame, and the media index.

1. Clip reading on long videos (60 s, 64x64, 24 fps, generated once into a cache dir):
   ``read_clip`` (seek to the keyframe before a random start, decode forward only to the last
   wanted frame) vs the naive reader that decodes the whole file and then picks the frames.
   Both sides read the same files in the same order from random starts (the naive side's cost
   does not depend on the start, the seeking side's only on the distance to the keyframe before
   it); they alternate within each round, and which goes first swaps each round, so
   machine-load drift hits both equally.
   We report median clips/s per side and the ratio.
2. Index build for 10,000 entries: probing 10,000 real videos takes minutes, so the entries are
   simulated (10,000 real empty files, so stat/size/mtime are real; the probe returns a made-up
   entry without opening the file). The real per-file probe cost is measured on a handful of
   real videos and reported beside it. Run in a fresh subprocess so its peak RSS is its own.

Usage: .venv/bin/python bench/bench_data.py [--rounds 7] [--quick]
Writes bench/results/data.json (machine, versions, raw figures).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import av
import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from t2v_exp.data.index import IndexEntry, VideoIndex, probe_media  # noqa: E402
from t2v_exp.data.video_io import probe_video, read_clip, resize_and_crop, write_video  # noqa: E402

CLIP_FRAMES, STRIDE, SIZE, FPS = 16, 2, 64, 24


def cache_dir() -> Path:
    root = os.environ.get("T2V_EXP_CACHE") or Path.home() / ".cache" / "t2v_exp"
    path = Path(root) / "bench" / "long_videos"
    path.mkdir(parents=True, exist_ok=True)
    return path


def long_videos(count: int, seconds: int) -> list[Path]:
    """Moving gradients with a little noise: cheap to encode, but not a static frame."""
    paths = []
    frames_total = seconds * FPS
    ys, xs = np.mgrid[0:SIZE, 0:SIZE]
    for v in range(count):
        path = cache_dir() / f"long{v}_{seconds}s_{SIZE}px_{FPS}fps.mp4"
        if not path.is_file():
            rng = np.random.default_rng(v)
            frames = np.empty((frames_total, SIZE, SIZE, 3), np.uint8)
            for t in range(frames_total):
                base = (xs * 3 + ys * 2 + 5 * t + 40 * v) % 256
                frames[t] = np.stack([base, (base + 85) % 256, (base + 170) % 256], -1)
                frames[t] ^= rng.integers(0, 8, (SIZE, SIZE, 1), dtype=np.uint8)
            write_video(path, frames, fps=FPS)
        paths.append(path)
    return paths


def read_clip_decode_all(path: Path, offset_frame: int) -> torch.Tensor:
    """The naive reader: decode the whole file, then take the strided frames from offset_frame."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        decoded = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
    picked = [decoded[offset_frame + k * STRIDE] for k in range(CLIP_FRAMES)]
    frames = torch.from_numpy(np.stack(picked)).permute(0, 3, 1, 2).float()
    return resize_and_crop(frames, SIZE, SIZE, center=True) / 127.5 - 1.0


def bench_reading(paths: list[Path], rounds: int, clips_per_round: int) -> dict:
    total_frames = probe_video(paths[0]).num_frames
    span = (CLIP_FRAMES - 1) * STRIDE
    jobs_rng = random.Random(0)
    sides = {"read_clip_seek": [], "decode_all_then_sample": []}
    for r in range(rounds):
        # Same files for both sides this round; the start frame seeds read_clip's own random start.
        jobs = [(paths[jobs_rng.randrange(len(paths))], jobs_rng.randrange(total_frames - span))
                for _ in range(clips_per_round)]
        order = list(sides) if r % 2 == 0 else list(reversed(sides))
        for side in order:
            started = time.perf_counter()
            for path, offset in jobs:
                if side == "read_clip_seek":
                    read_clip(path, CLIP_FRAMES, SIZE, SIZE, frame_stride=STRIDE, start="random",
                              rng=random.Random(offset))
                else:
                    read_clip_decode_all(path, offset)
            sides[side].append(clips_per_round / (time.perf_counter() - started))
    medians = {side: statistics.median(values) for side, values in sides.items()}
    return {
        "clips_per_s_per_round": sides,
        "median_clips_per_s": medians,
        "speedup_seek_over_decode_all": medians["read_clip_seek"] / medians["decode_all_then_sample"],
        "setup": {"videos": len(paths), "seconds_each": total_frames / FPS, "fps": FPS, "size": SIZE,
                  "clip_frames": CLIP_FRAMES, "frame_stride": STRIDE, "rounds": rounds,
                  "clips_per_round": clips_per_round, "gop": "libx264 default (keyint 250)"},
    }


def synthetic_probe(path: str, size: int, mtime_ns: int) -> IndexEntry:
    return IndexEntry(path, size, mtime_ns, "video", frames=240, fps=24.0, width=320, height=240,
                      duration=10.0, decodable=True)


def index_child(count: int) -> dict:
    """Runs in a fresh process: build, then rescan, an index of ``count`` empty files."""
    with tempfile.TemporaryDirectory() as folder:
        files = Path(folder) / "files"
        files.mkdir()
        paths = []
        for i in range(count):
            path = files / f"{i:06d}.mp4"
            path.touch()
            paths.append(str(path))
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        index_file = Path(folder) / "index.jsonl"
        started = time.perf_counter()
        VideoIndex(index_file, probe=synthetic_probe).scan(paths)
        build = time.perf_counter() - started
        started = time.perf_counter()
        index = VideoIndex(index_file, probe=synthetic_probe)
        index.scan(paths)
        rescan = time.perf_counter() - started
        # Python-heap peak of a rescan (the old index is held as small dicts while the new one
        # streams out): what the index itself costs, apart from the interpreter and torch.
        tracemalloc.start()
        VideoIndex(index_file, probe=synthetic_probe).scan(paths)
        heap_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        return {"entries": count, "build_s": build, "rescan_s": rescan, "rescan_probes": index.probes,
                "index_bytes": index_file.stat().st_size,
                "scan_python_heap_peak_mb": heap_peak / 2**20,
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "rss_before_scan_mb": rss_before / 1024}


def bench_real_probe(paths: list[Path], repeats: int = 3) -> dict:
    times = []
    for _ in range(repeats):
        for path in paths:
            stat = os.stat(path)
            started = time.perf_counter()
            probe_media(str(path), stat.st_size, stat.st_mtime_ns)
            times.append(time.perf_counter() - started)
    return {"files": len(paths), "repeats": repeats, "median_probe_ms": 1000 * statistics.median(times),
            "extrapolated_10k_s": 10_000 * statistics.median(times)}


def machine_info() -> dict:
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "av": av.__version__,
        "ffmpeg_libraries": {name: ".".join(map(str, v)) for name, v in av.library_versions.items()},
        "numpy": np.__version__,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--clips", type=int, default=8, help="clips per side per round")
    parser.add_argument("--index-entries", type=int, nargs="+", default=[1_000, 10_000, 100_000],
                        help="index sizes to build and rescan, each in a fresh process")
    parser.add_argument("--quick", action="store_true", help="20 s videos, 3 rounds (a smoke test)")
    parser.add_argument("--index-child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.index_child:
        print(json.dumps(index_child(args.index_child)))
        return
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    seconds, rounds = (20, 3) if args.quick else (60, args.rounds)

    started = time.perf_counter()
    paths = long_videos(3, seconds)
    generation_s = time.perf_counter() - started
    reading = bench_reading(paths, rounds, args.clips)
    scale = []
    for count in args.index_entries:  # fresh process per size: peak RSS is per process
        child = subprocess.run([sys.executable, __file__, "--index-child", str(count)],
                               capture_output=True, text=True, check=True)
        entry = json.loads(child.stdout.strip().splitlines()[-1])
        entry["simulated"] = "entries come from a synthetic probe over real empty files (no video opened)"
        scale.append(entry)
    index = next((e for e in scale if e["entries"] == 10_000), scale[-1])
    real_probe = bench_real_probe(paths)

    medians = reading["median_clips_per_s"]
    rows = [
        ("read_clip (keyframe seek)", f"{medians['read_clip_seek']:.1f} clips/s"),
        ("decode all, then sample", f"{medians['decode_all_then_sample']:.1f} clips/s"),
        ("speedup (seek / decode-all)", f"{reading['speedup_seek_over_decode_all']:.1f}x"),
        *[(f"index {e['entries']:,} entries (simulated): build / rescan",
            f"{e['build_s']:.2f} s / {e['rescan_s']:.2f} s ({e['rescan_probes']} probes), peak RSS "
            f"{e['peak_rss_mb']:.0f} MB (before scan {e['rss_before_scan_mb']:.0f}), heap {e['scan_python_heap_peak_mb']:.1f} MB")
          for e in scale],
        (f"real probe per file ({SIZE}x{SIZE} {seconds} s mp4)", f"{real_probe['median_probe_ms']:.1f} ms "
                                                 f"(~{real_probe['extrapolated_10k_s']:.0f} s for 10k files)"),
    ]
    width = max(len(name) for name, _ in rows)
    print(f"\nData pipeline bench ({seconds} s videos, {SIZE}x{SIZE} @ {FPS} fps, {CLIP_FRAMES} frames stride "
          f"{STRIDE}; medians of {rounds} alternating rounds)")
    for name, value in rows:
        print(f"  {name:<{width}}  {value}")

    results = {"machine": machine_info(), "video_generation_s": generation_s, "reading": reading,
               "index": index, "index_scale": scale, "real_probe": real_probe,
               "total_s": time.perf_counter() - started}
    out = REPO / "bench" / "results" / "data.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {out.relative_to(REPO)}")


if __name__ == "__main__":
    main()
