import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from t2v_exp.metrics import compute_metrics
from t2v_exp.metrics.clip_score import ClipScoreSettings, load_clip
from t2v_exp.metrics.suite import MetricsSettings
from t2v_exp.metrics.vbench import (
    VBenchSettings,
    background_consistency,
    background_consistency_from_features,
    temporal_flickering,
)
from tests.test_metrics_fixtures import clip_file

CLIP = ClipScoreSettings(model=str(clip_file()))


def as_float(uint8_videos):
    """uint8 [N, F, H, W, C] -> the project's float [N, F, C, H, W] in [-1, 1]."""
    return uint8_videos.permute(0, 1, 4, 2, 3).double() / 127.5 - 1.0


def random_uint8(count, frames, height, width, seed):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (count, frames, height, width, 3), dtype=torch.uint8, generator=generator)


def moving_scene(frames=8, height=40, width=48):
    """A soft blob gliding right over a drifting stripe background: consecutive frames are close."""
    y = torch.arange(height, dtype=torch.float64).view(height, 1)
    x = torch.arange(width, dtype=torch.float64).view(1, width)
    video = []
    for t in range(frames):
        blob = torch.exp(-((x - 12 - 2 * t) ** 2 + (y - 20) ** 2) / 72.0)
        stripes = 0.3 * torch.sin(2 * math.pi * (x + t) / 64)
        video.append(torch.stack([blob - 0.5 + stripes, 0.5 * (blob + stripes), 0.2 - blob]).clamp(-1, 1))
    return torch.stack(video)[None].float()


# Frame 0 stays first, so VBench's similarity-to-the-first-frame term is a sum over the same
# frames in both orders and only the consecutive-frame term can tell them apart.
SHUFFLE = torch.tensor([0, 4, 1, 6, 2, 7, 3, 5])


# ----------------------------------------------------------------------------- temporal flickering


def vbench_flickering_reference(uint8_video):
    """VBench's temporal_flickering.cal_score on one decoded video: float32 frames, mean |a - b| per pair."""
    frames = uint8_video.numpy().astype(np.float32)
    pair_mae = [np.mean(np.abs(frames[i] - frames[i + 1])) for i in range(len(frames) - 1)]
    return (255.0 - np.mean(pair_mae).item()) / 255.0


def test_flickering_by_hand():
    video = torch.zeros(1, 3, 4, 4, 3, dtype=torch.uint8)
    video[0, 1] = 51  # pair 1: |51 - 0| = 51 everywhere
    video[0, 2, :2] = 51  # pair 2: half the pixels unchanged, half 51 -> mean 25.5
    result = temporal_flickering(video)
    expected = (255 - (51 + 25.5) / 2) / 255
    assert result["per_video"]["temporal_flickering"] == [pytest.approx(expected, abs=1e-15)]
    assert result["mean_abs_frame_difference"] == pytest.approx(38.25, abs=1e-12)


def test_flickering_matches_vbench_reference_per_video_and_mean():
    videos = random_uint8(3, 5, 12, 10, seed=0)
    result = temporal_flickering(videos)
    expected = [vbench_flickering_reference(video) for video in videos]
    assert result["per_video"]["temporal_flickering"] == pytest.approx(expected, rel=1e-6)
    assert result["temporal_flickering"] == pytest.approx(np.mean(expected), rel=1e-6)
    protocol = result["protocol"]
    assert protocol["num_videos"] == 3 and protocol["frames_per_video"] == 5 and protocol["source_resolution"] == [12, 10]
    assert any("static" in note for note in protocol["vbench_differences"])


def test_flickering_static_video_is_exactly_one_and_motion_order_matters():
    static = as_float(random_uint8(1, 1, 16, 16, seed=1)).repeat(1, 6, 1, 1, 1)
    assert temporal_flickering(static)["temporal_flickering"] == 1.0
    ordered = temporal_flickering(moving_scene())["temporal_flickering"]
    shuffled = temporal_flickering(moving_scene()[:, SHUFFLE])["temporal_flickering"]
    assert 1.0 > ordered > shuffled


def test_flickering_uint8_float_and_off_grid_float_agree():
    videos = random_uint8(2, 4, 9, 11, seed=2)
    floats = as_float(videos)
    # Less than half a level off the grid: quantizing to uint8 levels must undo it.
    nudged = floats + (torch.rand(floats.shape, generator=torch.Generator().manual_seed(3)) - 0.5) * (0.9 / 127.5)
    reference = temporal_flickering(videos)["per_video"]["temporal_flickering"]
    assert temporal_flickering(floats)["per_video"]["temporal_flickering"] == reference
    assert temporal_flickering(nudged)["per_video"]["temporal_flickering"] == reference


def test_flickering_needs_two_frames():
    with pytest.raises(ValueError, match="consecutive frames"):
        temporal_flickering(random_uint8(2, 1, 8, 8, seed=4))


# ----------------------------------------------------------------------------- background consistency


