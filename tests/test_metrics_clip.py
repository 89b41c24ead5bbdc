import hashlib
import shutil
import warnings

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from t2v_exp.metrics.clip_score import ClipScoreSettings, clip_score, load_clip
from t2v_exp.metrics.detectors import MissingWeightsError
from tests.test_metrics_fixtures import clip_file

PROMPTS = ["a red circle moving left", "a blue square bouncing"]


def import_clip():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import clip
    return clip


def uint8_videos(count, frames, height, width, seed):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (count, frames, height, width, 3), dtype=torch.uint8, generator=generator)


def reference_cosines(videos, prompts):
    """clip's own pipeline: PIL frames through clip's preprocess, cosine per frame."""
    clip = import_clip()
    model, preprocess = clip.load(str(clip_file()), device="cpu", jit=False)
    with torch.no_grad():
        text = F.normalize(model.encode_text(clip.tokenize(prompts)).double(), dim=-1)
        cosines = []
        for video, text_embedding in zip(videos, text, strict=True):
            images = torch.stack([preprocess(Image.fromarray(frame.numpy())) for frame in video])
            cosines.append(F.normalize(model.encode_image(images).double(), dim=-1) @ text_embedding)
    return torch.stack(cosines)


@pytest.mark.parametrize("height,width,tolerance", [(32, 32, 1e-5), (48, 64, 1e-3)])
def test_matches_clip_preprocess_on_pil_frames(height, width, tolerance):
    videos = uint8_videos(2, 3, height, width, seed=0)
    result = clip_score(videos, PROMPTS, ClipScoreSettings(model=str(clip_file())))
    cosines = reference_cosines(videos, PROMPTS)
    expected_sim = cosines.mean(dim=1)
    expected_score = (100 * cosines.clamp(min=0)).mean(dim=1)
    torch.testing.assert_close(torch.tensor(result["per_video"]["clip_sim"], dtype=torch.float64), expected_sim, atol=tolerance, rtol=0)
    torch.testing.assert_close(
        torch.tensor(result["per_video"]["clip_score"], dtype=torch.float64), expected_score, atol=100 * tolerance, rtol=0
    )
    assert result["clip_sim"] == pytest.approx(float(expected_sim.mean()), abs=tolerance)


def test_records_protocol_and_checksum():
    result = clip_score(uint8_videos(2, 2, 40, 40, seed=1), PROMPTS, ClipScoreSettings(model=str(clip_file())))
    protocol = result["protocol"]
    assert protocol["detector_sha256"] == hashlib.sha256(clip_file().read_bytes()).hexdigest()
    assert protocol["detector_resolution"] == [32, 32] and protocol["num_videos"] == 2
    assert protocol["frames_per_video"] == 2 and protocol["source_resolution"] == [40, 40]


def test_long_prompts_are_truncated_not_rejected():
    long_prompt = "a red circle " * 60  # well over 77 tokens
    result = clip_score(uint8_videos(1, 2, 32, 32, seed=2), [long_prompt], ClipScoreSettings(model=str(clip_file())))
    assert -1.0 <= result["clip_sim"] <= 1.0


def test_one_prompt_per_video_is_required():
    with pytest.raises(ValueError, match="one prompt per video"):
        clip_score(uint8_videos(2, 2, 32, 32, seed=3), PROMPTS[:1], ClipScoreSettings(model=str(clip_file())))


def test_model_name_resolves_in_cache_dir_and_never_downloads(tmp_path):
    settings = ClipScoreSettings(model="ViT-B/32", cache_dir=str(tmp_path))
    with pytest.raises(MissingWeightsError) as raised:
        load_clip(settings)
    assert str(tmp_path / "ViT-B-32.pt") in raised.value.reason
    assert "metric_settings.clip_score.cache_dir" in raised.value.fix

    # A file under the official name with the wrong content is refused (clip.load would re-download it).
    shutil.copy(clip_file(), tmp_path / "ViT-B-32.pt")
    with pytest.raises(ValueError, match="not the official"):
        load_clip(settings)


def test_missing_checkpoint_path_names_the_model_setting(tmp_path):
    with pytest.raises(MissingWeightsError) as raised:
        load_clip(ClipScoreSettings(model=str(tmp_path / "my_clip.pt")))
    assert raised.value.setting == "metric_settings.clip_score.model"
