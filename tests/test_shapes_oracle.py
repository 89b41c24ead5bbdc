"""The shapes oracle scores the generator's own clips perfectly and shuffled captions near chance, and
stays right on held-out clips that are noisy, blurred, on another background, beside a distractor blob,
or standing still with a one-pixel jitter (which must read as no direction, never as chance)."""

from __future__ import annotations

import itertools
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

from t2v_exp.data.shapes import (
    BACKGROUND,
    DIRECTIONS,
    PALETTE,
    SHAPES,
    SPEEDS,
    caption,
    generate_shapes,
    read_metadata,
    render_clip,
    shape_mask,
)
from t2v_exp.data.video_io import read_clip, write_video
from t2v_exp.metrics.shapes_oracle import (
    AXES,
    ShapesOracleSettings,
    estimate_background,
    parse_prompt,
    shapes_oracle_scores,
    slowest_travel,
)


def decoded_shapes(root, domain: str, num_videos: int, num_frames: int = 8):
    directory = generate_shapes(root, num_videos=num_videos, num_frames=num_frames, height=32, width=32, fps=8,
                                domain=domain, seed=3)
    records = read_metadata(directory)
    # Through the real decoder: compression and chroma subsampling are part of the test.
    videos = torch.stack([read_clip(directory / r["file"], num_frames, 32, 32, start="center") for r in records])
    return videos, [r["caption"] for r in records], records


@pytest.mark.parametrize("domain", ["horizontal", "vertical"])
def test_generator_clips_score_perfectly(tmp_path, domain):
    videos, prompts, records = decoded_shapes(tmp_path, domain, num_videos=12)
    scores = shapes_oracle_scores(videos, prompts)
    assert scores["color_acc"] == 1.0, scores["per_video"]
    assert scores["direction_acc"] == 1.0, scores["per_video"]
    assert scores["per_video"]["detected_color"] == [r["color"] for r in records]
    assert scores["protocol"]["unparsed_prompts"] == 0


def test_shuffled_captions_score_near_chance(tmp_path):
    videos, prompts, _ = decoded_shapes(tmp_path, "all", num_videos=32, num_frames=6)
    assert shapes_oracle_scores(videos, prompts)["color_acc"] == 1.0
    shuffled = list(prompts)
    random.Random(0).shuffle(shuffled)
    scores = shapes_oracle_scores(videos, shuffled)
    # 4 colours and 4 directions: chance is 0.25 for each.
    assert scores["color_acc"] < 0.75 and scores["direction_acc"] < 0.75, scores


