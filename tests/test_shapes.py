"""Synthetic shapes: the ground truth matches the pixels, generation is fast and crash-safe, and the
default dataset config builds a ShapesDataset that honours the engine's contract."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from t2v_exp.data.datasets import ShapesDataset
from t2v_exp.data.shapes import BACKGROUND, SPEEDS, dataset_dir, generate_shapes, read_metadata
from t2v_exp.data.video_io import read_clip

from .conftest import REPO

SMALL = dict(num_videos=4, num_frames=6, height=32, width=32, fps=8, domain="horizontal", seed=0)


def foreground_centroids(clip: torch.Tensor) -> list[tuple[float, float]]:
    """(x, y) of the pixels far from the background, per frame of a [F, C, H, W] clip in [-1, 1]."""
    pixels = (clip + 1) * 127.5
    distance = (pixels - torch.tensor(BACKGROUND, dtype=torch.float32).view(1, 3, 1, 1)).norm(dim=1)
    centroids = []
    for mask in distance > 60:
        ys, xs = torch.nonzero(mask, as_tuple=True)
        centroids.append((float(xs.float().mean()), float(ys.float().mean())))
    return centroids


def test_sixteen_clips_generate_in_well_under_five_seconds(tmp_path):
    started = time.perf_counter()
    directory = generate_shapes(tmp_path, num_videos=16, num_frames=16, height=64, width=64, fps=8,
                                domain="horizontal", seed=0)
    assert time.perf_counter() - started < 5.0
    assert len(list((directory / "videos").glob("*.mp4"))) == 16 and len(read_metadata(directory)) == 16


def test_recorded_positions_match_the_decoded_pixels(tmp_path):
    directory = generate_shapes(tmp_path, num_videos=8, num_frames=8, height=64, width=64, fps=8, domain="all",
                                seed=5)
    travel = {}
    for record in read_metadata(directory):
        clip = read_clip(directory / record["file"], 8, 64, 64, start="center")  # the whole clip, unscaled
        for (x, y), (cx, cy) in zip(foreground_centroids(clip), record["positions"], strict=True):
            # Positions are in continuous coordinates (pixel i spans [i, i+1)); the triangle's
            # centroid sits below its bounding-box centre, hence the looser vertical bound.
            assert abs(x - (cx - 0.5)) < 1.0 and abs(y - (cy - 0.5)) < 3.0, (record["file"], x, y, cx, cy)
        (x0, y0), (x1, y1) = record["positions"][0], record["positions"][-1]
        moved = {"left": x0 - x1, "right": x1 - x0, "up": y0 - y1, "down": y1 - y0}[record["direction"]]
        assert moved > 0
        travel[record["speed"]] = moved
    if len(travel) == 2:
        assert travel["quickly"] / travel["slowly"] == pytest.approx(SPEEDS["quickly"] / SPEEDS["slowly"], rel=1e-3)


def test_domains_are_disjoint_in_colour_and_direction(tmp_path):
    horizontal = read_metadata(generate_shapes(tmp_path, **{**SMALL, "num_videos": 24}))
    vertical = read_metadata(generate_shapes(tmp_path, **{**SMALL, "num_videos": 24, "domain": "vertical"}))
    assert {r["direction"] for r in horizontal} == {"left", "right"}
    assert {r["direction"] for r in vertical} == {"up", "down"}
    assert not {r["color"] for r in horizontal} & {r["color"] for r in vertical}
    # 24 clips cover every (shape, colour, direction, speed) combination of a domain exactly once.
    assert len({r["caption"] for r in horizontal}) == 24
    with pytest.raises(ValueError, match="dataset.domain='diagonal'"):
        generate_shapes(tmp_path, **{**SMALL, "domain": "diagonal"})


def test_incomplete_folder_is_regenerated_and_complete_one_reused(tmp_path):
    target = dataset_dir(tmp_path, **SMALL)
    (target / "videos").mkdir(parents=True)
    (target / "videos" / "00000.mp4").write_bytes(b"cut short")  # no metadata.jsonl: not complete
    directory = generate_shapes(tmp_path, **SMALL)
    assert directory == target and len(read_metadata(directory)) == 4
    assert (directory / "videos" / "00000.mp4").stat().st_size > 100
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging or debris left
    marker = (directory / "metadata.jsonl").stat().st_mtime_ns
    assert generate_shapes(tmp_path, **SMALL) == directory
    assert (directory / "metadata.jsonl").stat().st_mtime_ns == marker


def test_items_ignore_global_rng_and_access_order(tmp_path):
    ds = ShapesDataset(root=str(tmp_path), **SMALL)
    ds.set_epoch(1)
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    first = [ds[i]["video"] for i in (0, 3)]
    random.seed(2), np.random.seed(2), torch.manual_seed(2)
    second = [ds[i]["video"] for i in (3, 0)][::-1]
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))


def test_train_starts_vary_by_epoch_validation_is_fixed(tmp_path):
    long_clips = {**SMALL, "clip_frames": 2 * SMALL["num_frames"]}  # random starts need a longer source
    train = ShapesDataset(root=str(tmp_path), split="train", **long_clips)
    val = ShapesDataset(root=str(tmp_path), split="validation", **long_clips)
    assert train.directory != val.directory  # evaluation clips are held out (their own generator seed)
    train_clips, val_clips = [], []
    for epoch in range(6):
        train.set_epoch(epoch)
        val.set_epoch(epoch)
        train_clips.append(train[0]["video"])
        val_clips.append(val[0]["video"])
    assert any(not torch.equal(train_clips[0], clip) for clip in train_clips[1:])
    assert all(torch.equal(val_clips[0], clip) for clip in val_clips[1:])
    # Validation takes the centred window of the 2x-long source clip.
    full = read_clip(val.directory / val.samples[0].key, 12, 32, 32, start="center")
    assert torch.allclose(val_clips[0], full[3:9], atol=1e-6)
    item = val[0]
    assert set(item) == {"video", "prompt", "key"} and item["key"] == "videos/00000.mp4"
    assert val.captions() == [r["caption"] for r in read_metadata(val.directory)]


def test_default_config_builds_shapes_for_the_engine(tmp_path, compose_train):
    from t2v_exp.engine.batches import instantiate_dataset  # what the engine calls

    cfg = compose_train([f"paths.cache_dir={tmp_path}", "dataset.num_videos=3"])
    assert cfg.dataset.name == "shapes" and cfg.dataset.num_frames == cfg.model.num_frames
    ds = instantiate_dataset(cfg.dataset, split="train", report_dir=str(tmp_path / "run"))
    assert len(ds) == 3 and str(ds.directory).startswith(str(tmp_path / "shapes"))
    video = ds[2]["video"]
    assert video.shape == (cfg.model.num_frames, 3, cfg.model.height, cfg.model.width)
    assert video.dtype == torch.float32 and -1 <= video.min() < video.max() <= 1


@pytest.mark.parametrize(("override", "key"), [("dataset.num_vidoes=3", "num_vidoes"),
                                               ("dataset.num_videos=many", "num_videos")])
def test_schema_rejects_unknown_keys_and_wrong_types(compose_train, override, key):
    with pytest.raises(Exception, match=key):
        compose_train([override])


REGENERATE = """
import hashlib, json, os, sys
from t2v_exp.data.shapes import generate_shapes

