"""Temporal SSIM / PSNR against scikit-image on decoded uint8 video, the convention every public
implementation uses (data_range=255). The clips are written to mp4 and decoded with PyAV, so the
frames carry real codec noise and quantisation; the reference never sees the project's own
[-1, 1] tensors, which is what once hid an SSIM computed with the wrong luminance convention."""

import av
import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from t2v_exp.data.video_io import write_video
from t2v_exp.metrics.temporal import TemporalSettings, gaussian_kernel_1d, temporal_scores

SSIM_TOLERANCE = 1e-6
# Decoded uint8 frames are exact integers, so PSNR must agree to float64 round-off. Frames handed
# over as float32 x * 2/255 - 1 are off by up to ~1e-5 of a level already, which moves PSNR by up
# to ~1e-6 dB; that is a property of the input, not of the metric.
PSNR_TOLERANCE_UINT8_DB = 1e-9
PSNR_TOLERANCE_FLOAT_DB = 5e-6


def synthetic_clip(kind, frames, height, width, seed=0):
    """Natural-looking uint8 content [F, H, W, 3] that moves a little from frame to frame."""
    rng = np.random.default_rng(seed)
    rows, columns = np.mgrid[0:height, 0:width].astype(np.float64)
    time = np.arange(frames, dtype=np.float64)[:, None, None, None]
    tint = np.array([1.0, 0.85, 0.7])

    def drifting_texture(sigma, step):
        margin = step * frames + 1
        field = gaussian_filter(rng.standard_normal((height + margin, width + margin, 3)), (sigma, sigma, 0))
        field /= field.std()
        return np.stack([field[step * t : step * t + height, step * t : step * t + width] for t in range(frames)])

    if kind == "gradient":  # a smooth ramp whose brightness drifts
        content = (columns / width * 190 + rows / height * 40)[None, :, :, None] * tint + 2.0 * time + 10
    elif kind == "grating":  # a travelling sinusoid
        phase = 2 * np.pi * (columns / 13 + rows / 23)[None, :, :, None] - 0.5 * time
        content = 128 + 80 * np.sin(phase) * tint
    elif kind == "texture":  # filtered noise panning diagonally, one pixel per frame
        content = 128 + 35 * drifting_texture(sigma=2.5, step=1)
    elif kind == "moving":  # a bright disc crossing a soft textured background
        content = 90 + 20 * drifting_texture(sigma=4.0, step=0)
        for t in range(frames):
            disc = (columns - width * 0.3 - 2.5 * t) ** 2 + (rows - height * 0.5) ** 2 < (0.2 * min(height, width)) ** 2
            content[t][disc] = [235, 220, 60]
    elif kind == "dark":
        content = 20 + 7 * drifting_texture(sigma=2.0, step=1)
    elif kind == "grey":
        content = 128 + 10 * drifting_texture(sigma=1.5, step=1)
    elif kind == "bright":
        content = 232 + 9 * drifting_texture(sigma=2.0, step=1)
    else:
        raise ValueError(kind)
    return np.clip(np.round(content), 0, 255).astype(np.uint8)


def decode(path, pixel_format="rgb24"):
    with av.open(str(path)) as container:
        return np.stack([frame.to_ndarray(format=pixel_format) for frame in container.decode(video=0)])


def encoded(tmp_path, frames, name="clip", pixel_format="rgb24"):
    """The frames after an H.264 round trip, as uint8 [F, H, W, 3] (or [F, H, W] for gray)."""
    path = write_video(tmp_path / f"{name}.mp4", frames, crf=23)
    return decode(path, pixel_format)


def skimage_scores(video):
    """Mean frame-to-frame SSIM and PSNR of one decoded uint8 video, [F, H, W, 3] or [F, H, W]."""
    channel_axis = -1 if video.ndim == 4 else None
    pairs = range(len(video) - 1)
    ssim = [
        structural_similarity(video[t], video[t + 1], gaussian_weights=True, sigma=1.5,
                              use_sample_covariance=False, data_range=255, channel_axis=channel_axis)
        for t in pairs
    ]
    psnr = [peak_signal_noise_ratio(video[t], video[t + 1], data_range=255) for t in pairs]
    return float(np.mean(ssim)), float(np.mean(psnr))


def as_project_floats(uint8_videos):
    """uint8 [N, F, H, W, C] -> the project's float convention [N, F, C, H, W] in [-1, 1]."""
    return torch.as_tensor(uint8_videos).permute(0, 1, 4, 2, 3).float() * (2 / 255) - 1


def assert_matches_skimage(result, videos, psnr_tolerance):
    reference = np.array([skimage_scores(video) for video in videos])
    per_video = result["per_video"]
    np.testing.assert_allclose(per_video["temporal_ssim"], reference[:, 0], atol=SSIM_TOLERANCE, rtol=0)
    np.testing.assert_allclose(per_video["temporal_psnr"], reference[:, 1], atol=psnr_tolerance, rtol=0)
    return reference


IMPLEMENTATIONS = ["compiled", "torch"]  # the C kernel (float64) and the torch path (float32 on the CPU)


