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
