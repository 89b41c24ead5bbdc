"""PyAV reading/writing and the synthetic shapes set (the default dataset)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from t2v_exp.data.datasets import ShapesDataset
from t2v_exp.data.shapes import generate_shapes, read_metadata
from t2v_exp.data.video_io import VideoDecodeError, probe_video, read_clip, write_video


def ramp_video(num_frames: int, height: int, width: int) -> np.ndarray:
    """Frame i is a flat grey of value 6*i, so a decoded frame tells which source frame it was."""
    frames = np.zeros((num_frames, height, width, 3), np.uint8)
    for i in range(num_frames):
        frames[i] = 6 * i
    return frames


def frame_ids(clip: torch.Tensor) -> list[int]:
    return [round(v) for v in ((clip[:, :, 4:-4, 4:-4].mean(dim=(1, 2, 3)) + 1) * 127.5 / 6).tolist()]


@pytest.mark.parametrize("suffix", [".mp4", ".webm"])
def test_write_then_read_odd_sized_video(tmp_path, suffix):
    path = write_video(tmp_path / f"v{suffix}", ramp_video(40, 33, 47), fps=10)
    info = probe_video(path)
    assert info.decodable and info.num_frames == 40 and info.fps == 10
    clip = read_clip(path, 8, 24, 24, frame_stride=2, start="center")
    assert clip.shape == (8, 3, 24, 24) and clip.dtype == torch.float32
    assert clip.min() >= -1 and clip.max() <= 1
    ids = frame_ids(clip)
    assert all(b - a == 2 for a, b in zip(ids, ids[1:], strict=False)), ids  # stride respected
    assert 10 <= ids[0] <= 14  # centred: (39 - 14) / 2 = 12.5


def test_random_start_is_reproducible_and_varies(tmp_path):
    import random

    path = write_video(tmp_path / "v.mp4", ramp_video(40, 32, 32), fps=10)
    starts = {frame_ids(read_clip(path, 4, 32, 32, start="random", rng=random.Random(s)))[0] for s in range(8)}
    assert len(starts) > 2
    a = read_clip(path, 4, 32, 32, start="random", rng=random.Random(5))
    assert torch.equal(a, read_clip(path, 4, 32, 32, start="random", rng=random.Random(5)))


@pytest.mark.parametrize(("policy", "expected"), [("loop", [0, 1, 2, 3, 4, 0, 1, 2]), ("pad", [0, 1, 2, 3, 4, 4, 4, 4])])
def test_short_clip_policies(tmp_path, policy, expected):
    path = write_video(tmp_path / "short.mp4", ramp_video(5, 32, 32), fps=8)
    assert frame_ids(read_clip(path, 8, 32, 32, short_clip=policy)) == expected


def test_short_clip_skip_and_broken_files_raise(tmp_path):
    path = write_video(tmp_path / "short.mp4", ramp_video(5, 32, 32), fps=8)
    with pytest.raises(VideoDecodeError, match="shorter"):
        read_clip(path, 8, 32, 32, short_clip="skip")
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "text.mp4").write_text("not a video")
    for bad in ("empty.mp4", "text.mp4"):
        with pytest.raises(VideoDecodeError):
            read_clip(tmp_path / bad, 4, 32, 32)
        assert not probe_video(tmp_path / bad).decodable


def test_shapes_generation_is_seeded_and_reused(tmp_path):
    kwargs = dict(num_videos=6, num_frames=8, height=32, width=32, fps=8, domain="horizontal", seed=1)
    first = generate_shapes(tmp_path, **kwargs)
    mtime = (first / "metadata.jsonl").stat().st_mtime_ns
    assert generate_shapes(tmp_path, **kwargs) == first and (first / "metadata.jsonl").stat().st_mtime_ns == mtime
    other = generate_shapes(tmp_path, **{**kwargs, "seed": 2})
    assert other != first
    records = read_metadata(first)
    assert len(records) == 6
    for record in records:
        assert record["color"] in ("red", "green") and record["direction"] in ("left", "right")
        assert record["caption"] == f"a {record['color']} {record['shape']} moving {record['direction']} {record['speed']}"
        xs = [p[0] for p in record["positions"]]
        assert (xs[-1] < xs[0]) == (record["direction"] == "left")
    vertical = read_metadata(generate_shapes(tmp_path, **{**kwargs, "domain": "vertical"}))
    assert {r["color"] for r in vertical}.isdisjoint({r["color"] for r in records})


def test_shapes_dataset_items_depend_only_on_seed_epoch_index(tmp_path):
    ds = ShapesDataset(root=str(tmp_path), num_videos=4, domain="horizontal", num_frames=4, height=32, width=32,
                       fps=8, seed=0)
    item = ds[1]
    assert item["video"].shape == (4, 3, 32, 32) and item["prompt"].startswith("a ")
    assert torch.equal(item["video"], ds[1]["video"])
    ds.set_epoch(3)
    again = ShapesDataset(root=str(tmp_path), num_videos=4, domain="horizontal", num_frames=4, height=32,
                          width=32, fps=8, seed=0)
    again.set_epoch(3)
    assert torch.equal(ds[1]["video"], again[1]["video"])
    assert len(ds.captions()) == 4


def test_shapes_validation_split_is_held_out(tmp_path):
    kwargs = dict(root=str(tmp_path), num_videos=4, domain="horizontal", num_frames=4, height=32, width=32, fps=8,
                  seed=0)
    train = ShapesDataset(split="train", **kwargs)
    held_out = ShapesDataset(split="validation", **kwargs)
    assert train.directory != held_out.directory
    assert not torch.equal(train[0]["video"], held_out[0]["video"])