def test_consistency_formula_on_hand_made_features():
    diagonal = 1 / math.sqrt(2)
    # Frame 1 is orthogonal to frame 0; frame 2 sits at 45 degrees to both, and only its length
    # differs from a unit vector (cosines ignore it).
    features = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [3.0, 3.0]]], dtype=torch.float64)
    # frame 1: (0 + 0) / 2; frame 2: (diagonal + diagonal) / 2; mean over the 2 frames.
    assert background_consistency_from_features(features).item() == pytest.approx(diagonal / 2, abs=1e-15)
    opposite = torch.tensor([[[1.0, 0.0], [-1.0, 0.0]]], dtype=torch.float64)
    assert background_consistency_from_features(opposite).item() == 0.0  # negative cosines clamp at 0


def vbench_consistency_reference(uint8_videos):
    """VBench's background_consistency loop with its clip_transform, on the same CLIP model."""
    from torchvision.transforms import CenterCrop, Compose, InterpolationMode, Lambda, Normalize, Resize

    model, _ = load_clip(CLIP)
    size = model.visual.input_resolution
    transform = Compose([
        Resize(size, interpolation=InterpolationMode.BICUBIC, antialias=False),
        CenterCrop(size),
        Lambda(lambda x: x.float().div(255.0)),
        Normalize((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
    ])
    scores = []
    with torch.no_grad():
        for video in uint8_videos:
            frames = torch.Tensor(video.numpy()).permute(0, 3, 1, 2)  # float32 0..255, as vbench.utils.load_video
            features = F.normalize(model.encode_image(transform(frames)), dim=-1, p=2)
            total = 0.0
            for index in range(1, len(features)):
                to_previous = max(0.0, F.cosine_similarity(features[index - 1 : index], features[index : index + 1]).item())
                to_first = max(0.0, F.cosine_similarity(features[:1], features[index : index + 1]).item())
                total += (to_previous + to_first) / 2
            scores.append(total / (len(features) - 1))
    return scores


@pytest.mark.parametrize("height,width", [(32, 32), (40, 56)])
def test_consistency_matches_vbench_reference(height, width):
    videos = random_uint8(2, 4, height, width, seed=5)
    result = background_consistency(videos, clip_settings=CLIP)
    assert result["per_video"]["background_consistency"] == pytest.approx(vbench_consistency_reference(videos), abs=1e-6)
    protocol = result["protocol"]
    assert protocol["detector_resolution"] == [32, 32] and protocol["source_resolution"] == [height, width]
    assert protocol["detector_sha256"] and "antialias=False" in protocol["resize_mode"]


def test_consistency_static_video_scores_one_and_order_matters():
    static = as_float(random_uint8(1, 1, 40, 48, seed=6)).repeat(1, 5, 1, 1, 1)
    # One frame per encoder call gives bit-identical features, hence exactly 1; batched float32
    # encoding perturbs identical frames by ~1e-7.
    assert background_consistency(static, VBenchSettings(batch_size=1), CLIP)["background_consistency"] == 1.0
    assert background_consistency(static, clip_settings=CLIP)["background_consistency"] == pytest.approx(1.0, abs=1e-6)
    ordered = background_consistency(moving_scene(), clip_settings=CLIP)["background_consistency"]
    shuffled = background_consistency(moving_scene()[:, SHUFFLE], clip_settings=CLIP)["background_consistency"]
    assert ordered > shuffled + 1e-5  # the random tiny CLIP maps all frames close together: small but real gap


def test_consistency_uint8_and_float_agree():
    videos = random_uint8(2, 3, 36, 44, seed=7)
    from_uint8 = background_consistency(videos, clip_settings=CLIP)["per_video"]["background_consistency"]
    from_float = background_consistency(as_float(videos), clip_settings=CLIP)["per_video"]["background_consistency"]
    assert from_float == from_uint8


def test_consistency_warns_when_not_vbench_clip_model():
    result = background_consistency(random_uint8(1, 2, 32, 32, seed=8), clip_settings=CLIP)
    assert "not VBench's ViT-B/32" in result["warnings"][0]


# ----------------------------------------------------------------------------- suite


def test_suite_runs_both_with_per_video_columns_and_settings_section():
    videos = random_uint8(3, 4, 32, 32, seed=9)
    settings = {"clip_score": {"model": str(clip_file())}, "vbench": {"batch_size": 5}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = compute_metrics(videos, None, metrics=["temporal_flickering", "background_consistency"], settings=settings)
    entries = result["metrics"]
    assert entries["temporal_flickering"]["status"] == "ok" and entries["background_consistency"]["status"] == "ok"
    assert len(result["per_video"]["temporal_flickering"]) == 3 and len(result["per_video"]["background_consistency"]) == 3
    assert MetricsSettings.from_mapping(settings).vbench.batch_size == 5
    with pytest.raises(ValueError, match="batch_size"):
        MetricsSettings.from_mapping({"vbench": {"clip_model": "ViT-B/32"}})


def test_suite_skips_background_consistency_without_clip_weights(tmp_path):
    settings = {"clip_score": {"model": "ViT-B/32", "cache_dir": str(tmp_path)}}
    result = compute_metrics(
        random_uint8(2, 3, 16, 16, seed=10), None, metrics=["temporal_flickering", "background_consistency"], settings=settings
    )
    entry = result["metrics"]["background_consistency"]
    assert entry["status"] == "skipped" and "not found" in entry["reason"]
    assert "metric_settings.clip_score.cache_dir" in entry["fix"]
    assert result["metrics"]["temporal_flickering"]["status"] == "ok"
