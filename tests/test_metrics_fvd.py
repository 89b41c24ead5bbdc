import hashlib
import warnings

import numpy as np
import pytest
import torch
from scipy import linalg

from t2v_exp.metrics.detectors import MissingWeightsError
from t2v_exp.metrics.frechet import SmallSampleWarning
from t2v_exp.metrics.fvd import FVDSettings, fvd, i3d_features, load_i3d, resize_frames
from tests.test_metrics_fixtures import i3d_file, plain_i3d_file


def uint8_videos(count, frames=16, height=224, width=224, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (count, frames, height, width, 3), dtype=torch.uint8, generator=generator)


def settings(**overrides):
    return FVDSettings(detector_path=str(i3d_file()), **overrides)


def scipy_fd(first, second):
    mu1, mu2 = first.mean(axis=0), second.mean(axis=0)
    sigma1, sigma2 = np.cov(first, rowvar=False), np.cov(second, rowvar=False)
    covmean = linalg.sqrtm(sigma1 @ sigma2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


@pytest.fixture(autouse=True)
def quiet_small_sample_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SmallSampleWarning)
        yield


def test_fvd_matches_detector_called_by_hand_and_records_protocol():
    generated, reference = uint8_videos(6, seed=1), uint8_videos(5, seed=2)
    result = fvd(generated, reference, settings())

    # The protocol by hand: uint8 -> 2x/255 - 1, already 224x224, [N, C, T, H, W].
    detector = torch.jit.load(str(i3d_file()))
    def by_hand(videos):
        clips = (videos.float() * 2 / 255 - 1).permute(0, 4, 1, 2, 3)
        with torch.no_grad():
            return detector(clips, rescale=False, resize=False, return_features=True).double().numpy()

    # The detector computes float32 features; with another batch split or thread count they differ
    # in the 7th digit, which moves this small distance by up to ~2e-6 relative (seen in CI). A
    # protocol slip (no rescale, another layout) changes it by orders of magnitude more.
    assert result["fvd"] == pytest.approx(scipy_fd(by_hand(generated), by_hand(reference)), rel=1e-5)
    protocol = result["protocol"]
    assert protocol["detector_sha256"] == hashlib.sha256(i3d_file().read_bytes()).hexdigest()
    assert (protocol["num_videos"], protocol["num_reference_videos"]) == (6, 5)
    assert protocol["frames_per_clip"] == 16 and protocol["detector_resolution"] == [224, 224]
    assert protocol["ddof"] == 1 and protocol["resize_mode"] == "direct" and protocol["feature_dim"] == 400
    assert any("biased" in note for note in result["warnings"])


def test_same_videos_give_zero_and_different_sets_do_not():
    videos = uint8_videos(4, height=40, width=56, seed=3)
    detector = load_i3d(settings())
    same = fvd(videos, videos, settings(), detector=detector)["fvd"]
    brighter = (videos.int() // 2 + 128).to(torch.uint8)
    different = fvd(videos, brighter, settings(), detector=detector)["fvd"]
    assert abs(same) < 1e-6
    assert different > 1e-3


def test_longer_videos_use_the_first_clip_frames_and_short_ones_fail_clearly():
    videos = uint8_videos(2, frames=20, height=32, width=32, seed=4)
    detector = load_i3d(settings())
    first16 = i3d_features(videos[:, :16], detector, settings())
    all20 = i3d_features(videos, detector, settings())
    torch.testing.assert_close(first16, all20)
    with pytest.raises(ValueError, match="metric_settings.fvd.num_frames"):
        i3d_features(videos[:, :8], detector, settings())


def test_resize_modes_differ_on_wide_frames():
    frames = -torch.ones(1, 3, 32, 64)
    frames[..., :12] = 1.0  # a bright band at the left edge that a center crop drops
    direct = resize_frames(frames, 224, "direct", antialias=False)
    cropped = resize_frames(frames, 224, "short_side_center_crop", antialias=False)
    assert direct.shape == cropped.shape == (1, 3, 224, 224)
    assert float(direct[..., :30].mean()) == pytest.approx(1.0)
    assert float(cropped.max()) == pytest.approx(-1.0)
    with pytest.raises(ValueError, match="resize_mode"):
        resize_frames(frames, 224, "stretch", antialias=False)


def test_short_side_center_crop_feeds_the_detector_224_and_is_recorded():
    videos = uint8_videos(3, height=36, width=64, seed=5)
    result = fvd(videos, videos.flip(0), settings(resize_mode="short_side_center_crop"))
    assert result["protocol"]["resize_mode"] == "short_side_center_crop"
    assert result["protocol"]["source_resolution"] == [36, 64]
    assert np.isfinite(result["fvd"])


def test_torchscript_port_without_return_features_is_refused_not_run_on_the_wrong_output():
    videos = uint8_videos(3, height=16, width=16, seed=6)
    with pytest.raises(ValueError, match="no return_features switch"):
        fvd(videos, videos.flip(0), FVDSettings(detector_path=str(plain_i3d_file())))


def test_missing_detector_names_the_setting(tmp_path):
    missing = tmp_path / "nope.pt"
    with pytest.raises(MissingWeightsError) as raised:
        fvd(uint8_videos(2, height=8, width=8), uint8_videos(2, height=8, width=8), FVDSettings(detector_path=str(missing)))
    assert raised.value.setting == "metric_settings.fvd.detector_path"
    assert "metric_settings.fvd.detector_path" in raised.value.fix and str(missing) in raised.value.reason


def test_wrong_checksum_is_refused():
    with pytest.raises(ValueError, match="sha256"):
        load_i3d(settings(expected_sha256="0" * 64))
