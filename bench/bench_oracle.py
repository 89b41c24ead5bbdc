"""Shapes oracle validation: accuracy against the generator's own ground truth, clean and perturbed.

Held-out clips come from t2v_exp/data/shapes.py's renderer (``render_clip``, ``shape_mask``) with seed
2026 (training uses the run seed, 42 by default, and evaluation that seed + 100003): every shape x colour x
direction x speed once per geometry. Each clip is perturbed, written to mp4 and decoded back with
``t2v_exp.data.video_io`` exactly as generated videos are, then scored by ``shapes_oracle_scores`` against
the caption the generator writes for it. Conditions (one perturbation each):

- clean: the generator's clip as it is;
- noise30: i.i.d. Gaussian noise, sigma 30 per channel on the 0-255 scale, clipped, before encoding;
- noise30_decoded: the same noise added to the decoded frames (the codec does not smooth it): what
  the oracle sees in a training run's evaluation, which scores the generated float frames directly;
- background-40 / background+40: the background 40 levels darker / lighter (255 at most);
- blur1.5: Gaussian blur, sigma 1.5 px, of every frame;
- distractor: a second, static blob (a disc of 0.65 x the shape's radius: 2/3 of a triangle's area,
  the smallest shape; another palette colour, or grey in every 4th clip), placed where it never
  touches the shape;
- transient_distractor: the static blob in the first half of the frames only (a tiny base model's
  clip did that: read from the first and last frames, the blob pulled the motion backwards);
- moving_distractor: the same blob moving across the shape's axis at twice the shape's speed (less
  where the frame has no room for that): averaged with the shape, it pulls the motion sideways;
- static_jitter: the shape does not move, but every frame is offset by -1, 0 or +1 px in x and y; the
  caption still names a direction. Ground truth: no direction. Its direction/axis accuracy is the
  fraction of clips the oracle reads as "no direction"; ``direction_ok`` (what a model would be
  credited with) must be False for every clip, reported as ``direction_ok_rate``.

Usage: .venv/bin/python bench/bench_oracle.py [--quick] [--stress] [--before-file PATH] [--oracle-file PATH] [--out FILE]
``--before-file`` also scores the same videos with another copy of the module (e.g. the previous one
from git) for the "before" column; ``--oracle-file`` scores with another copy instead of this one.
Writes bench/results/oracle_validation.json (machine, versions, per-condition figures).
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import sys
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import RESULTS, machine_info, write_json  # noqa: E402
from t2v_exp.data.shapes import (  # noqa: E402
    BACKGROUND,
    DIRECTIONS,
    PALETTE,
    SHAPES,
    SPEEDS,
    caption,
    render_clip,
    shape_mask,
)
from t2v_exp.data.video_io import read_clip, write_video  # noqa: E402

SEED = 2026
FPS = 8
# (frames, height, width): the tiny twins' geometry (ModelScope/AnimateDiff tiny: 8 x 32 x 32), a
# non-square one, and the real ModelScope's 16 x 256 x 256.
GEOMETRIES = [(8, 32, 32), (13, 48, 80), (16, 256, 256)]
# A condition is a kind and an amount: noise<sigma>[_decoded], background<+-levels>, blur<sigma px>,
# static_jitter[<px>] (1 px when no amount is given).
CONDITIONS = ["clean", "noise30", "noise30_decoded", "background-40", "background+40", "blur1.5", "distractor",
              "transient_distractor", "moving_distractor", "static_jitter"]
# --stress: beyond the targets, at the tiny geometry, to show where the oracle stops working.
STRESS = ["noise45_decoded", "noise60_decoded", "blur2.5", "blur3", "blur3.5", "background-100", "background-160",
          "static_jitter2", "static_jitter3"]
_CONDITION = re.compile(r"(?P<kind>[a-z_]+?)(?P<amount>[+-]?\d+(?:\.\d+)?)?(?P<decoded>_decoded)?")
GREY = (128, 128, 128)
DISTRACTOR_RADIUS = 0.65  # disc area 1.33 r^2; the triangle's is 1.94 r^2, the circle's 3.14 r^2


def combos() -> list[tuple[str, str, str, str]]:
    return [(s, c, d, v) for s in SHAPES for c in PALETTE for d in DIRECTIONS for v in SPEEDS]


def radius_of(height: int, width: int) -> float:
    return max(2.0, min(height, width) / 6)  # as render_clip draws it


def static_jitter_clip(shape, color, *, num_frames, height, width, rng, amplitude: int = 1):
    """A shape that stays put, offset by a whole number of px in -amplitude..amplitude in x and y in
    every frame."""
    radius = radius_of(height, width)
    cx = rng.uniform(radius + 1, width - radius - 1)
    cy = rng.uniform(radius + 1, height - radius - 1)
    frames = np.empty((num_frames, height, width, 3), dtype=np.uint8)
    for t in range(num_frames):
        ox, oy = rng.integers(-amplitude, amplitude + 1, size=2)
        frames[t] = BACKGROUND
        frames[t][shape_mask(shape, height, width, cx + ox, cy + oy, radius)] = PALETTE[color]
    return frames


def add_distractor(frames, color, rng, index, *, step: float = 0.0, horizontal: bool = False, shown: int | None = None):
    """Paint a disc of DISTRACTOR_RADIUS x the shape's radius, of another palette colour or grey, that
    never touches (2-px gap) the shape, in the first ``shown`` frames (default all); it moves ``step``
    px per frame along the given axis (0: static)."""
    num_frames, height, width, _ = frames.shape
    radius = radius_of(height, width) * DISTRACTOR_RADIUS
    others = [c for c in PALETTE if c != color]
    blob_colour = GREY if index % 4 == 3 else PALETTE[others[index % 3]]
    shape_at = [ndimage.binary_dilation(np.any(f != BACKGROUND, axis=-1), iterations=2) for f in frames]
    room = (width if horizontal else height) - 2 * radius
    step = min(step, room / max(1, num_frames - 1))
    for attempt in range(600):
        if attempt and attempt % 100 == 0:
            step *= 0.7  # no room found for the whole path: a slower blob
        travel, sign = step * (num_frames - 1), rng.choice([-1, 1])
        vx, vy = (sign, 0) if horizontal else (0, sign)
        x_lo, y_lo = radius + max(0, -vx * travel), radius + max(0, -vy * travel)
        x0 = rng.uniform(x_lo, max(x_lo, width - radius - max(0, vx * travel)))
        y0 = rng.uniform(y_lo, max(y_lo, height - radius - max(0, vy * travel)))
        blobs = [shape_mask("circle", height, width, x0 + vx * step * t, y0 + vy * step * t, radius)
                 for t in range(num_frames)]
        if not any((blob & near).any() for blob, near in zip(blobs, shape_at, strict=True)):
            for frame, blob in zip(frames[:shown], blobs[:shown], strict=True):
                frame[blob] = blob_colour
            return frames
    raise RuntimeError(f"no room for a distractor beside clip {index} ({height}x{width})")


def parse_condition(condition: str) -> tuple[str, float | None, bool]:
    """"noise30_decoded" -> ("noise", 30.0, True); "static_jitter" -> ("static_jitter", None, False)."""
    match = _CONDITION.fullmatch(condition)
    if match is None:
        raise ValueError(f"unknown condition {condition!r}")
    amount = match["amount"]
    return match["kind"], None if amount is None else float(amount), bool(match["decoded"])


def perturbed_clip(condition: str, combo, *, num_frames, height, width, rng, index):
    """uint8 [F, H, W, 3] and the true direction (None for the static shape)."""
    shape, color, direction, speed = combo
    kind, amount, decoded = parse_condition(condition)
    if kind == "static_jitter":
        return static_jitter_clip(shape, color, num_frames=num_frames, height=height, width=width, rng=rng,
                                  amplitude=int(amount or 1)), None
    frames, positions = render_clip(shape, color, direction, speed, num_frames=num_frames, height=height, width=width,
                                    rng=rng)
    if kind == "background":
        background = np.all(frames == BACKGROUND, axis=-1)
        frames[background] = np.clip(np.array(BACKGROUND) + amount, 0, 255).astype(np.uint8)
    elif kind == "noise" and not decoded:
        noisy = frames.astype(np.float32) + rng.normal(0.0, amount, frames.shape).astype(np.float32)
        frames = np.clip(np.round(noisy), 0, 255).astype(np.uint8)
    elif kind == "blur":
        blurred = ndimage.gaussian_filter(frames.astype(np.float32), sigma=(0, amount, amount, 0))
        frames = np.clip(np.round(blurred), 0, 255).astype(np.uint8)
    elif kind == "distractor":
        frames = add_distractor(frames, color, rng, index)
    elif kind == "transient_distractor":
        frames = add_distractor(frames, color, rng, index, shown=num_frames // 2)
    elif kind == "moving_distractor":  # across the shape's axis, twice its speed (where it fits)
        step = float(np.hypot(*np.subtract(positions[-1], positions[0]))) / max(1, num_frames - 1)
        frames = add_distractor(frames, color, rng, index, step=2 * step, horizontal=DIRECTIONS[direction][0] == 0)
    elif kind not in ("clean", "noise"):  # noise<sigma>_decoded is added after decoding, in decoded_set
        raise ValueError(f"unknown condition {condition!r}")
    return frames, direction


def decoded_set(condition: str, geometry, clips: list, workdir: Path):
    """Render, perturb, write mp4, decode: float [N, F, 3, H, W], captions, true colours, true directions."""
    num_frames, height, width = geometry
    kind, amount, decoded = parse_condition(condition)
    rng = np.random.default_rng([SEED, zlib.crc32(condition.encode()), *geometry])
    videos, prompts, truth = [], [], []
    for index, combo in enumerate(clips):
        frames, direction = perturbed_clip(condition, combo, num_frames=num_frames, height=height, width=width,
                                           rng=rng, index=index)
        path = write_video(workdir / f"{condition}-{height}x{width}-{index:03d}.mp4", frames, fps=FPS)
        video = read_clip(path, num_frames, height, width, start="center")
        if kind == "noise" and decoded:
            noise = torch.from_numpy(rng.normal(0.0, amount / 127.5, video.shape).astype(np.float32))
            video = (video + noise).clamp(-1, 1)
        videos.append(video)
        prompts.append(caption(*combo))
        truth.append((combo[1], direction))
        path.unlink()
    return torch.stack(videos), prompts, truth


def load_oracle(path: str | None, name: str = "_shapes_oracle_under_test"):
    if path is None:
        from t2v_exp.metrics import shapes_oracle
        return shapes_oracle
    # A copy elsewhere (e.g. `git show HEAD:t2v_exp/metrics/shapes_oracle.py > /tmp/old.py`) imports as a
    # sibling, so its relative imports resolve against this checkout's package.
    spec = importlib.util.spec_from_file_location(f"t2v_exp.metrics.{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def accuracies(oracle, scores: dict, truth: list) -> dict:
    """Colour, direction and axis accuracy against the truth (a static shape's truth is "no direction",
    so reading None is right there), and the rate at which the oracle credits the prompt's direction."""
    per_video = scores["per_video"]

    def axis(direction):
        return None if direction is None else oracle.AXES[direction]

    def mean(values):
        return float(np.mean(values)) if values else float("nan")

    return {
        "color": mean([d == c for d, (c, _) in zip(per_video["detected_color"], truth, strict=True)]),
        "direction": mean([d == t for d, (_, t) in zip(per_video["detected_direction"], truth, strict=True)]),
        "axis": mean([axis(d) == axis(t) for d, (_, t) in zip(per_video["detected_direction"], truth, strict=True)]),
        "direction_ok_rate": mean([bool(v) for v in per_video["direction_ok"]]),
        "no_direction_rate": mean([d is None for d in per_video["detected_direction"]]),
        "no_shape_rate": mean([n == 0 for n in per_video["frames_with_shape"]]),
    }


