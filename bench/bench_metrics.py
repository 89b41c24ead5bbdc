"""Speed and agreement of the project's metrics against the reference implementations.

Compares, on identical inputs:
- temporal SSIM + PSNR (batched torch) vs scikit-image's per-frame-pair loop, both on the same
  uint8 frames with data_range=255;
- the Fréchet distance (eigenvalues of S1 S2) vs the scipy.linalg.sqrtm formula.
The two sides alternate within each repeat (and swap which goes first), so drift in machine load
hits both equally; we report medians and the reference/ours time ratio (>1: ours is faster).

Usage: .venv/bin/python bench/bench_metrics.py [--repeats 5] [--quick]
Writes bench/results/metrics.json (machine, versions, raw timings, agreement).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import scipy
import skimage
import torch
from scipy import linalg, ndimage
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from t2v_exp.metrics.frechet import feature_statistics, frechet_distance  # noqa: E402
from t2v_exp.metrics.temporal import TemporalSettings, temporal_scores  # noqa: E402


def decoded_like_videos(count, frames, height, width, seed=0):
    """uint8 [N, F, H, W, 3] as a decoder hands them over: filtered-noise texture panning one pixel
    per frame, a slow brightness drift, and +-1 level of noise (codec noise), quantised to 0..255."""
    rng = np.random.default_rng(seed)
    videos = np.empty((count, frames, height, width, 3), dtype=np.uint8)
    for index in range(count):
        texture = ndimage.gaussian_filter(rng.standard_normal((height + frames, width + frames, 3)), (2.0, 2.0, 0))
        texture = 40 * texture / texture.std() + rng.uniform(60, 190)
        for t in range(frames):
            frame = texture[t : t + height, t : t + width] + 1.5 * t + rng.uniform(-1, 1, (height, width, 3))
            videos[index, t] = np.clip(np.round(frame), 0, 255)
    return videos


def skimage_temporal(videos_uint8):
    """scikit-image's per-frame-pair loop on uint8 frames, data_range=255 (the public convention)."""
    ssim, psnr = [], []
    for video in videos_uint8:
        pairs = range(len(video) - 1)
        ssim.append(np.mean([
            structural_similarity(video[t], video[t + 1], gaussian_weights=True, sigma=1.5,
                                  use_sample_covariance=False, data_range=255, channel_axis=-1)
            for t in pairs
        ]))
        psnr.append(np.mean([peak_signal_noise_ratio(video[t], video[t + 1], data_range=255) for t in pairs]))
    return np.array(ssim), np.array(psnr)


def scipy_frechet(mu1, sigma1, mu2, sigma2):
    covmean = linalg.sqrtm(sigma1 @ sigma2).real
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def timed(function):
    started = time.perf_counter()
    value = function()
    return time.perf_counter() - started, value


def alternate(ours, reference, repeats):
    """Run both `repeats` times, alternating and swapping order; returns times and last values."""
    times = {"ours": [], "reference": []}
    values = {}
    for repeat in range(repeats):
        order = [("ours", ours), ("reference", reference)]
        if repeat % 2:
            order.reverse()
        for name, function in order:
            seconds, values[name] = timed(function)
            times[name].append(seconds)
    return times, values


def summarize(times):
    ours, reference = statistics.median(times["ours"]), statistics.median(times["reference"])
    return {"median_s_ours": ours, "median_s_reference": reference, "ratio_reference_over_ours": reference / ours}


def bench_temporal(count, frames, height, width, repeats, implementation):
    videos = decoded_like_videos(count, frames, height, width)
    # no cap: compare raw PSNR with skimage
    settings = TemporalSettings(psnr_cap_db=float("inf"), implementation=implementation)
    tensor = torch.from_numpy(videos)
    times, values = alternate(lambda: temporal_scores(tensor, settings), lambda: skimage_temporal(videos), repeats)
    ours = values["ours"]["per_video"]
    reference_ssim, reference_psnr = values["reference"]
    return {
        "case": f"temporal SSIM+PSNR {count}x{frames}x{height}x{width}x3 uint8, {implementation}",
        "implementation": ours_protocol_implementation(values["ours"]),
        "frame_pairs": count * (frames - 1),
        "times": times,
        **summarize(times),
        "max_abs_diff_ssim": float(np.max(np.abs(np.array(ours["temporal_ssim"]) - reference_ssim))),
        "max_abs_diff_psnr_db": float(np.max(np.abs(np.array(ours["temporal_psnr"]) - reference_psnr))),
    }


def ours_protocol_implementation(result):
    return result["protocol"]["implementation"]


def bench_frechet(count, dim, repeats):
    rng = np.random.default_rng(0)
    mixing = rng.normal(size=(dim, dim)) / np.sqrt(dim)
    first = rng.normal(size=(count, dim)) @ mixing
    second = rng.normal(size=(count, dim)) @ mixing + 0.1
    stats1 = feature_statistics(torch.from_numpy(first))
    stats2 = feature_statistics(torch.from_numpy(second))
    numpy_stats = [tensor.numpy() for tensor in (*stats1, *stats2)]
    times, values = alternate(
        lambda: frechet_distance(*stats1, *stats2), lambda: scipy_frechet(*numpy_stats), repeats
    )
    return {
        "case": f"Frechet distance N={count} D={dim}",
        "times": times,
        **summarize(times),
        "ours": values["ours"],
        "reference": values["reference"],
        "relative_diff": abs(values["ours"] - values["reference"]) / abs(values["reference"]),
    }


def machine_info():
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "versions": {
            "torch": torch.__version__, "numpy": np.__version__, "scipy": scipy.__version__,
            "scikit-image": skimage.__version__,
        },
    }


def print_table(rows):
    header = f"{'case':56} {'ours s':>9} {'ref s':>9} {'ref/ours':>9}  agreement"
    print(header)
    print("-" * len(header))
    for row in rows:
        if "relative_diff" in row:
            agreement = f"rel diff {row['relative_diff']:.1e}"
        else:
            agreement = f"SSIM {row['max_abs_diff_ssim']:.1e}, PSNR {row['max_abs_diff_psnr_db']:.1e} dB"
        print(f"{row['case']:56} {row['median_s_ours']:9.4f} {row['median_s_reference']:9.4f} "
              f"{row['ratio_reference_over_ours']:9.2f}  {agreement}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="small inputs, for a smoke run")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "metrics.json")
    args = parser.parse_args()

    if args.quick:
        temporal_cases, frechet_cases = [(2, 4, 64, 96)], [(256, 64)]
    else:
        # 32 frame pairs at 256x256, 8 at 480x720: long enough to time, short enough to rerun.
        temporal_cases = [(4, 9, 256, 256), (2, 5, 480, 720)]
        frechet_cases = [(2048, 400), (2048, 1024)]
    # Other jobs on the machine distort multi-threaded timings most: record how busy it was.
    load_before = os.getloadavg()
    # "compiled": the C kernel that `implementation=auto` uses on the CPU; "torch": the fallback.
    rows = [bench_temporal(*case, args.repeats, implementation)
            for case in temporal_cases for implementation in ("compiled", "torch")]
    rows += [bench_frechet(*case, args.repeats) for case in frechet_cases]
    load_after = os.getloadavg()
    print(f"load average (1 min) before {load_before[0]:.2f}, after {load_after[0]:.2f}")
    print_table(rows)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    record = {"machine": machine_info(), "repeats": args.repeats, "quick": args.quick,
              "load_average_1min": {"before": load_before[0], "after": load_after[0]}, "results": rows}
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