def test_uint8_input_and_undetectable_video(tmp_path):
    videos, prompts, _ = decoded_shapes(tmp_path, "horizontal", num_videos=2)
    as_uint8 = ((videos + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 1, 3, 4, 2)
    assert shapes_oracle_scores(as_uint8, prompts)["color_acc"] == 1.0
    blank = torch.tensor(BACKGROUND, dtype=torch.float32).view(1, 1, 3, 1, 1).expand(2, 8, 3, 32, 32) / 127.5 - 1
    scores = shapes_oracle_scores(blank.contiguous(), prompts)
    assert scores["color_acc"] == 0.0 and scores["direction_acc"] == 0.0
    assert scores["per_video"]["detected_color"] == [None, None]
    # A static shape has no direction, whatever its colour.
    still = videos[:, :1].expand(-1, 8, -1, -1, -1).contiguous()
    scores = shapes_oracle_scores(still, prompts)
    assert scores["color_acc"] == 1.0 and scores["direction_acc"] == 0.0


def test_prompt_parsing_and_length_check():
    assert parse_prompt("A Yellow square moving UP slowly") == ("yellow", "up")
    assert parse_prompt("a cat on a sofa") == (None, None)
    with pytest.raises(ValueError, match="2 videos but 1 prompts"):
        shapes_oracle_scores(torch.zeros(2, 2, 3, 8, 8), ["a red circle moving left"])


def test_frame_without_background_has_no_shape():
    grey = torch.zeros(1, 4, 3, 16, 16)  # mid-grey everywhere: nothing looks like the shapes background
    scores = shapes_oracle_scores(grey, ["a green circle moving left"])
    assert scores["per_video"]["detected_color"] == [None] and scores["color_acc"] == 0.0


def test_axis_is_the_direction_without_its_sign(tmp_path):
    videos, prompts, records = decoded_shapes(tmp_path, "all", num_videos=16)
    # Each prompt with its direction reversed (same axis) or turned (other axis).
    reverse = {"left": "right", "right": "left", "up": "down", "down": "up"}
    turn = {"left": "up", "right": "down", "up": "left", "down": "right"}
    for mapping, axis_expected in ((reverse, True), (turn, False)):
        changed = [p.replace(f" {r['direction']} ", f" {mapping[r['direction']]} ") for p, r in zip(prompts, records, strict=True)]
        per_video = shapes_oracle_scores(videos, changed)["per_video"]
        assert not any(per_video["direction_ok"])
        assert per_video["axis_ok"] == [axis_expected] * len(records)
    assert all(shapes_oracle_scores(videos, prompts)["per_video"]["axis_ok"])


# -- robustness on held-out clips ------------------------------------------------------------------
# The generator's own clips, held out (seed 2027: training uses the run seed, 42 by default, evaluation
# that seed + 100003, the tests above 3), perturbed as generated videos are, through the real mp4 path.
# bench/bench_oracle.py measures the same conditions on 96 clips per geometry at three geometries.
HELD_OUT_SEED = 2027
FRAMES, SIZE = 8, 32  # the tiny twins' geometry
TARGET = 0.95


def held_out_clips() -> tuple[np.ndarray, list[tuple[str, str, str, str]]]:
    """uint8 [48, F, H, W, 3]: every shape x colour x direction once, speeds alternating."""
    rng = np.random.default_rng(HELD_OUT_SEED)
    combos = [(shape, color, direction, list(SPEEDS)[i % 2])
              for i, (shape, color, direction) in enumerate(itertools.product(SHAPES, PALETTE, DIRECTIONS))]
    frames = np.stack([render_clip(*c, num_frames=FRAMES, height=SIZE, width=SIZE, rng=rng)[0] for c in combos])
    return frames, combos


def static_jittered(combos, rng) -> np.ndarray:
    """The same shapes standing still, each frame offset by -1/0/+1 px in x and y."""
    radius = SIZE / 6
    frames = np.empty((len(combos), FRAMES, SIZE, SIZE, 3), dtype=np.uint8)
    frames[:] = BACKGROUND
    centres = rng.uniform(radius + 1, SIZE - radius - 1, size=(len(combos), 2))
    offsets = rng.integers(-1, 2, size=(len(combos), FRAMES, 2))
    for i, (shape, color, _, _) in enumerate(combos):
        for t in range(FRAMES):
            cx, cy = centres[i] + offsets[i, t]
            frames[i, t][shape_mask(shape, SIZE, SIZE, cx, cy, radius)] = PALETTE[color]
    return frames


def with_distractor(frames, combos, rng, step: float, shown: int = FRAMES) -> np.ndarray:
    """A disc of 0.65 x the shape's radius (2/3 of a triangle), another palette colour or grey, moving
    ``step`` px per frame across the shape's axis (0: static), never touching the shape, in the first
    ``shown`` frames."""
    frames = frames.copy()
    radius = 0.65 * SIZE / 6
    for i, (_, color, direction, _) in enumerate(combos):
        colour = (128, 128, 128) if i % 4 == 3 else PALETTE[[c for c in PALETTE if c != color][i % 3]]
        vx, vy = DIRECTIONS[direction][::-1]  # across the shape's motion
        near = [ndimage.binary_dilation(np.any(f != BACKGROUND, axis=-1), iterations=2) for f in frames[i]]
        for _ in range(1000):
            sign = rng.choice([-1, 1])
            x0, y0 = rng.uniform(radius, SIZE - radius, size=2) - sign * np.array([vx, vy]) * step * (FRAMES - 1) / 2
            blobs = [shape_mask("circle", SIZE, SIZE, x0 + sign * vx * step * t, y0 + sign * vy * step * t, radius)
                     for t in range(FRAMES)]
            if all(b.sum() > 0.9 * np.pi * radius**2 and not (b & n).any() for b, n in zip(blobs, near, strict=True)):
                break
        else:
            raise AssertionError(f"no room for a distractor beside clip {i}")
        for frame, blob in zip(frames[i, :shown], blobs[:shown], strict=True):
            frame[blob] = colour
    return frames


def perturbed(condition: str, frames, combos, rng) -> tuple[np.ndarray, float]:
    """(uint8 frames to encode, sigma of the noise to add to the decoded frames)."""
    background = np.all(frames == BACKGROUND, axis=-1)
    if condition == "clean":
        return frames, 0.0
    if condition == "noise30":  # added to the decoded frames, as a run's evaluation scores them (no codec)
        return frames, 30.0
    if condition.startswith("background"):
        shifted = frames.copy()
        shifted[background] = np.clip(np.array(BACKGROUND) + int(condition[len("background"):]), 0, 255)
        return shifted, 0.0
    if condition == "blur1.5":
        blurred = ndimage.gaussian_filter(frames.astype(np.float32), sigma=(0, 0, 1.5, 1.5, 0))
        return np.clip(np.round(blurred), 0, 255).astype(np.uint8), 0.0
    if condition == "distractor":
        return with_distractor(frames, combos, rng, step=0.0), 0.0
    if condition == "transient_distractor":  # in the first half of the clip only (generated clips do that)
        return with_distractor(frames, combos, rng, step=0.0, shown=FRAMES // 2), 0.0
    if condition == "moving_distractor":  # twice the slow speed: averaged with the shape, it pulls sideways
        return with_distractor(frames, combos, rng, step=2 * SPEEDS["slowly"] * SIZE), 0.0
    assert condition == "static_jitter", condition
    return static_jittered(combos, rng), 0.0


def through_mp4(directory: Path, frames: np.ndarray, noise: float, rng) -> torch.Tensor:
    directory.mkdir(parents=True, exist_ok=True)
    paths = [write_video(directory / f"{i:03d}.mp4", clip, fps=8) for i, clip in enumerate(frames)]
    videos = torch.stack([read_clip(p, FRAMES, SIZE, SIZE, start="center") for p in paths])
    if noise:
        videos = (videos + torch.from_numpy(rng.normal(0, noise / 127.5, videos.shape).astype(np.float32))).clamp(-1, 1)
    return videos


@pytest.fixture(scope="module")
def clean_held_out():
    return held_out_clips()


def accuracies(scores, combos, moving: bool = True) -> dict[str, float]:
    """Against the truth: colour, direction and axis (a static shape's truth is "no direction")."""
    per_video = scores["per_video"]
    truth = [direction if moving else None for _, _, direction, _ in combos]

    def axis(direction):
        return None if direction is None else AXES[direction]

    return {
        "colour": float(np.mean([d == c for d, (_, c, _, _) in zip(per_video["detected_color"], combos, strict=True)])),
        "direction": float(np.mean([d == t for d, t in zip(per_video["detected_direction"], truth, strict=True)])),
        "axis": float(np.mean([axis(d) == axis(t) for d, t in zip(per_video["detected_direction"], truth, strict=True)])),
    }


CONDITIONS = ["clean", "noise30", "background-40", "background+40", "blur1.5", "distractor", "transient_distractor",
              "moving_distractor", "static_jitter"]


@pytest.mark.parametrize("condition", CONDITIONS)
def test_held_out_accuracy_per_perturbation(tmp_path, clean_held_out, condition):
    frames, combos = clean_held_out
    rng = np.random.default_rng([HELD_OUT_SEED, 10 + CONDITIONS.index(condition)])
    frames, noise = perturbed(condition, frames, combos, rng)
    videos = through_mp4(tmp_path, frames, noise, rng)
    scores = shapes_oracle_scores(videos, [caption(*c) for c in combos])
    accuracy = accuracies(scores, combos, moving=condition != "static_jitter")
    assert min(accuracy.values()) >= TARGET, (condition, accuracy)
    if condition == "static_jitter":  # "no direction" is never credited, whatever the prompt asked
        assert not any(scores["per_video"]["direction_ok"]) and not any(scores["per_video"]["axis_ok"]), accuracy


def test_static_jitter_reads_no_direction(tmp_path, clean_held_out):
    _, combos = clean_held_out
    rng = np.random.default_rng([HELD_OUT_SEED, 1])
    videos = through_mp4(tmp_path, static_jittered(combos, rng), 0.0, rng)
    per_video = shapes_oracle_scores(videos, [caption(*c) for c in combos])["per_video"]
    no_direction = per_video["detected_direction"].count(None) / len(combos)
    assert no_direction == 1.0, per_video["detected_direction"]
    assert per_video["detected_color"] == [c for _, c, _, _ in combos]


def test_background_far_from_the_dataset_constant(tmp_path, clean_held_out):
    frames, combos = clean_held_out
    rng = np.random.default_rng([HELD_OUT_SEED, 2])
    background = np.all(frames == BACKGROUND, axis=-1)
    for tint in ((-100, -100, -100), (0, -60, 10)):  # a dark grey background, a pink colour cast
        shifted = frames.copy()
        shifted[background] = np.clip(np.array(BACKGROUND) + tint, 0, 255)
        videos = through_mp4(tmp_path / str(tint), shifted, 0.0, rng)
        accuracy = accuracies(shapes_oracle_scores(videos, [caption(*c) for c in combos]), combos)
        assert min(accuracy.values()) >= TARGET, (tint, accuracy)


def test_background_estimate_is_the_border_mode_under_noise():
    generator = torch.Generator().manual_seed(0)
    truth = torch.tensor([195.0, 195.0, 195.0])
    pixels = truth.view(1, 3, 1, 1).repeat(4, 1, 32, 32)
    # 124 border pixels: 37 red (left column, 5 of the top row), 37 blue (right column, 5 of the top row),
    # 50 background. The background is the most common colour but not the majority: the per-channel
    # median of the border reads (220, 80, 220).
    for colour, column, top in (("red", 0, slice(1, 6)), ("blue", -1, slice(-6, -1))):
        value = torch.tensor(PALETTE[colour], dtype=torch.float32).view(3, 1)
        pixels[:, :, :, column] = value
        pixels[:, :, 0, top] = value
    noisy = (pixels + 30 * torch.randn(pixels.shape, generator=generator)).clamp(0, 255)
    estimate = estimate_background(noisy, ShapesOracleSettings())
    # The median of 50 noisy samples is itself uncertain by ~5 levels (sd): 20 is 4 of those.
    assert (estimate - truth).abs().max() < 20, estimate


def test_noise_alone_is_not_a_shape():
    generator = torch.Generator().manual_seed(0)
    blank = torch.tensor(BACKGROUND, dtype=torch.float32).view(1, 1, 3, 1, 1).expand(8, 8, 3, 32, 32)
    noisy = (blank + 30 * torch.randn(8, 8, 3, 32, 32, generator=generator)).clamp(0, 255) / 127.5 - 1
    per_video = shapes_oracle_scores(noisy, ["a red circle moving left"] * 8)["per_video"]
    assert per_video["detected_color"] == [None] * 8 and per_video["detected_direction"] == [None] * 8


def test_travel_threshold_is_half_the_slowest_travel_at_any_size():
    assert slowest_travel(8, 32, 32) == pytest.approx(SPEEDS["slowly"] * 32 * 7)  # 6.72 px
    assert slowest_travel(8, 64, 64) == pytest.approx(2 * slowest_travel(8, 32, 32))
    assert slowest_travel(8, 64, 128) == pytest.approx(slowest_travel(8, 64, 64))  # the short side sets the speed
    assert slowest_travel(49, 32, 32) == pytest.approx(32 - 2 * 32 / 6)  # capped: the path must fit in the frame
    for size in (32, 96):
        radius, slowest = size / 6, slowest_travel(FRAMES, size, size)
        for fraction, expected in ((0.4, None), (0.6, "right")):  # half the slowest travel is the line
            frames = np.empty((1, FRAMES, size, size, 3), dtype=np.uint8)
            frames[:] = BACKGROUND
            for t in range(FRAMES):
                cx = size / 3 + fraction * slowest * t / (FRAMES - 1)
                frames[0, t][shape_mask("square", size, size, cx, size / 2, radius)] = PALETTE["green"]
            per_video = shapes_oracle_scores(torch.from_numpy(frames), ["a green square moving right"])["per_video"]
            assert per_video["detected_direction"] == [expected], (size, fraction)