@pytest.fixture(params=IMPLEMENTATIONS)
def implementation(request):
    return request.param


def no_cap(implementation):
    """Settings that compare raw PSNR with scikit-image's."""
    return TemporalSettings(psnr_cap_db=float("inf"), implementation=implementation)


@pytest.mark.parametrize("kind", ["gradient", "grating", "texture", "moving", "dark", "grey", "bright"])
def test_matches_scikit_image_on_decoded_mp4(tmp_path, kind, implementation):
    # 36x52: non-square and neither side a multiple of 8 (the codec pads internally).
    video = encoded(tmp_path, synthetic_clip(kind, frames=5, height=36, width=52))
    assert video.shape == (5, 36, 52, 3)
    reference = assert_matches_skimage(temporal_scores(video[None], no_cap(implementation)), [video], PSNR_TOLERANCE_UINT8_DB)
    from_floats = temporal_scores(as_project_floats(video[None]), no_cap(implementation))
    assert_matches_skimage(from_floats, [video], PSNR_TOLERANCE_FLOAT_DB)
    assert 0.05 < reference[0, 0] < 0.999  # the clip exercises the formula, not its limits


def test_matches_scikit_image_on_a_batch_of_moderate_size_videos(tmp_path, implementation):
    clips = [synthetic_clip(kind, frames=4, height=150, width=226, seed=i)
             for i, kind in enumerate(["texture", "dark", "bright"])]
    videos = np.stack([encoded(tmp_path, clip, f"clip{i}") for i, clip in enumerate(clips)])
    result = temporal_scores(videos, no_cap(implementation))
    reference = assert_matches_skimage(result, videos, PSNR_TOLERANCE_UINT8_DB)
    assert result["temporal_ssim"] == pytest.approx(reference[:, 0].mean(), abs=SSIM_TOLERANCE)


def test_grayscale_matches_scikit_image(tmp_path, implementation):
    video = encoded(tmp_path, synthetic_clip("moving", frames=4, height=40, width=58), pixel_format="gray")
    assert video.shape == (4, 40, 58)
    assert_matches_skimage(temporal_scores(video[None, ..., None], no_cap(implementation)), [video], PSNR_TOLERANCE_UINT8_DB)


def test_brightness_shifted_pair_scores_on_the_0_255_convention(implementation):
    """The same textured frame, then 40 levels brighter. SSIM's luminance term depends on the
    absolute means, so scoring the [-1, 1] tensors with L = 2 (the old computation) gives a
    different number from the one every public implementation reports."""
    frame = synthetic_clip("dark", frames=1, height=32, width=48)[0]
    video = np.stack([frame, np.clip(frame.astype(np.int16) + 40, 0, 255).astype(np.uint8)])
    reference, _ = skimage_scores(video)
    on_minus_one_to_one = video.astype(np.float64) / 127.5 - 1
    old = structural_similarity(on_minus_one_to_one[0], on_minus_one_to_one[1], gaussian_weights=True, sigma=1.5,
                                use_sample_covariance=False, data_range=2.0, channel_axis=-1)
    assert abs(old - reference) > 0.05
    for videos in (video[None], as_project_floats(video[None])):
        settings = TemporalSettings(implementation=implementation)
        assert temporal_scores(videos, settings)["temporal_ssim"] == pytest.approx(reference, abs=SSIM_TOLERANCE)


def test_static_video_scores_max_ssim_zero_motion_and_capped_psnr(implementation):
    frame = synthetic_clip("texture", frames=1, height=24, width=30)
    static = np.repeat(frame, 5, axis=0)[None]
    result = temporal_scores(static, TemporalSettings(psnr_cap_db=80.0, implementation=implementation))
    assert result["temporal_ssim"] == pytest.approx(1.0, abs=1e-9)
    assert result["motion"] == 0.0
    assert result["temporal_psnr"] == 80.0
    assert result["protocol"]["psnr_cap_db"] == 80.0
    assert result["protocol"]["psnr_capped_pairs"] == 4


def test_motion_is_mean_absolute_difference_in_unit_range(implementation):
    settings = TemporalSettings(implementation=implementation)
    videos = torch.full((1, 4, 3, 16, 16), -1.0)
    videos[:, 1::2] = 0.0  # every consecutive pair differs by half the range
    assert temporal_scores(videos, settings)["motion"] == pytest.approx(0.5)
    uint8 = torch.zeros(1, 4, 16, 16, 3, dtype=torch.uint8)
    uint8[:, 1::2] = 51
    assert temporal_scores(uint8, settings)["motion"] == pytest.approx(0.2)


def test_protocol_records_the_unit_range_convention():
    protocol = temporal_scores(torch.zeros(1, 2, 3, 16, 16))["protocol"]
    assert protocol["frame_range"] == [0.0, 1.0] and protocol["data_range"] == 1.0
    assert "255" in protocol["frames"] and "[-1, 1]" in protocol["frames"]


