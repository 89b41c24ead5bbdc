"""Probing and reading edge cases the data sets rely on: broken files, stills, the short-clip rule."""

from __future__ import annotations

import os

import pytest
import torch

from t2v_exp.data.datasets import clip_fits, read_image_clip
from t2v_exp.data.index import probe_media
from t2v_exp.data.video_io import ShortClipError, VideoDecodeError, read_clip

from .data_fixtures import flat_frames, write_broken_files, write_clip


def probe(path):
    stat = os.stat(path)
    return probe_media(str(path), stat.st_size, stat.st_mtime_ns)


def test_probe_flags_every_broken_file(tmp_path):
    for name, path in write_broken_files(tmp_path).items():
        entry = probe(path)
        assert entry.decodable == (name == "too_short"), (name, entry)
        if not entry.decodable:
            assert entry.error and (name != "zero_byte" or entry.error == "zero-byte file")
            with pytest.raises(VideoDecodeError):
                read_clip(path, 4, 32, 32)


@pytest.mark.parametrize(("frames", "stride", "fps", "fits"), [
    (4, 1, None, True), (3, 1, None, False), (7, 2, None, True), (6, 2, None, False), (7, 1, 4.0, True),
    (6, 1, 4.0, False),
])
def test_clip_fits_agrees_with_read_clip(tmp_path, frames, stride, fps, fits):
    """The index-time "too short" rule must match what read_clip(short_clip="skip") does."""
    path = write_clip(tmp_path / "v.mp4", num_frames=frames, fps=8)
    assert clip_fits(probe(path), 4, stride, fps) == fits
    if fits:
        assert read_clip(path, 4, 32, 32, frame_stride=stride, target_fps=fps, short_clip="skip").shape[0] == 4
    else:
        with pytest.raises(ShortClipError):
            read_clip(path, 4, 32, 32, frame_stride=stride, target_fps=fps, short_clip="skip")


def test_still_image_clip_and_broken_image(tmp_path):
    from PIL import Image

    Image.fromarray(flat_frames(1, 90, 30, 50)[0]).save(tmp_path / "a.jpg")
    clip = read_image_clip(str(tmp_path / "a.jpg"), 5, 16, 16)
    assert clip.shape == (5, 3, 16, 16) and torch.equal(clip[0], clip[4])
    assert probe(tmp_path / "a.jpg").kind == "image" and probe(tmp_path / "a.jpg").frames == 1
    (tmp_path / "b.png").write_bytes((tmp_path / "a.jpg").read_bytes()[:40])
    assert not probe(tmp_path / "b.png").decodable
    with pytest.raises(VideoDecodeError):
        read_image_clip(str(tmp_path / "b.png"), 5, 16, 16)


# ----------------------------------------------------------------------------- timing, rotation, rng


def grey_ramp(num_frames: int, height: int = 32, width: int = 32):
    """Frame i is flat grey 6*i: a decoded frame's mean tells which source frame it was."""
    import numpy as np

    return np.stack([np.full((height, width, 3), 6 * i, np.uint8) for i in range(num_frames)])


def source_ids(clip) -> list[int]:
    return [round(v) for v in ((clip[:, :, 4:-4, 4:-4].mean(dim=(1, 2, 3)) + 1) * 127.5 / 6).tolist()]


