"""Hostile media and metadata: decompression bombs, paths leaving the dataset root, numbers too long
for Python. Each must end as a bad sample with a reason, or a clean error naming the file and line,
never as gigabytes of memory or a traceback that stops the run."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import textwrap
import zlib

import numpy as np
import pytest

from t2v_exp.data.folder import VideoFolderDataset
from t2v_exp.data.schemas import RealVideoConfig
from t2v_exp.data.sources import MetadataError, read_ssv2
from t2v_exp.data.video_io import (
    DEFAULT_LIMITS,
    MediaLimits,
    VideoDecodeError,
    VideoInfo,
    check_media_limits,
    probe_video,
    read_clip,
)
from t2v_exp.errors import ConfigError

from .conftest import REPO
from .data_fixtures import GEOMETRY, flat_frames, write_clip, write_sidecar_folder

# ----------------------------------------------------------------------------- hand-made bombs


def gif_bomb(width: int, height: int, frames: int = 12) -> bytes:
    """An animated GIF whose logical screen is ``width`` x ``height`` but whose every image is 1x1:
    a few hundred bytes that a decoder expands to a full canvas per frame."""
    data = bytearray(b"GIF89a")
    data += struct.pack("<HHBBB", width, height, 0x80, 0, 0)  # logical screen, 2-colour global table
    data += bytes([0, 0, 0, 255, 255, 255])
    data += b"\x21\xff\x0bNETSCAPE2.0\x03\x01\x00\x00\x00"  # loop forever
    for _ in range(frames):
        data += b"\x21\xf9\x04\x00\x0a\x00\x00\x00"  # graphic control: shown for 0.1 s
        data += b"\x2c" + struct.pack("<HHHHB", 0, 0, 1, 1, 0)  # a 1x1 image at the origin
        data += b"\x02\x02\x44\x01\x00"  # LZW, minimum code size 2: clear, pixel 0, end
    data += b"\x3b"
    return bytes(data)


def png_bomb(width: int, height: int) -> bytes:
    """A PNG header declaring ``width`` x ``height`` with one row of pixel data."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
            + chunk(b"IEND", b""))


def read_report(run_dir) -> dict[str, str]:
    lines = (run_dir / "bad_samples.jsonl").read_text().splitlines()
    return {os.path.basename(r["path"]): r["reason"] for r in map(json.loads, lines)}


# ----------------------------------------------------------------------------- finding 4: bombs

BOMB_SCRIPT = textwrap.dedent("""
    import json, resource, sys
    from pathlib import Path
    from t2v_exp.data.folder import VideoFolderDataset

    root, warmup, report = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    geometry = dict(num_frames=4, height=32, width=32, fps=8, seed=0)
    VideoFolderDataset(root=str(warmup), **geometry)[0]  # code paths and codecs paged in first
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    ds = VideoFolderDataset(root=str(root), report_dir=str(report), max_bad_fraction=0.5, **geometry)
    # The good clips load; the bomb is never read here (were it admitted, reading it would take 12 GB).
    items = [ds[i]["video"].shape[0] for i in range(len(ds)) if ds.samples[i].key != "bomb.gif"]
    growth_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024  # ru_maxrss: KiB
    print(json.dumps({"growth_mb": growth_mb, "usable": len(ds), "items": items}))
""")