def test_chunking_changes_nothing_but_rounding(implementation):
    videos = np.stack([synthetic_clip(kind, frames=5, height=20, width=27, seed=i)
                       for i, kind in enumerate(["texture", "moving", "grating"])])
    whole = temporal_scores(videos, TemporalSettings(implementation=implementation, values_per_chunk=1 << 24))
    # One frame pair (and, in torch, one SSIM row of 11 input rows) per chunk: every seam is exercised.
    smallest_chunks = temporal_scores(videos, TemporalSettings(values_per_chunk=1, implementation=implementation))
    np.testing.assert_allclose(whole["per_video"]["temporal_ssim"], smallest_chunks["per_video"]["temporal_ssim"],
                               atol=1e-7, rtol=0)
    for key in ("temporal_psnr", "motion"):  # integer sums: exact
        np.testing.assert_allclose(whole["per_video"][key], smallest_chunks["per_video"][key], rtol=1e-12)


def test_input_is_left_untouched_and_reduced_matmul_precision_changes_nothing():
    videos = as_project_floats(synthetic_clip("texture", frames=3, height=24, width=40)[None])
    before = videos.clone()
    reference = temporal_scores(videos)["temporal_ssim"]
    assert torch.equal(videos, before)
    # float32 matrix products must not drop to bfloat16/TF32 inside the filter.
    previous = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("medium")
        assert temporal_scores(videos)["temporal_ssim"] == pytest.approx(reference, abs=1e-9)
    finally:
        torch.set_float32_matmul_precision(previous)


def test_gaussian_window_is_eleven_taps_summing_to_one():
    kernel = gaussian_kernel_1d()
    assert kernel.numel() == 11
    assert float(kernel.sum()) == pytest.approx(1.0, abs=1e-15)
    assert int(kernel.argmax()) == 5


def test_frames_smaller_than_the_window_are_rejected():
    with pytest.raises(ValueError, match="11x11"):
        temporal_scores(torch.zeros(1, 3, 3, 10, 32))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    videos = np.stack([synthetic_clip("texture", frames=4, height=48, width=70, seed=i) for i in range(2)])
    on_cpu = temporal_scores(videos)
    on_gpu = temporal_scores(videos, TemporalSettings(device="cuda"))
    for key in ("temporal_ssim", "temporal_psnr", "motion"):
        np.testing.assert_allclose(on_gpu["per_video"][key], on_cpu["per_video"][key], atol=1e-9, rtol=0)


def test_compiled_kernel_and_torch_agree_at_a_real_size_and_say_which_ran():
    videos = np.stack([synthetic_clip(kind, frames=3, height=120, width=180, seed=i)
                       for i, kind in enumerate(["texture", "bright"])])
    results = {name: temporal_scores(videos, no_cap(name)) for name in IMPLEMENTATIONS}
    assert results["compiled"]["protocol"]["implementation"] == "compiled float64 kernel"
    assert results["torch"]["protocol"]["implementation"] == "torch (cpu)"
    np.testing.assert_allclose(results["compiled"]["per_video"]["temporal_ssim"],
                               results["torch"]["per_video"]["temporal_ssim"], atol=SSIM_TOLERANCE, rtol=0)
    np.testing.assert_allclose(results["compiled"]["per_video"]["temporal_psnr"],
                               results["torch"]["per_video"]["temporal_psnr"], atol=1e-9, rtol=0)


@pytest.fixture
def fresh_kernel_cache(tmp_path, monkeypatch):
    """An empty kernel cache, and the loaded library forgotten before and after."""
    from t2v_exp.metrics import ssim_native

    monkeypatch.setenv("T2V_EXP_CACHE", str(tmp_path / "cache"))
    ssim_native.load.cache_clear()
    ssim_native.available.cache_clear()
    yield tmp_path / "cache" / "kernels"
    ssim_native.load.cache_clear()
    ssim_native.available.cache_clear()


def test_the_kernel_is_built_once_into_the_cache(fresh_kernel_cache):
    from t2v_exp.metrics import ssim_native

    video = synthetic_clip("texture", frames=3, height=20, width=24)[None]
    temporal_scores(video, TemporalSettings(implementation="compiled"))
    built = list(fresh_kernel_cache.glob("ssim_kernel-*.so"))
    assert len(built) == 1 and not list(fresh_kernel_cache.glob(".ssim_kernel-*"))  # no scratch left
    stamp = built[0].stat().st_mtime_ns
    ssim_native.load.cache_clear()
    temporal_scores(video, TemporalSettings(implementation="compiled"))
    assert built[0].stat().st_mtime_ns == stamp  # reused, not rebuilt


def test_without_a_compiler_auto_falls_back_to_torch_and_compiled_says_why(fresh_kernel_cache, monkeypatch):
    from t2v_exp.metrics.ssim_native import NativeKernelUnavailable

    monkeypatch.setenv("CC", "/nonexistent/cc")
    video = synthetic_clip("texture", frames=3, height=20, width=24)[None]
    assert temporal_scores(video)["protocol"]["implementation"] == "torch (cpu)"
    with pytest.raises(NativeKernelUnavailable, match="no C compiler"):
        temporal_scores(video, TemporalSettings(implementation="compiled"))
    with pytest.raises(ValueError, match="auto, compiled or torch"):
        temporal_scores(video, TemporalSettings(implementation="fast"))