def write_with_pts(path, frames, pts, time_base):
    """Like an encoder fed by a trimmer or a phone: explicit (possibly offset or irregular) timestamps."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.time_base = time_base
        for array, stamp in zip(frames, pts, strict=True):
            frame = av.VideoFrame.from_ndarray(array, format="rgb24")
            frame.pts, frame.time_base = stamp, time_base
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


@pytest.mark.parametrize("suffix", [".mp4", ".mkv"])
def test_first_timestamp_not_zero(tmp_path, suffix):
    """A file whose first frame is at 2 s (a trimmed copy): positions count from that frame."""
    from fractions import Fraction

    from t2v_exp.data.video_io import probe_video

    path = write_with_pts(tmp_path / f"late{suffix}", grey_ramp(40), [20 + i for i in range(40)], Fraction(1, 10))
    info = probe_video(path)
    assert (info.num_frames, info.duration) == (40, pytest.approx(4.0))
    assert source_ids(read_clip(path, 8, 32, 32, frame_stride=2, start="center")) == list(range(12, 27, 2))
    assert source_ids(read_clip(path, 4, 32, 32, frame_stride=1, start="center"))[0] == 18


def test_variable_frame_rate_is_sampled_by_time(tmp_path):
    from fractions import Fraction

    from t2v_exp.data.video_io import probe_video

    times = [0, 0.1, 0.15, 0.2, 0.4, 0.45, 0.5, 0.8, 0.9, 1.0, 1.05, 1.1, 1.5, 1.6, 1.7, 1.8, 2.0]
    path = write_with_pts(tmp_path / "vfr.mkv", grey_ramp(len(times)), [round(t * 1000) for t in times],
                          Fraction(1, 1000))
    assert probe_video(path).num_frames == len(times)  # counted from packets: Matroska has no count
    # 10 frames at 10 fps centred in 2.1 s (slack 1.1 s, half of it snapped to the 0.1 s grid): times
    # 0.5, 0.6, ..., 1.4; each takes the frame on screen then (the one at 0.5 s holds until 0.8 s).
    assert source_ids(read_clip(path, 10, 32, 32, target_fps=10, start="center")) == [6, 6, 6, 7, 8, 9, 11, 11,
                                                                                      11, 11]


def test_display_rotation_is_applied(tmp_path):
    import av
    import numpy as np

    frames = np.zeros((4, 32, 48, 3), np.uint8)
    frames[:, :8, :8] = 255  # white top-left corner of a landscape frame
    path = tmp_path / "phone.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=8)
        stream.width, stream.height, stream.pix_fmt = 48, 32, "yuv420p"
        stream.set_display_rotation(90)  # shown turned a quarter counter-clockwise
        for array in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    clip = read_clip(path, 2, 48, 32)  # portrait, uncropped
    corners = {name: float(clip[0, :, y, x].mean()) for name, (y, x) in
               {"top_left": (2, 2), "bottom_left": (45, 2), "top_right": (2, 29)}.items()}
    assert corners["bottom_left"] > 0.9 and corners["top_left"] < -0.9 and corners["top_right"] < -0.9, corners
    entry = probe(path)  # the index records the size as shown, so buckets see a portrait clip
    assert (entry.width, entry.height) == (32, 48)


def test_numpy_generator_rng_and_float_tensor_input(tmp_path):
    import numpy as np

    from t2v_exp.data.video_io import probe_video, write_video

    frames = torch.from_numpy(grey_ramp(40, 40, 48)).permute(0, 3, 1, 2).float() / 127.5 - 1
    path = write_video(tmp_path / "t.mp4", frames, fps=30000 / 1001)
    assert probe_video(path).fps == pytest.approx(29.97, abs=0.01)
    assert [p.name for p in tmp_path.iterdir()] == ["t.mp4"]  # the temp file was renamed away
    a = read_clip(path, 4, 32, 32, start="random", rng=np.random.default_rng(7))
    assert torch.equal(a, read_clip(path, 4, 32, 32, start="random", rng=np.random.default_rng(7)))
    starts = {source_ids(read_clip(path, 4, 32, 32, start="random", rng=np.random.default_rng(s)))[0]
              for s in range(6)}
    assert len(starts) > 2


@pytest.mark.parametrize("fps", [12, 30])
def test_webm_with_exactly_enough_frames_is_not_short(tmp_path, fps):
    """WebM keeps milliseconds: at 12 or 30 fps its end lands a hair early, which must not make a
    file holding exactly num_frames frames "too short" (SSv2 is 12 fps WebM)."""
    from t2v_exp.data.video_io import write_video

    path = write_video(tmp_path / "exact.webm", grey_ramp(7), fps=fps)
    assert clip_fits(probe(path), 7, 1, None)
    assert source_ids(read_clip(path, 7, 32, 32, short_clip="skip")) == list(range(7))
    assert not clip_fits(probe(path), 8, 1, None)
    with pytest.raises(ShortClipError):
        read_clip(path, 8, 32, 32, short_clip="skip")


def test_cut_off_faststart_mp4_raises_instead_of_freezing(tmp_path):
    """A web-style mp4 (index up front) cut in half still opens and reports its full length; clips
    from the lost half must fail loudly, not repeat the last surviving frame."""
    import random

    import av
    import numpy as np

    # Noisy borders make the frames cost real bytes, so the cut falls mid-stream; the flat centre
    # (3 * i) says which frame came back.
    frames = np.random.default_rng(0).integers(0, 256, (80, 32, 32, 3), dtype=np.uint8)
    for i in range(80):
        frames[i, 4:-4, 4:-4] = 3 * i
    path = tmp_path / "web.mp4"
    with av.open(str(path), "w", options={"movflags": "faststart"}) as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        stream.options = {"crf": "10"}  # little compression noise on the centre values
        for array in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    data = path.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])

    def centre_ids(clip):
        return [round(float((frame[:, 8:-8, 8:-8].mean() + 1) * 127.5 / 3)) for frame in clip]

    outcomes = []
    for seed in range(12):
        try:
            ids = centre_ids(read_clip(cut, 4, 32, 32, frame_stride=4, start="random", rng=random.Random(seed)))
            assert ids[-1] >= ids[0] + 6, ids  # 12 frames on (+-codec noise): moving, not a frozen frame
            outcomes.append("ok")
        except VideoDecodeError as exc:
            outcomes.append("truncated" if "truncated" in exc.reason else exc.reason)
    assert set(outcomes) == {"ok", "truncated"}, outcomes
    whole = centre_ids(read_clip(path, 80, 32, 32, short_clip="skip"))  # the intact file reads to the end
    assert whole[-1] - whole[0] >= 75


def test_index_probe_catches_a_file_cut_off_after_its_header(tmp_path):
    """probe_video(verify=True), which the index uses, reads the packets of a cut-off WebM (header
    promising 3 s) and flags it; the plain probe trusts the header."""
    import numpy as np

    from t2v_exp.data.video_io import probe_video, write_video

    noisy = np.random.default_rng(0).integers(0, 256, (36, 32, 32, 3), dtype=np.uint8)
    path = write_video(tmp_path / "whole.webm", noisy, fps=12)
    assert probe_video(path, verify=True).decodable and probe(path).decodable
    cut = tmp_path / "cut.webm"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    assert probe_video(cut).decodable
    checked = probe_video(cut, verify=True)
    assert not checked.decodable and checked.error.startswith("truncated")
    assert not probe(cut).decodable and probe(cut).error.startswith("truncated")