os.sched_setaffinity(0, {int(c) for c in sys.argv[2].split(",")})
directory = generate_shapes(sys.argv[1], num_videos=3, num_frames=16, height=256, width=256, fps=8,
                            domain="horizontal", seed=0)
print(json.dumps({p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.rglob("*.*"))}))
"""


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs CPU affinity (Linux)")
def test_regenerated_clips_are_byte_identical_across_cache_dirs_and_cpu_counts(tmp_path):
    """x264's threaded modes slice frames by CPU count: the same clips generated on a 1-core and a
    many-core machine (here: CPU affinity) differed byte for byte, and so did weights trained on them."""
    cpus = sorted(os.sched_getaffinity(0))
    digests = []
    for name, allowed in (("one_cpu", cpus[:1]), ("all_cpus", cpus)):
        result = subprocess.run([sys.executable, "-c", REGENERATE, str(tmp_path / name), ",".join(map(str, allowed))],
                                capture_output=True, text=True, timeout=300, cwd=REPO)
        assert result.returncode == 0, result.stderr[-3000:]
        digests.append(json.loads(result.stdout.strip().splitlines()[-1]))
    assert len(digests[0]) == 4 and set(digests[0]) == {"00000.mp4", "00001.mp4", "00002.mp4", "metadata.jsonl"}
    assert digests[0] == digests[1]
