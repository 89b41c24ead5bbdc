import csv
import io
import warnings

import pytest
import torch
from omegaconf import OmegaConf

from t2v_exp.metrics import MetricsSettings, compute_metrics, per_video_rows
from t2v_exp.metrics.frechet import SmallSampleWarning
from tests.test_metrics_fixtures import clip_file, i3d_file, inception_file

PROMPTS = ["a red circle", "a green triangle", "a blue square"]


def videos(count=3, frames=16, height=24, width=24, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(count, frames, 3, height, width, generator=generator) * 2 - 1


def all_weights_settings():
    return {
        "clip_score": {"model": str(clip_file())},
        "fvd": {"detector_path": str(i3d_file())},
        "inception_score": {"weights_path": str(inception_file()), "splits": 2, "batch_size": 64},
        "temporal": {"psnr_cap_db": 90.0},
    }


@pytest.fixture(autouse=True)
def quiet_small_sample_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SmallSampleWarning)
        yield


def test_missing_weights_and_reference_are_skipped_with_fixes_while_temporal_runs(tmp_path):
    settings = {
        "clip_score": {"model": "ViT-B/32", "cache_dir": str(tmp_path)},
        "fvd": {"detector_path": str(tmp_path / "i3d_torchscript.pt")},
        "inception_score": {"weights_path": str(tmp_path / "inception.pth")},
    }
    result = compute_metrics(
        videos(frames=3), PROMPTS, metrics=["temporal", "clip_score", "fvd", "inception_score"], settings=settings
    )
    entries = result["metrics"]
    assert entries["temporal"]["status"] == "ok" and 0 < entries["temporal"]["temporal_ssim"] < 1
    for name, setting in [("clip_score", "metric_settings.clip_score.cache_dir"), ("inception_score", "metric_settings.inception_score.weights_path")]:
        assert entries[name]["status"] == "skipped"
        assert "not found" in entries[name]["reason"] and setting in entries[name]["fix"]
    # FVD is skipped for its missing reference before its weights are even looked at.
    assert entries["fvd"]["status"] == "skipped" and "reference" in entries["fvd"]["reason"]
    assert "clip_sim" not in result["per_video"] and len(result["per_video"]["temporal_ssim"]) == 3

    with_reference = compute_metrics(videos(frames=3), PROMPTS, videos(frames=3, seed=1), ["fvd"], settings)
    assert with_reference["metrics"]["fvd"]["fix"].startswith("set +metric_settings.fvd.detector_path=")


def test_all_metrics_with_local_weights_report_scores_protocol_and_per_video_columns():
    result = compute_metrics(
        videos(), PROMPTS, reference_videos=videos(seed=1),
        metrics=["temporal", "clip_score", "fvd", "inception_score"], settings=all_weights_settings(),
    )
    entries = result["metrics"]
    assert {name: entry["status"] for name, entry in entries.items()} == dict.fromkeys(entries, "ok")
    assert entries["fvd"]["fvd"] > 0 and entries["fvd"]["protocol"]["ddof"] == 1
    assert entries["fvd"]["protocol"]["detector_sha256"] and entries["fvd"]["protocol"]["frames_per_clip"] == 16
    assert entries["inception_score"]["inception_score_frame"] >= 1.0
    assert entries["temporal"]["protocol"]["psnr_cap_db"] == 90.0
    assert entries["clip_score"]["protocol"]["num_videos"] == 3
    per_video = result["per_video"]
    assert per_video["prompt"] == PROMPTS
    for column in ("clip_sim", "clip_score", "temporal_ssim", "temporal_psnr", "motion"):
        assert len(per_video[column]) == 3
    rows = per_video_rows(per_video)
    writer = csv.DictWriter(io.StringIO(), fieldnames=list(per_video))
    writer.writerows(rows)
    assert rows[1]["video_index"] == 1 and rows[1]["prompt"] == PROMPTS[1]


def test_a_failing_metric_is_recorded_and_the_others_still_run():
    # 8x8 frames are too small for an 11x11 SSIM window; CLIP and FVD resize and cope.
    tiny = videos(height=8, width=8)
    result = compute_metrics(tiny, PROMPTS, tiny.flip(0), ["temporal", "clip_score", "fvd"], all_weights_settings())
    entries = result["metrics"]
    assert entries["temporal"]["status"] == "error" and "11x11" in entries["temporal"]["error"]
    assert "Traceback" in entries["temporal"]["traceback"]
    assert entries["clip_score"]["status"] == "ok" and entries["fvd"]["status"] == "ok"


def test_uint8_videos_and_omegaconf_settings_are_accepted():
    uint8 = ((videos(frames=2) + 1) * 127.5).round().to(torch.uint8).permute(0, 1, 3, 4, 2)
    settings = OmegaConf.create({"clip_score": {"model": str(clip_file())}})
    result = compute_metrics(uint8, PROMPTS, metrics=["clip_score", "temporal"], settings=settings)
    assert result["metrics"]["clip_score"]["status"] == "ok"
    assert result["metrics"]["temporal"]["protocol"]["resolution"] == [24, 24]


def test_shapes_oracle_always_gets_an_entry():
    result = compute_metrics(videos(frames=2), PROMPTS, metrics=["shapes_oracle"])
    assert result["metrics"]["shapes_oracle"]["status"] in {"ok", "skipped", "error"}
    if result["metrics"]["shapes_oracle"]["status"] == "skipped":
        assert "shapes_oracle" in result["metrics"]["shapes_oracle"]["fix"]


def test_bad_selection_and_settings_fail_early_with_valid_options():
    with pytest.raises(ValueError, match="valid"):
        compute_metrics(videos(frames=2), PROMPTS, metrics=["fid"])
    with pytest.raises(ValueError, match="detector_path"):
        MetricsSettings.from_mapping({"fvd": {"detector": "x"}})
    with pytest.raises(ValueError, match="one prompt per video"):
        compute_metrics(videos(frames=2), PROMPTS[:2], metrics=["temporal"])
