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


def test_the_entry_has_kvd_with_an_interval_around_it_and_no_per_set_fvd_interval():
    generated, reference = uint8_videos(5, height=32, width=32, seed=7), uint8_videos(4, height=32, width=32, seed=8)
    result = fvd(generated, reference, settings())
    # A percentile bootstrap over videos duplicates them and shifts FVD: its interval could exclude FVD itself.
    assert "fvd_ci" not in result and not any(key.startswith("bootstrap") for key in vars(settings()))
    assert result["kvd_ci"]["ci_low"] < result["kvd"] < result["kvd_ci"]["ci_high"]
    assert result["protocol"]["kvd_kernel"] == "k(x, y) = (x.y / d + 1)^3" and result["protocol"]["ddof"] == 1
    # The features travel with the entry by default: evaluate saves them for the base-vs-tuned change.
    assert result["features"]["generated"].shape == (5, 400) and result["features"]["reference"].shape == (4, 400)


def test_kvd_of_the_entry_is_the_u_statistic_of_its_features():
    from t2v_exp.metrics.kvd import kvd_batched

    generated, reference = uint8_videos(4, height=24, width=24, seed=9), uint8_videos(3, height=24, width=24, seed=10)
    result = fvd(generated, reference, settings())
    features = {side: torch.from_numpy(rows).double() for side, rows in result["features"].items()}
    # float32 copies of the float64 features: equal to ~1e-6 relative
    assert result["kvd"] == pytest.approx(float(kvd_batched(features["generated"], features["reference"])), rel=1e-4)


def test_eight_frame_clips_are_stretched_to_sixteen_and_recorded():
    videos = uint8_videos(2, frames=8, height=32, width=32, seed=11)
    detector = load_i3d(settings())
    eight = i3d_features(videos, detector, settings(num_frames=8))
    doubled = i3d_features(videos.repeat_interleave(2, dim=1), detector, settings())
    torch.testing.assert_close(eight, doubled)
    result = fvd(videos, videos.flip(0), settings(num_frames=8))
    protocol = result["protocol"]
    assert protocol["frames_per_clip"] == 8 and protocol["detector_frames"] == 16
    assert "repeated" in protocol["temporal_fill"] and "not with 16-frame FVD" in protocol["temporal_fill"]
    assert any("not comparable with 16-frame" in note for note in result["warnings"])
    assert fvd(uint8_videos(2, seed=12, height=32, width=32), uint8_videos(2, seed=13, height=32, width=32),
               settings())["protocol"]["temporal_fill"] is None


def test_fvd_and_kvd_metrics_on_the_same_videos_run_the_detector_once(monkeypatch):
    import importlib

    from t2v_exp.metrics.suite import MetricsSettings, compute_metrics

    fvd_module = importlib.import_module("t2v_exp.metrics.fvd")  # the package re-exports a function of that name
    calls = []
    real = fvd_module.i3d_features
    monkeypatch.setattr(fvd_module, "i3d_features", lambda *a, **k: calls.append(1) or real(*a, **k))
    videos = uint8_videos(3, height=24, width=24, seed=14).permute(0, 1, 4, 2, 3).float() * (2 / 255) - 1
    reference = videos.flip(0).contiguous() * 0.5
    metric_settings = MetricsSettings(fvd=settings())
    first = compute_metrics(videos, None, reference, metrics=["fvd"], settings=metric_settings)["metrics"]["fvd"]
    second = compute_metrics(videos, None, reference, metrics=["kvd"], settings=metric_settings)["metrics"]["kvd"]
    assert first["status"] == second["status"] == "ok", (first, second)
    assert len(calls) == 2 and second["kvd"] == first["kvd"] and second["kvd_ci"] == first["kvd_ci"]
    videos.add_(0.0)  # modified in place: its version changes, the features are computed again
    compute_metrics(videos, None, reference, metrics=["kvd"], settings=metric_settings)
    assert len(calls) == 4
