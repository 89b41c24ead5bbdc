"""Base vs fine-tuned comparison: hand-computable paired deltas, pairing by (prompt, seed), refusals
that name every differing field, and the real entrypoint on folders of mp4s (refused / compared)."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from t2v_exp.data.video_io import write_video
from t2v_exp.scoring.comparison import IncomparableEvaluations, compare, differences, format_comparison
from tests.test_metrics_fixtures import clip_file

from .conftest import REPO

PROMPTS = ("a red circle moving left", "a blue square moving up")


def report(values: dict[tuple[str, int], float], *, score: str = "temporal_ssim", **fields) -> dict:
    """A metrics.json as the evaluator writes it, with one per-video temporal score."""
    videos = [{"file": f"{i:03d}_seed{seed}.mp4", "prompt": prompt, "seed": seed,
               "scores": {"temporal": {score: value}}} for i, ((prompt, seed), value) in enumerate(values.items())]
    base = {"num_videos": len(videos), "frames": 8, "resolution": [32, 32], "num_inference_steps": 4,
            "guidance_scale": 6.0, "metrics_requested": ["temporal"],
            "metric_settings": {"temporal": {"data_range": 255.0, "psnr_cap_db": 100.0, "device": "cpu"}},
            "videos": videos,
            "metrics": {"temporal": {"status": "ok", score: float(np.mean(list(values.values()))),
                                     "protocol": {"data_range": 255.0, "frames_per_video": 8}}}}
    base.update(fields)
    return base


def keys(*seeds: int) -> list[tuple[str, int]]:
    return [(PROMPTS[i % 2], seed) for i, seed in enumerate(seeds)]


def test_paired_delta_by_hand():
    base = report(dict(zip(keys(0, 1, 2, 3), [1.0, 2.0, 3.0, 4.0], strict=True)))
    tuned = report(dict(zip(keys(0, 1, 2, 3), [2.0, 3.0, 5.0, 4.0], strict=True)))
    table, protocol = compare(base, tuned)
    row = table["temporal"]["temporal_ssim"]
    # Prompt 0 (seeds 0, 2) moved +1 and +2: mean +1.5; prompt 1 (seeds 1, 3) +1 and 0: mean +0.5. The
    # prompt is the unit: two per-prompt deltas, mean 1.0, t-interval 1 +- t(0.975, 1) * 0.5 / sqrt(2).
    assert row["kind"] == "paired" and row["n"] == 4 and row["n_prompts"] == 2 and protocol["n_pairs"] == 4
    assert (row["base_mean"], row["tuned_mean"], row["mean_delta"]) == (2.5, 3.5, 1.0)
    half = 12.706204736174698 * np.std([1.5, 0.5], ddof=1) / np.sqrt(2)
    assert (row["ci_low"], row["ci_high"]) == pytest.approx((1.0 - half, 1.0 + half))
    assert row["p_value"] == pytest.approx(0.5)  # sign flips of (+1.5, +0.5): 2 of 4 as extreme
    assert row["pct_change"] is None and row["unit"] == "points"  # bounded scores change in points
    assert row["role"] == "exploratory" and not row["significant"]  # no primary named among these scores
    assert protocol["pairing"] == "(prompt, seed)" and protocol["unit"] == "prompt"


def test_significance_needs_the_p_value_and_the_interval_to_agree():
    values = dict(zip(keys(*range(8)), [0.0] * 8, strict=True))
    moved = dict(zip(keys(*range(8)), [0.5] * 8, strict=True))  # every video, so every prompt, +0.5
    table, protocol = compare(report(values), report(moved), primary="temporal/temporal_ssim")
    row = table["temporal"]["temporal_ssim"]
    assert protocol["primary"] == "temporal/temporal_ssim" and row["role"] == "primary"
    # Two prompts only: the interval is [0.5, 0.5] (no spread), but 2 prompts cannot give p < 0.05 (exact
    # sign-flip p = 2/4): not significant, whatever the interval says.
    assert row["p_value"] == pytest.approx(0.5) and row["ci_low"] == row["ci_high"] == 0.5
    assert not row["significant"] and "no significant change (primary)" in format_comparison(table)


def test_pairs_by_prompt_and_seed_not_by_row_order():
    base = report(dict(zip(keys(0, 1, 2), [1.0, 10.0, 100.0], strict=True)))
    tuned_values = dict(zip(keys(0, 1, 2), [1.5, 10.5, 100.5], strict=True))
    tuned = report(dict(reversed(list(tuned_values.items()))))  # same videos, listed last to first
    row = compare(base, tuned)[0]["temporal"]["temporal_ssim"]
    assert row["mean_delta"] == pytest.approx(0.5) and (row["ci_low"], row["ci_high"]) == pytest.approx((0.5, 0.5))
    # Row order would have paired 1 with 100.5 and 100 with 1.5: a mean delta of about 0.5 only by chance,
    # with a CI spanning hundreds. Shuffle once more to be sure order never matters.
    shuffled = copy.deepcopy(tuned)
    shuffled["videos"] = [shuffled["videos"][i] for i in (1, 2, 0)]
    assert compare(base, shuffled)[0] == compare(base, tuned)[0]


def test_a_ci_containing_zero_reads_no_significant_change():
    base = report(dict(zip(keys(0, 1, 2, 3), [1.0, 2.0, 3.0, 4.0], strict=True)))
    tuned = report(dict(zip(keys(0, 1, 2, 3), [1.5, 1.5, 3.5, 3.5], strict=True)))  # deltas +.5 -.5 +.5 -.5
    table, _ = compare(base, tuned)
    row = table["temporal"]["temporal_ssim"]
    assert row["mean_delta"] == 0.0 and row["ci_low"] < 0 < row["ci_high"] and not row["significant"]
    text = format_comparison(table)
    assert "temporal/temporal_ssim" in text and "exploratory: no clear change" in text
    assert "change [95% CI]" in text.splitlines()[0] and " p " in text.splitlines()[0]


def test_refusal_lists_every_differing_field_with_both_values():
    base = report(dict(zip(keys(0, 1, 2), [1.0, 2.0, 3.0], strict=True)))
    base["metrics"]["temporal"]["protocol"]["detector_sha256"] = "a" * 64
    tuned = report(dict(zip(keys(10, 11, 12, 13), [1.0, 2.0, 3.0, 4.0], strict=True)),
                   frames=16, resolution=[64, 64], num_inference_steps=25, guidance_scale=7.5)
    tuned["metrics"]["temporal"]["protocol"]["detector_sha256"] = "b" * 64
    tuned["metric_settings"]["temporal"]["psnr_cap_db"] = 60.0
    tuned["metric_settings"]["temporal"]["device"] = "cuda"  # where it ran: not a difference
    found = {d["field"]: (d["base"], d["tuned"]) for d in differences(base, tuned)}
    assert found == {
        "num_videos": (3, 4), "seeds": ([0, 1, 2], [10, 11, 12, 13]), "frames": (8, 16),
        "resolution": ([32, 32], [64, 64]), "num_inference_steps": (4, 25), "guidance_scale": (6.0, 7.5),
        "metric_settings.temporal.psnr_cap_db": (100.0, 60.0),
        "temporal detector_sha256": ("a" * 64, "b" * 64)}
    with pytest.raises(IncomparableEvaluations) as refused:
        compare(base, tuned, base_name="runs/base", tuned_name="runs/tuned")
    message = str(refused.value)
    assert "runs/tuned" in message and "runs/base" in message
    for line in ("- num_videos: base 3, tuned 4", "- seeds: base [0, 1, 2], tuned [10, 11, 12, 13]",
                 f"- temporal detector_sha256: base '{'a' * 64}', tuned '{'b' * 64}'"):
        assert line in message


def test_same_prompts_and_seeds_combined_differently_are_refused():
    base = report({(PROMPTS[0], 0): 1.0, (PROMPTS[1], 1): 2.0})
    tuned = report({(PROMPTS[0], 1): 1.0, (PROMPTS[1], 0): 2.0})
    assert [d["field"] for d in differences(base, tuned)] == ["(prompt, seed) pairs"]


def test_a_baseline_without_per_video_records_is_refused_with_a_hint():
    old = {"num_videos": 3, "metrics": {"temporal": {"status": "ok", "temporal_ssim": 0.5}}}
    with pytest.raises(IncomparableEvaluations, match="older t2v_exp"):
        compare(old, report({(PROMPTS[0], 0): 1.0}))


def test_set_metrics_without_features_show_both_values_and_the_delta_without_a_test():
    def with_is(values, score):
        result = report(values)
        result["metrics"]["inception_score"] = {"status": "ok", "inception_score": score, "inception_score_std": 0.1,
                                                "protocol": {"detector_sha256": "c" * 64}}
        return result

    values = dict(zip(keys(0, 1), [1.0, 2.0], strict=True))
    table, _ = compare(with_is(values, 4.0), with_is(values, 3.0))
    row = table["inception_score"]["inception_score"]
    assert row["kind"] == "set" and (row["base"], row["tuned"], row["delta"]) == (4.0, 3.0, -1.0)
    assert row["pct_change"] == pytest.approx(-25.0) and "p_value" not in row  # IS is ratio-scale: % is kept
    line = next(line for line in format_comparison(table).splitlines() if line.startswith("inception_score/"))
    assert "-1" in line and "(-25.0%)" in line and "no paired test" in line


# -- the entrypoint on folders of videos -------------------------------------------------------------
def write_folder(folder: Path, seeds: list[int], seed: int = 0) -> None:
    """Videos named as the evaluator names them (<index>_<prompt>_seed<seed>.mp4) with sidecar prompts."""
    rng = np.random.default_rng(seed)
    for index, video_seed in enumerate(seeds):
        prompt = PROMPTS[index % 2]
        stem = f"{index:03d}_{prompt.replace(' ', '_')}_seed{video_seed}"
        base = rng.integers(0, 255, (1, 32, 32, 3), dtype=np.uint8)
        frames = np.clip(base + rng.integers(0, 40, (6, 32, 32, 3)), 0, 255).astype(np.uint8)
        write_video(folder / f"{stem}.mp4", frames, fps=8)
        (folder / f"{stem}.txt").write_text(prompt)


def other_clip_file(tmp_path: Path) -> Path:
    """A second tiny CLIP file: same architecture, one weight changed, so a different sha256."""
    state = torch.load(clip_file(), weights_only=True)
    state["logit_scale"] = state["logit_scale"] + 1
    path = tmp_path / "other_clip.pt"
    torch.save(state, path)
    return path


def evaluate_cli(*overrides: str, out: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "t2v_exp.evaluate", *overrides, "logger=none", f"hydra.run.dir={out}"],
                          cwd=REPO, env={**os.environ, "WANDB_MODE": "offline"}, capture_output=True, text=True,
                          timeout=300)


def evaluate_in_process(compose, out: Path, *overrides: str) -> dict:
    from t2v_exp.evaluate import evaluate

    return evaluate(compose([*overrides, "logger=none"], run_dir=out, config_name="evaluate"), out)


def test_cli_refuses_a_baseline_with_other_n_seeds_and_detector(compose_train, tmp_path):
    write_folder(tmp_path / "base_videos", seeds=[10, 11, 12])
    write_folder(tmp_path / "tuned_videos", seeds=[0, 1, 2, 3], seed=1)
    metrics = "metrics=[temporal,clip_score]"
    evaluate_in_process(compose_train, tmp_path / "base", f"videos={tmp_path / 'base_videos'}", metrics,
                        f"+metric_settings.clip_score.model={clip_file()}")
    result = evaluate_cli(f"videos={tmp_path / 'tuned_videos'}", metrics, f"baseline={tmp_path / 'base'}",
                          f"+metric_settings.clip_score.model={other_clip_file(tmp_path)}", out=tmp_path / "tuned")
    assert result.returncode != 0
    assert "refusing to compare" in result.stderr and "Traceback" not in result.stderr
    assert "- num_videos: base 3, tuned 4" in result.stderr
    assert "- seeds: base [10, 11, 12], tuned [0, 1, 2, 3]" in result.stderr
    assert "- clip_score detector_sha256: base '" in result.stderr
    # The evaluation itself is kept, with the refusal recorded next to it.
    written = json.loads((tmp_path / "tuned" / "metrics.json").read_text())
    assert "comparison" not in written
    assert {d["field"] for d in written["comparison_refused"]["differences"]} == {
        "num_videos", "seeds", "clip_score detector_sha256"}


def test_cli_compares_a_matching_pair_with_cis_and_p_values(compose_train, tmp_path):
    write_folder(tmp_path / "base_videos", seeds=[0, 1, 2, 3])
    write_folder(tmp_path / "tuned_videos", seeds=[0, 1, 2, 3], seed=1)
    evaluate_in_process(compose_train, tmp_path / "base", f"videos={tmp_path / 'base_videos'}", "metrics=[temporal]")
    result = evaluate_cli(f"videos={tmp_path / 'tuned_videos'}", "metrics=[temporal]",
                          f"baseline={tmp_path / 'base'}", out=tmp_path / "tuned")
    assert result.returncode == 0, result.stderr[-3000:]
    log = result.stdout + result.stderr
    assert "Paired by (prompt, seed)" in log
    header = next(line for line in log.splitlines() if "change [95% CI]" in line)
    assert "base" in header and "tuned" in header and " p " in header and "verdict" in header
    written = json.loads((tmp_path / "tuned" / "metrics.json").read_text())
    row = written["comparison"]["temporal"]["temporal_ssim"]
    assert row["n"] == 4 and row["n_prompts"] == 2
    assert row["ci_low"] <= row["mean_delta"] <= row["ci_high"] and 0 < row["p_value"] <= 1
    base = json.loads((tmp_path / "base" / "metrics.json").read_text())
    assert row["base_mean"] == pytest.approx(base["summary"]["temporal"]["temporal_ssim"]["value"])
    delta = f"{row['mean_delta']:+.3g} [{row['ci_low']:+.3g}, {row['ci_high']:+.3g}]"
    line = next(line for line in log.splitlines() if line.startswith("temporal/temporal_ssim") and delta in line)
    assert f"{row['p_value']:.3g}" in line.split(delta)[1] and "exploratory" in line
