"""Speed and agreement of the project's metrics against the reference implementations.

Compares, on identical inputs:
- temporal SSIM + PSNR (batched torch, float64) vs scikit-image's per-frame-pair loop;
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
from scipy import linalg
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from t2v_exp.metrics.frechet import feature_statistics, frechet_distance  # noqa: E402
from t2v_exp.metrics.temporal import TemporalSettings, temporal_scores  # noqa: E402


def make_videos(count, frames, size, seed=0):
    """Correlated frames (a shared base plus noise), so SSIM sits mid-range."""
    generator = torch.Generator().manual_seed(seed)
    base = torch.rand(count, 1, 3, size, size, generator=generator) * 2 - 1
    noise = torch.rand(count, frames, 3, size, size, generator=generator) * 2 - 1
    return (base + 0.4 * noise).clamp(-1, 1)


def skimage_temporal(videos_nhwc):
    ssim, psnr = [], []
    for video in videos_nhwc:
        pairs = range(len(video) - 1)
        ssim.append(np.mean([
            structural_similarity(video[t], video[t + 1], gaussian_weights=True, sigma=1.5,
                                  use_sample_covariance=False, data_range=2.0, channel_axis=-1)
            for t in pairs
        ]))
        psnr.append(np.mean([peak_signal_noise_ratio(video[t], video[t + 1], data_range=2.0) for t in pairs]))
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


def bench_temporal(count, frames, size, repeats):
    videos = make_videos(count, frames, size)
    videos_nhwc = videos.permute(0, 1, 3, 4, 2).double().numpy()
    settings = TemporalSettings(psnr_cap_db=float("inf"))  # no cap: compare raw PSNR with skimage
    times, values = alternate(lambda: temporal_scores(videos, settings), lambda: skimage_temporal(videos_nhwc), repeats)
    ours = values["ours"]["per_video"]
    reference_ssim, reference_psnr = values["reference"]
    return {
        "case": f"temporal SSIM+PSNR {count}x{frames}x3x{size}x{size}",
        "times": times,
        **summarize(times),
        "max_abs_diff_ssim": float(np.max(np.abs(np.array(ours["temporal_ssim"]) - reference_ssim))),
        "max_abs_diff_psnr_db": float(np.max(np.abs(np.array(ours["temporal_psnr"]) - reference_psnr))),
    }


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
    header = f"{'case':44} {'ours s':>9} {'ref s':>9} {'ref/ours':>9}  agreement"
    print(header)
    print("-" * len(header))
    for row in rows:
        if "relative_diff" in row:
            agreement = f"rel diff {row['relative_diff']:.1e}"
        else:
            agreement = f"SSIM {row['max_abs_diff_ssim']:.1e}, PSNR {row['max_abs_diff_psnr_db']:.1e} dB"
        print(f"{row['case']:44} {row['median_s_ours']:9.4f} {row['median_s_reference']:9.4f} "
              f"{row['ratio_reference_over_ours']:9.2f}  {agreement}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="small inputs, for a smoke run")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "metrics.json")
    args = parser.parse_args()

    if args.quick:
        temporal_cases, frechet_cases = [(2, 4, 64)], [(256, 64)]
    else:
        temporal_cases, frechet_cases = [(4, 16, 64), (4, 16, 256)], [(2048, 400), (2048, 1024)]
    rows = [bench_temporal(*case, args.repeats) for case in temporal_cases]
    rows += [bench_frechet(*case, args.repeats) for case in frechet_cases]
    print_table(rows)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    record = {"machine": machine_info(), "repeats": args.repeats, "quick": args.quick, "results": rows}
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