def test_gif_declaring_a_16000_square_screen_is_refused_without_memory_growth(tmp_path):
    """Decoding the bomb's first frame alone costs 1 GB (4 bytes per declared pixel); the probe must
    refuse it from the header. Measured in a fresh process, where the peak RSS is the bomb's alone."""
    data = tmp_path / "data"
    write_sidecar_folder(data, count=2)
    bomb = gif_bomb(16000, 16000)
    assert len(bomb) < 400
    (data / "bomb.gif").write_bytes(bomb)
    (data / "bomb.txt").write_text("an innocent caption")
    write_sidecar_folder(tmp_path / "warmup", count=1)
    run = tmp_path / "run"
    result = subprocess.run([sys.executable, "-c", BOMB_SCRIPT, str(data), str(tmp_path / "warmup"), str(run)],
                            capture_output=True, text=True, timeout=300, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    assert outcome["growth_mb"] < 100, outcome
    assert outcome["usable"] == 2 and outcome["items"] == [4, 4]
    reason = read_report(run)["bomb.gif"]
    assert "16000x16000" in reason and "dataset.max_pixels_per_frame" in reason


def test_bomb_is_refused_by_probe_and_read_before_decoding(tmp_path):
    path = tmp_path / "bomb.gif"
    path.write_bytes(gif_bomb(16000, 16000))
    info = probe_video(path, verify=True)
    assert not info.decodable and (info.width, info.height) == (16000, 16000)
    assert info.error == check_media_limits(info, DEFAULT_LIMITS) and "max_pixels_per_frame" in info.error
    with pytest.raises(VideoDecodeError, match="max_pixels_per_frame"):
        read_clip(path, 4, 32, 32)
    # A small GIF of the same make is a real, readable video: the limit, not the format, refuses it.
    small = tmp_path / "small.gif"
    small.write_bytes(gif_bomb(64, 48))
    assert probe_video(small, verify=True).decodable and read_clip(small, 4, 16, 16).shape == (4, 3, 16, 16)


def test_default_limits_admit_4k_and_refuse_bombs():
    def info(width, height, frames=300, duration=10.0):
        return VideoInfo("x.mp4", frames, 30.0, width, height, duration)

    for width, height in [(3840, 2160), (4096, 2160), (2160, 3840), (4096, 4096)]:
        assert check_media_limits(info(width, height)) is None, (width, height)
    assert "max_pixels_per_frame" in check_media_limits(info(16000, 16000))
    assert "max_frames" in check_media_limits(info(640, 480, frames=3_000_000))
    assert "max_duration_s" in check_media_limits(info(640, 480, duration=7 * 3600))
    tight = MediaLimits(max_pixels_per_frame=1000, max_frames=10, max_duration_s=1.0)
    assert "dataset.max_pixels_per_frame=1000" in check_media_limits(info(32, 32), tight)
    # The schema's defaults are MediaLimits' defaults (one number documented in two places).
    assert (RealVideoConfig.max_pixels_per_frame, RealVideoConfig.max_frames, RealVideoConfig.max_duration_s) == (
        DEFAULT_LIMITS.max_pixels_per_frame, DEFAULT_LIMITS.max_frames, DEFAULT_LIMITS.max_duration_s)


@pytest.mark.parametrize("key", ["max_pixels_per_frame", "max_frames", "max_duration_s"])
@pytest.mark.parametrize("value", [0, -5, float("nan")])
def test_invalid_limits_name_the_key(tmp_path, key, value):
    write_sidecar_folder(tmp_path, count=1)
    with pytest.raises(ConfigError, match=f"dataset.{key}=.* must be a positive number"):
        VideoFolderDataset(root=str(tmp_path), **{key: value}, **GEOMETRY)


def test_limits_are_dataset_settings_and_a_looser_limit_re_admits_an_indexed_file(tmp_path):
    data, index_dir = tmp_path / "data", tmp_path / "index"
    write_sidecar_folder(data, count=3)  # 32x32, 12 frames at 8 fps = 1.5 s
    cases = {"max_pixels_per_frame": (1000, "32x32 = 1,024 pixels"), "max_frames": (10, "12 frames"),
             "max_duration_s": (1.0, "duration 1.5s")}
    for key, (value, detail) in cases.items():
        run = tmp_path / f"run-{key}"
        with pytest.raises(ConfigError, match=f"dataset.{key}"):  # every file over the limit: too many bad
            VideoFolderDataset(root=str(data), index_dir=str(index_dir), report_dir=str(run), **{key: value},
                               **GEOMETRY)
        reasons = set(read_report(run).values())
        assert len(reasons) == 1 and detail in reasons.pop() and f"dataset.{key}={value:g} " in read_report(run)[
            "clip0.mp4"]
    # The index remembered the refusals with the headers' geometry: the defaults admit the files again.
    again = VideoFolderDataset(root=str(data), index_dir=str(index_dir), **GEOMETRY)
    assert len(again) == 3 and again.index_stats["probed"] == 3
    assert VideoFolderDataset(root=str(data), index_dir=str(index_dir), **GEOMETRY).index_stats["probed"] == 0


def test_yaml_of_every_real_data_set_declares_the_limits(compose_train):
    for name in ("video_folder", "anime", "ssv2", "ubc_fashion", "msrvtt"):
        cfg = compose_train([f"dataset={name}"])
        assert cfg.dataset.max_pixels_per_frame == 4096 * 4096 and cfg.dataset.max_frames == 2_000_000
        assert cfg.dataset.max_duration_s == 6 * 3600
    assert compose_train(["dataset=video_folder"]).dataset.allow_outside_root is False
    limited = compose_train(["dataset=video_folder", "dataset.max_pixels_per_frame=33177600"])
    assert limited.dataset.max_pixels_per_frame == 7680 * 4320


def test_png_bombs_with_allow_images_are_bad_samples_and_the_rest_loads(tmp_path):
    from PIL import Image

    write_sidecar_folder(tmp_path, count=6)
    Image.fromarray(flat_frames(1, 200, 40, 48)[0]).save(tmp_path / "still.png")
    hostile = {
        "pil_bomb.png": png_bomb(20000, 20000),  # over Pillow's own bomb limit: DecompressionBombError
        "big_header.png": png_bomb(6000, 6000),  # under Pillow's limit, over dataset.max_pixels_per_frame
        "truncated.png": (tmp_path / "still.png").read_bytes()[:60],
    }
    for name, data in hostile.items():
        (tmp_path / name).write_bytes(data)
    for name in [*hostile, "still.png"]:
        (tmp_path / name).with_suffix(".txt").write_text(f"caption of {name}")
    run = tmp_path / "run"
    ds = VideoFolderDataset(root=str(tmp_path), allow_images=True, report_dir=str(run), max_bad_fraction=0.5,
                            **GEOMETRY)
    assert len(ds) == 7 and all(ds[i]["video"].shape == (4, 3, 32, 32) for i in range(len(ds)))
    reasons = read_report(run)
    assert set(reasons) == set(hostile)
    assert "decompression bomb" in reasons["pil_bomb.png"]  # Pillow refuses it first, at open
    assert "6000x6000" in reasons["big_header.png"] and "max_pixels_per_frame" in reasons["big_header.png"]
    assert "unreadable image" in reasons["truncated.png"]


@pytest.mark.parametrize("bomb", [png_bomb(20000, 20000), png_bomb(100_000, 100_000)])
def test_image_turned_bomb_during_training_is_replaced_not_fatal(tmp_path, bomb):
    """Pillow's DecompressionBombError is no OSError: before, it escaped the loader and ended the run."""
    from PIL import Image

    write_sidecar_folder(tmp_path, count=3)
    Image.fromarray(flat_frames(1, 200, 40, 48)[0]).save(tmp_path / "still.png")
    (tmp_path / "still.txt").write_text("a still")
    run = tmp_path / "run"
    ds = VideoFolderDataset(root=str(tmp_path), allow_images=True, report_dir=str(run), **GEOMETRY)
    index = ds.captions().index("a still")
    (tmp_path / "still.png").write_bytes(bomb)  # swapped after indexing
    item = ds[index]
    assert item["key"] != "still.png" and item["video"].shape == (4, 3, 32, 32)
    assert "still.png" in read_report(run)


# ----------------------------------------------------------------------------- finding 5: metadata

HUGE = "9" * 5000  # past Python's 4300-digit limit for int(): json.loads raises ValueError


def test_huge_integer_in_metadata_jsonl_is_a_bad_line_named_by_file_and_line(tmp_path):
    for i in range(6):
        write_clip(tmp_path / f"{i}.mp4", value=30 * i)
    rows = [json.dumps({"file_name": f"{i}.mp4", "text": f"caption {i}"}) for i in range(6)]
    rows[3] = '{"file_name": "3.mp4", "text": "caption 3", "views": ' + HUGE + "}"
    (tmp_path / "metadata.jsonl").write_text("\n".join(rows) + "\n")
    run = tmp_path / "run"
    ds = VideoFolderDataset(root=str(tmp_path), report_dir=str(run), **GEOMETRY)
    assert len(ds) == 5 and "caption 3" not in ds.captions()
    report = [json.loads(line) for line in (run / "bad_samples.jsonl").read_text().splitlines()]
    assert [r["path"] for r in report] == [f"{tmp_path / 'metadata.jsonl'}:4"]
    assert "malformed JSON line" in report[0]["reason"] and "digits" in report[0]["reason"]


def test_huge_integer_in_a_json_annotation_file_names_file_and_line(tmp_path):
    annotations = tmp_path / "train.json"
    annotations.write_text('[\n{"id": "1", "label": "a"},\n{"id": ' + HUGE + ', "label": "b"}\n]\n')
    with pytest.raises(MetadataError) as caught:
        read_ssv2(annotations, None, videos_dir=tmp_path)
    assert str(caught.value).startswith(f"{annotations}:3: invalid JSON") and caught.value.line == 3


# ----------------------------------------------------------------------------- finding 9: outside root


@pytest.fixture
def escaping_metadata(tmp_path):
    """A root whose metadata names one clip inside, one via '..', one by absolute path."""
    root = tmp_path / "root"
    write_clip(root / "inside.mp4", value=60)
    write_clip(tmp_path / "elsewhere" / "secret.mp4", value=120)
    write_clip(tmp_path / "absolute.mp4", value=180)
    rows = [{"file_name": "inside.mp4", "text": "inside"},
            {"file_name": "../elsewhere/secret.mp4", "text": "escape"},
            {"file_name": str(tmp_path / "absolute.mp4"), "text": "absolute"}]
    (root / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def test_metadata_paths_outside_the_root_are_refused_by_default(tmp_path, escaping_metadata):
    run = tmp_path / "run"
    ds = VideoFolderDataset(root=str(escaping_metadata), report_dir=str(run), max_bad_fraction=0.7, **GEOMETRY)
    assert ds.captions() == ["inside"]
    reasons = read_report(run)
    assert set(reasons) == {"secret.mp4", "absolute.mp4"}
    assert "'../elsewhere/secret.mp4'" in reasons["secret.mp4"] and "'..'" in reasons["secret.mp4"]
    assert f"'{tmp_path / 'absolute.mp4'}'" in reasons["absolute.mp4"] and "absolute" in reasons["absolute.mp4"]
    assert all("dataset.allow_outside_root=true" in r and "metadata.jsonl:" in r for r in reasons.values())


def test_allow_outside_root_admits_them(escaping_metadata):
    ds = VideoFolderDataset(root=str(escaping_metadata), allow_outside_root=True, **GEOMETRY)
    assert sorted(ds.captions()) == ["absolute", "escape", "inside"]


def test_line_aligned_videos_file_cannot_escape_either(tmp_path):
    root = tmp_path / "root"
    write_clip(root / "a.mp4")
    write_clip(tmp_path / "b.mp4")
    (root / "prompts.txt").write_text("first\nsecond\n")
    (root / "videos.txt").write_text("a.mp4\n../b.mp4\n")
    run = tmp_path / "run"
    ds = VideoFolderDataset(root=str(root), prompts_file="prompts.txt", videos_file="videos.txt",
                            report_dir=str(run), max_bad_fraction=0.5, **GEOMETRY)
    assert ds.captions() == ["first"]
    assert f"{root / 'videos.txt'}:2" in read_report(run)["b.mp4"]


def test_scoring_a_folder_skips_bombs_and_sizes_clips_by_the_common_frame_size(tmp_path):
    """evaluate videos=DIR: a huge first file no longer sets the size (and memory) of every clip."""
    from t2v_exp.data.video_io import write_video
    from t2v_exp.scoring.evaluation import FOLDER_MAX_SIDE, load_video_folder

    folder = tmp_path / "videos"
    folder.mkdir()
    (folder / "000_bomb.gif").write_bytes(gif_bomb(16000, 16000))
    write_video(folder / "001_big.mp4", np.full((8, 1200, 1200, 3), 90, np.uint8), fps=8)
    for i in range(2, 5):
        write_video(folder / f"00{i}_small.mp4", np.full((8, 48, 64, 3), 30 * i, np.uint8), fps=8)
    clips, names = load_video_folder(folder)
    assert names == ["001_big.mp4", "002_small.mp4", "003_small.mp4", "004_small.mp4"]
    assert tuple(clips.shape[-2:]) == (48, 64) and max(clips.shape[-2:]) <= FOLDER_MAX_SIDE
