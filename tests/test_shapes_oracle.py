"""The shapes oracle scores the generator's own clips perfectly and shuffled captions near chance."""

from __future__ import annotations

import random

import pytest
import torch

from t2v_exp.data.shapes import BACKGROUND, generate_shapes, read_metadata
from t2v_exp.data.video_io import read_clip
from t2v_exp.metrics.shapes_oracle import parse_prompt, shapes_oracle_scores


def decoded_shapes(root, domain: str, num_videos: int, num_frames: int = 8):
    directory = generate_shapes(root, num_videos=num_videos, num_frames=num_frames, height=32, width=32, fps=8,
                                domain=domain, seed=3)
    records = read_metadata(directory)
    # Through the real decoder: compression and chroma subsampling are part of the test.
    videos = torch.stack([read_clip(directory / r["file"], num_frames, 32, 32, start="center") for r in records])
    return videos, [r["caption"] for r in records], records


@pytest.mark.parametrize("domain", ["horizontal", "vertical"])
def test_generator_clips_score_perfectly(tmp_path, domain):
    videos, prompts, records = decoded_shapes(tmp_path, domain, num_videos=12)
    scores = shapes_oracle_scores(videos, prompts)
    assert scores["color_acc"] == 1.0, scores["per_video"]
    assert scores["direction_acc"] == 1.0, scores["per_video"]
    assert scores["per_video"]["detected_color"] == [r["color"] for r in records]
    assert scores["protocol"]["unparsed_prompts"] == 0


def test_shuffled_captions_score_near_chance(tmp_path):
    videos, prompts, _ = decoded_shapes(tmp_path, "all", num_videos=32, num_frames=6)
    assert shapes_oracle_scores(videos, prompts)["color_acc"] == 1.0
    shuffled = list(prompts)
    random.Random(0).shuffle(shuffled)
    scores = shapes_oracle_scores(videos, shuffled)
    # 4 colours and 4 directions: chance is 0.25 for each.
    assert scores["color_acc"] < 0.75 and scores["direction_acc"] < 0.75, scores


def test_uint8_input_and_undetectable_video(tmp_path):
    videos, prompts, _ = decoded_shapes(tmp_path, "horizontal", num_videos=2)
    as_uint8 = ((videos + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 1, 3, 4, 2)
    assert shapes_oracle_scores(as_uint8, prompts)["color_acc"] == 1.0
    blank = torch.tensor(BACKGROUND, dtype=torch.float32).view(1, 1, 3, 1, 1).expand(2, 8, 3, 32, 32) / 127.5 - 1
    scores = shapes_oracle_scores(blank.contiguous(), prompts)
    assert scores["color_acc"] == 0.0 and scores["direction_acc"] == 0.0
    assert scores["per_video"]["detected_color"] == [None, None]
    # A static shape has no direction, whatever its colour.
    still = videos[:, :1].expand(-1, 8, -1, -1, -1).contiguous()
    scores = shapes_oracle_scores(still, prompts)
    assert scores["color_acc"] == 1.0 and scores["direction_acc"] == 0.0


def test_prompt_parsing_and_length_check():
    assert parse_prompt("A Yellow square moving UP slowly") == ("yellow", "up")
    assert parse_prompt("a cat on a sofa") == (None, None)
    with pytest.raises(ValueError, match="2 videos but 1 prompts"):
        shapes_oracle_scores(torch.zeros(2, 2, 3, 8, 8), ["a red circle moving left"])


def test_frame_without_background_has_no_shape():
    grey = torch.zeros(1, 4, 3, 16, 16)  # mid-grey everywhere: nothing looks like the shapes background
    scores = shapes_oracle_scores(grey, ["a green circle moving left"])
    assert scores["per_video"]["detected_color"] == [None] and scores["color_acc"] == 0.0


def test_axis_is_the_direction_without_its_sign(tmp_path):
    videos, prompts, records = decoded_shapes(tmp_path, "all", num_videos=16)
    # Each prompt with its direction reversed (same axis) or turned (other axis).
    reverse = {"left": "right", "right": "left", "up": "down", "down": "up"}
    turn = {"left": "up", "right": "down", "up": "left", "down": "right"}
    for mapping, axis_expected in ((reverse, True), (turn, False)):
        changed = [p.replace(f" {r['direction']} ", f" {mapping[r['direction']]} ") for p, r in zip(prompts, records, strict=True)]
        per_video = shapes_oracle_scores(videos, changed)["per_video"]
        assert not any(per_video["direction_ok"])
        assert per_video["axis_ok"] == [axis_expected] * len(records)
    assert all(shapes_oracle_scores(videos, prompts)["per_video"]["axis_ok"])
