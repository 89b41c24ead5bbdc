import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from t2v_exp.metrics.temporal import TemporalSettings, gaussian_kernel_1d, temporal_scores


def correlated_videos(count=2, frames=4, channels=3, height=20, width=27, seed=0):
    """Frames that share structure (so SSIM is far from both 0 and 1), in [-1, 1]."""
    generator = torch.Generator().manual_seed(seed)
    base = torch.rand(count, 1, channels, height, width, generator=generator) * 2 - 1
    noise = torch.rand(count, frames, channels, height, width, generator=generator) * 2 - 1
    return (base + 0.4 * noise).clamp(-1, 1)


def skimage_reference(videos):
    frames = videos.permute(0, 1, 3, 4, 2).double().numpy()  # [N, F, H, W, C]
    ssim, psnr = [], []
    for video in frames:
        pairs = range(len(video) - 1)
        ssim.append(
            np.mean(
                [
                    structural_similarity(
                        video[t], video[t + 1], gaussian_weights=True, sigma=1.5,
                        use_sample_covariance=False, data_range=2.0, channel_axis=-1,
                    )
                    for t in pairs
                ]
            )
        )
        psnr.append(np.mean([peak_signal_noise_ratio(video[t], video[t + 1], data_range=2.0) for t in pairs]))
    return np.array(ssim), np.array(psnr)


@pytest.mark.parametrize("channels,height,width", [(3, 20, 27), (1, 11, 16), (3, 33, 12)])
def test_ssim_and_psnr_match_scikit_image(channels, height, width):
    videos = correlated_videos(channels=channels, height=height, width=width)
    result = temporal_scores(videos)
    reference_ssim, reference_psnr = skimage_reference(videos)
    np.testing.assert_allclose(result["per_video"]["temporal_ssim"], reference_ssim, atol=1e-4, rtol=0)
    np.testing.assert_allclose(result["per_video"]["temporal_psnr"], reference_psnr, atol=1e-4, rtol=0)
    assert result["temporal_ssim"] == pytest.approx(reference_ssim.mean(), abs=1e-4)
    assert 0.05 < result["temporal_ssim"] < 0.95  # the inputs exercise the formula, not its limits


def test_gaussian_window_is_eleven_taps_summing_to_one():
    kernel = gaussian_kernel_1d()
    assert kernel.numel() == 11
    assert float(kernel.sum()) == pytest.approx(1.0, abs=1e-15)
    assert int(kernel.argmax()) == 5


def test_static_video_scores_max_ssim_zero_motion_and_capped_psnr():
    frame = correlated_videos(count=1, frames=1)
    static = frame.expand(1, 5, *frame.shape[2:])
    result = temporal_scores(static, TemporalSettings(psnr_cap_db=80.0))
    assert result["temporal_ssim"] == pytest.approx(1.0, abs=1e-12)
    assert result["motion"] == 0.0
    assert result["temporal_psnr"] == 80.0
    assert result["protocol"]["psnr_cap_db"] == 80.0
    assert result["protocol"]["psnr_capped_pairs"] == 4


def test_motion_is_mean_absolute_difference_over_data_range():
    videos = torch.zeros(1, 4, 3, 16, 16)
    videos[:, 1::2] = 0.5  # every consecutive pair differs by exactly 0.5
    assert temporal_scores(videos)["motion"] == pytest.approx(0.5 / 2.0)


def test_uint8_input_matches_float_input():
    generator = torch.Generator().manual_seed(4)
    uint8 = torch.randint(0, 256, (2, 3, 16, 18, 3), dtype=torch.uint8, generator=generator)
    as_float = uint8.permute(0, 1, 4, 2, 3).float() * (2 / 255) - 1
    from_uint8 = temporal_scores(uint8)
    from_float = temporal_scores(as_float)
    assert from_uint8["per_video"] == from_float["per_video"]


def test_chunking_does_not_change_scores():
    videos = correlated_videos(count=3, frames=5)
    whole = temporal_scores(videos, TemporalSettings())
    chunked = temporal_scores(videos, TemporalSettings(values_per_chunk=1))
    np.testing.assert_allclose(whole["per_video"]["temporal_ssim"], chunked["per_video"]["temporal_ssim"], rtol=1e-12)


def test_frames_smaller_than_the_window_are_rejected():
    with pytest.raises(ValueError, match="11x11"):
        temporal_scores(torch.zeros(1, 3, 3, 10, 32))