def markdown_table(rows: list[dict]) -> str:
    compared = any("before" in row for row in rows)
    lines = ["| condition | geometry (F x H x W) | n | colour | direction | axis | direction_ok rate |"
             + (" before: colour / direction / axis |" if compared else ""),
             "|---|---|---:|---:|---:|---:|---:|" + ("---|" if compared else "")]
    for row in rows:
        before = row.get("before")
        lines.append(f"| {row['condition']} | {row['geometry']} | {row['n']} | {row['color']:.3f} | "
                     f"{row['direction']:.3f} | {row['axis']:.3f} | {row['direction_ok_rate']:.3f} |"
                     + (f" {before['color']:.2f} / {before['direction']:.2f} / {before['axis']:.2f} |" if before else ""))
    return "\n".join(lines)


def run(oracle, conditions: list[str], geometries: list, clips: list, workdir: Path, before=None) -> list[dict]:
    """One row per geometry and condition; ``before``: another oracle module, scored on the same videos."""
    rows = []
    for geometry in geometries:
        for condition in conditions:
            videos, prompts, truth = decoded_set(condition, geometry, clips, workdir)
            started = time.perf_counter()
            scores = oracle.shapes_oracle_scores(videos, prompts)
            rows.append({"condition": condition, "geometry": " x ".join(map(str, geometry)), "n": len(clips),
                         **accuracies(oracle, scores, truth), "scoring_s": round(time.perf_counter() - started, 3)})
            if before is not None:
                rows[-1]["before"] = accuracies(before, before.shapes_oracle_scores(videos, prompts), truth)
            print(f"  {condition:20s} {rows[-1]['geometry']:14s} colour {rows[-1]['color']:.3f} direction "
                  f"{rows[-1]['direction']:.3f} axis {rows[-1]['axis']:.3f}", file=sys.stderr)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny geometry only, every 4th clip")
    parser.add_argument("--stress", action="store_true", help="also the STRESS conditions, at the tiny geometry")
    parser.add_argument("--oracle-file", default=None, help="score with this copy of shapes_oracle.py")
    parser.add_argument("--before-file", default=None, help="also score the same videos with this copy (columns "
                        "'before'), e.g. the committed one: git show HEAD:t2v_exp/metrics/shapes_oracle.py")
    parser.add_argument("--out", type=Path, default=None, help="default bench/results/oracle_validation.json "
                        "(nothing is written with --oracle-file unless --out is given)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    oracle = load_oracle(args.oracle_file)
    before = load_oracle(args.before_file, "_shapes_oracle_before") if args.before_file else None
    clips = combos()[:: 4 if args.quick else 1]
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="oracle-bench-") as tmp:
        rows = run(oracle, CONDITIONS, GEOMETRIES[:1] if args.quick else GEOMETRIES, clips, Path(tmp), before)
        stress = run(oracle, STRESS, GEOMETRIES[:1], clips, Path(tmp), before) if args.stress else []
    print(markdown_table(rows))
    if stress:
        print("\nstress (beyond the targets):\n" + markdown_table(stress))
    lowest = {key: min(row[key] for row in rows) for key in ("color", "direction", "axis")}
    print(f"\nlowest accuracy over the conditions: {lowest}; {time.perf_counter() - started:.0f} s in all")
    out = args.out or (None if args.oracle_file else RESULTS / "oracle_validation.json")
    if out is not None:
        write_json(out, {
            "oracle": args.oracle_file or "t2v_exp/metrics/shapes_oracle.py", "before": args.before_file,
            "seed": SEED, "fps": FPS, "clips_per_condition": len(clips), "geometries_frames_height_width": GEOMETRIES,
            "path": "render_clip -> perturb -> write_video (x264 crf 18, yuv420p) -> read_clip (PyAV) -> oracle",
            "conditions": __doc__.split("\n\n")[2], "distractor_radius_fraction": DISTRACTOR_RADIUS,
            "rows": rows, "stress_rows": stress, "lowest": lowest, "quick": args.quick,
            "wall_s": round(time.perf_counter() - started, 1), "machine": machine_info(),
        })


if __name__ == "__main__":
    main()
