"""Sweep report from a sweep directory laid out like a real one: two jobs ok (different families),
one failed with only status.json and a metrics.jsonl cut short by the kill."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from t2v_exp.data.video_io import write_video
from t2v_exp.report import write_report
from t2v_exp.scoring.comparison import compare
from t2v_exp.scoring.evaluation import summarize

from .conftest import REPO

VIDEOS = ("000_a_red_circle_moving_right.mp4", "001_a_blue_square_bouncing.mp4")


def eval_dir(path: Path, ssim: tuple[float, float], clip: tuple[float, float], fvd: float | None = None) -> dict:
    """metrics.json as the evaluator writes it (per-video record, summary with CIs), two videos."""
    per_video = {"temporal": {"temporal_ssim": list(ssim), "temporal_psnr": [14.0, 14.4], "motion": [0.1, 0.2]},
                 "clip_score": {"clip_sim": [c / 100 for c in clip], "clip_score": list(clip)}}
    metrics = {
        "temporal": {"status": "ok", **{k: float(np.mean(v)) for k, v in per_video["temporal"].items()},
                     "protocol": {"pairs": "consecutive"}, "seconds": 0.1},
        "fvd": {"status": "skipped", "reason": "I3D weights not found", "fix": "set metrics.fvd.weights"},
        "clip_score": {"status": "ok", **{k: float(np.mean(v)) for k, v in per_video["clip_score"].items()},
                       "seconds": 2.0},
    }
    if fvd is not None:  # as the FVD metric reports itself: its own CI, flagged below 256 videos
        metrics["fvd"] = {"status": "ok", "fvd": fvd, "fvd_ci": {"ci_low": fvd - 50, "ci_high": fvd + 50},
                          "indicative_only": True, "protocol": {"num_videos": 2, "detector_sha256": "0" * 64}}
    report = {"mode": "run_dir", "model": "m", "dataset": "shapes", "num_videos": 2, "frames": 4,
              "resolution": [16, 16], "seeds_per_prompt": 1, "num_prompts": 2, "metrics_requested": list(metrics),
              "metric_settings": {}, "metrics": metrics,
              "videos": [{"file": name, "prompt": name[4:-4], "seed": i,
                          "scores": {m: {k: v[i] for k, v in cols.items()} for m, cols in per_video.items()}}
                         for i, name in enumerate(VIDEOS)],
              "reference": {"num_videos": 2, "names": ["validation[0]", "validation[1]"]},
              "summary": summarize(metrics, per_video, 2)}
    path.mkdir(parents=True)
    (path / "metrics.json").write_text(json.dumps(report))
    rng = np.random.default_rng(int(ssim[0] * 100))
    for name in VIDEOS:
        write_video(path / "videos" / name, rng.integers(0, 255, (4, 16, 16, 3), dtype=np.uint8), fps=8)
    return report


def pair(base: Path, tuned: Path) -> None:
    """The fine-tuned evaluation carries its comparison with eval_base, made by the real comparison."""
    before, after = (json.loads((p / "metrics.json").read_text()) for p in (base, tuned))
    after["comparison"], after["comparison_protocol"] = compare(before, after)
    (tuned / "metrics.json").write_text(json.dumps(after))


def ok_job(sweep: Path, num: int, model: str, family: str, finetune: str, base: dict, tuned: dict) -> None:
    job = sweep / f"{num}_{model}_shapes"
    job.mkdir(parents=True)
    (job / "status.json").write_text(json.dumps({
        "status": "ok", "error": None, "traceback": None, "model": model, "dataset": "shapes",
        "experiment": f"{model}_exp", "wall_time_s": 125.0, "gpu_hours": 0.0, "num_gpus": 0, "device_name": "cpu"}))
    (job / "config.yaml").write_text(f"model:\n  name: {model}\n  family: {family}\n  finetune: {finetune}\n"
                                     f"  lora:\n    rank: 4\ndataset:\n  name: shapes\n")
    (job / "summary.json").write_text(json.dumps({"params/trainable": 22528, "params/total": 1593307,
                                                  "params/trainable_pct": 1.414, "final_loss": 0.25, "step": 3}))
    # Peak memory is highest at step 2, not at the last step: the table must show the max.
    records = [{"step": s, "train/loss": 1.0 / (s + num), "train/lr": 1e-4, "train/peak_mem_mb": peak}
               for s, peak in ((1, 100.0), (2, 321.6), (3, 300.0))]
    (job / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    eval_dir(job / "eval_base", **base)
    eval_dir(job / "eval", **tuned)
    pair(job / "eval_base", job / "eval")


def failed_job(sweep: Path) -> None:
    job = sweep / "1_cogvideox_tiny_shapes"
    job.mkdir(parents=True)
    (job / "status.json").write_text(json.dumps({
        "status": "failed", "error": "ValueError: frames=8 is not 4k+1 <try 9>\nsecond line", "model": "cogvideox_tiny",
        "dataset": "shapes", "experiment": None, "wall_time_s": 3.0, "gpu_hours": 0.0, "num_gpus": 0,
        "device_name": "cpu", "traceback": "Traceback (most recent call last):\n  File x\nValueError: frames=8"}))
    (job / "metrics.jsonl").write_text('{"step": 1, "train/loss": 2.0, "train/peak_mem_mb": 50}\n{"step": 2, "train/lo')


@pytest.fixture
def sweep(tmp_path) -> Path:
    root = tmp_path / "sweep"
    # modelscope: every video +0.1 SSIM (a CI of the delta that excludes 0); CLIP +3 and -1 (one that does not)
    ok_job(root, 0, "modelscope_tiny", "modelscope", "lora", dict(ssim=(0.45, 0.55), clip=(28.0, 30.0)),
           dict(ssim=(0.55, 0.65), clip=(31.0, 29.0)))
    failed_job(root)
    ok_job(root, 2, "animatediff_tiny", "animatediff", "full", dict(ssim=(0.35, 0.45), clip=(28.0, 30.0), fvd=600.0),
           dict(ssim=(0.25, 0.35), clip=(31.0, 29.0), fvd=450.0))
    return root


def markdown_table(text: str, section: str = "## Every job") -> list[dict[str, str]]:
    """The first table after ``section``, as one dict per row."""
    after = text.split(section, 1)[1].split("\n\n|", 1)
    block = "|" + after[1] if len(after) == 2 else after[0]
    lines = [line for line in block.split("\n\n")[0].splitlines() if line.startswith("| ")]
    header = [c.strip() for c in lines[0].strip("|").split(" | ")]
    return [dict(zip(header, (c.strip() for c in line.strip("|").split(" | ")), strict=True)) for line in lines[1:]]


def test_markdown_has_one_row_per_job_with_changes_and_the_failure(sweep):
    result = write_report(sweep, log_to_wandb=False)
    text = (sweep / "report.md").read_text()
    rows = markdown_table(text)
    assert [r["job"] for r in rows] == ["0_modelscope_tiny_shapes", "1_cogvideox_tiny_shapes", "2_animatediff_tiny_shapes"]
    ms, cog, ad = rows
    assert ms["fine-tune"] == "lora r4" and ad["fine-tune"] == "full"
    assert ms["trainable params (% of base)"] == "22,528 (1.41%)"
    assert ms["peak mem (MB)"] == "322" and ms["final loss"] == "0.25" and ms["wall time"] == "2m 05s"
    assert list(ms)[:2] == ["job", "status"]
    # base [95% CI] → tuned [95% CI] (t over the 2 prompts: 0.5 +- 12.706 * 0.0707 / sqrt 2), then the paired
    # change with its CI, exact sign-flip p, BH q and the verdict. The primary (auto: clip_score/clip_sim here)
    # is the claim; SSIM's interval excludes 0 but its p (2 prompts: 0.5) does not: no claim.
    assert ms["temporal/temporal_ssim base → tuned"] == "0.5 [-0.1353, 1.135] → 0.6 [-0.03531, 1.235]"
    assert ms["temporal/temporal_ssim Δ [95% CI]"] == "+0.1 [+0.1, +0.1], p=0.5, q 1, exploratory: no clear change"
    assert ad["temporal/temporal_ssim Δ [95% CI]"] == "-0.1 [-0.1, -0.1], p=0.5, q 1, exploratory: no clear change"
    assert ms["clip_score/clip_score base → tuned"] == "29 [16.29, 41.71] → 30 [17.29, 42.71]"
    assert ms["clip_score/clip_sim Δ [95% CI]"] == "+0.01 [-0.244, +0.264], p=1, no significant change (primary)"
    assert "%" not in ms["clip_score/clip_score Δ [95% CI]"]  # bounded scores change in points
    # FVD: a set score with its own CIs, no p-value, flagged below 256 videos
    assert ad["fvd/fvd base → tuned"] == "600 [550, 650] → 450 [400, 500] (indicative only)"
    assert ad["fvd/fvd Δ [95% CI]"] == "-150 (-25.0%), indicative only (under 256 videos)"
    assert ms["fvd/fvd base → tuned"] == "–"
    assert not any("seconds" in h or "protocol" in h for h in ms)  # bookkeeping, not scores
    assert ms["status"] == "ok"
    # <...> is backslash-escaped: a markdown viewer would swallow it as an HTML tag.
    assert cog["status"] == "**FAILED: ValueError: frames=8 is not 4k+1 \\<try 9\\>**"
    assert cog["final loss"] == "2" and cog["peak mem (MB)"] == "50"  # from the partial metrics.jsonl
    assert cog["temporal/temporal_ssim base → tuned"] == "–"
    assert "second line" not in text.split("## Protocol")[0]
    assert "2 videos of 4 frames at 16×16 px" in text
    assert "`fvd` skipped: I3D weights not found; fix: set metrics.fvd.weights (0_modelscope_tiny_shapes)" in text
    assert "95% t-interval over per-prompt means (prompt = unit), 2 prompts" in text
    # The headline: the primary per model, then the exploratory scores
    primary = markdown_table(text, "### Primary endpoint: `clip_score/clip_sim`")
    assert [(r["model"], r["training runs"], r["p (Holm)"]) for r in primary] == [
        ("modelscope_tiny", "1", "1, Holm 1"), ("animatediff_tiny", "1", "1, Holm 1")]
    explored = markdown_table(text, "### Exploratory scores")
    assert {r["score"] for r in explored} >= {"temporal/temporal_ssim", "clip_score/clip_score"}
    assert all(r["verdict"].startswith("exploratory") for r in explored)
    assert "FVD from fewer than 256 videos is indicative only" in text and "paired by (prompt, seed)" in text
    assert "![Training loss (one panel per objective)](loss_curves.png)" in text
    assert result["jobs"] == 3 and result["ok"] == 2


def test_a_refused_comparison_is_shown_instead_of_deltas(sweep):
    tuned = sweep / "0_modelscope_tiny_shapes" / "eval" / "metrics.json"
    report = json.loads(tuned.read_text())
    del report["comparison"]
    report["comparison_refused"] = {"message": "refusing to compare ...", "differences": [
        {"field": "num_videos", "base": 2, "tuned": 3}, {"field": "fvd detector_sha256", "base": "a", "tuned": "b"}]}
    tuned.write_text(json.dumps(report))
    write_report(sweep, log_to_wandb=False)
    text = (sweep / "report.md").read_text()
    ms = markdown_table(text)[0]
    assert ms["temporal/temporal_ssim Δ [95% CI]"] == "not compared: differs in num_videos, fvd detector_sha256"
    assert ms["temporal/temporal_ssim base → tuned"] == "0.5 [-0.1353, 1.135] → 0.6 [-0.03531, 1.235]"
    assert "base vs fine-tuned not compared: differs in num_videos, fvd detector_sha256 (0_modelscope_tiny_shapes)" in text


def test_html_table_videos_side_by_side_and_plots(sweep):
    write_report(sweep, log_to_wandb=False)
    page = (sweep / "report.html").read_text()
    assert "<table>" in page and page.count("<tr class='failed'>") == 1
    assert "0.5 [-0.1353, 1.135] → 0.6 [-0.03531, 1.235]" in page and "no significant change (primary)" in page
    assert "<h2>Across training runs</h2>" in page and "Exploratory scores" in page
    assert "indicative only" in page
    # Text from job files is escaped, never markup.
    assert "&lt;try 9&gt;" in page and "<try 9>" not in page
    assert "<details><summary>1_cogvideox_tiny_shapes" in page  # the traceback, folded
    across, per_job = page.split("<h2>Samples: base vs fine-tuned")
    # Same prompt, each model: a row per prompt, a fine-tuned video per ok job, in job order.
    shared = re.findall(r'<video[^>]*\ssrc="([^"]+)"', across.split("<h2>Same prompt, each model")[1])
    assert [(Path(s).parts[-4], Path(s).name) for s in shared] == [
        (job, video) for video in VIDEOS for job in ("0_modelscope_tiny_shapes", "2_animatediff_tiny_shapes")]
    assert all("/eval/videos/" in s for s in shared) and "a red circle moving right" in across
    sources = re.findall(r'<video[^>]*\ssrc="([^"]+)"', per_job)
    assert len(sources) == 8  # 2 ok jobs x 2 prompts x (base, fine-tuned)
    assert all(not Path(s).is_absolute() and (sweep / s).is_file() for s in sources)
    pairs = list(zip(sources[::2], sources[1::2], strict=True))
    for base, tuned in pairs:  # same file name: same prompt and seed
        assert "/eval_base/videos/" in base and "/eval/videos/" in tuned
        assert Path(base).name == Path(tuned).name and Path(base).parent.parent.parent == Path(tuned).parent.parent.parent
    for name in ("loss_curves.png", "metrics_before_after.png"):
        with Image.open(sweep / name) as image:
            image.verify()
            assert image.format == "PNG" and image.size[0] > 300 and image.size[1] > 200
        assert f"src='{name}'" in page


def test_report_elsewhere_links_back_into_the_sweep(sweep, tmp_path):
    out = tmp_path / "reports" / "compare"
    write_report(sweep, out_dir=out, log_to_wandb=False)
    page = (out / "report.html").read_text()
    sources = re.findall(r'\ssrc=["\']([^"\']+)["\']', page)
    assert sources and all((out / s).is_file() for s in sources)
    assert any(s.startswith("../../sweep/") for s in sources)
    assert not (sweep / "report.md").exists()


def test_jobs_without_data_are_reported_and_plots_skipped(tmp_path):
    root = tmp_path / "sweep"
    (root / "0_modelscope_tiny_shapes").mkdir(parents=True)  # died before writing anything
    killed = root / "1_cogvideox_tiny_shapes"
    killed.mkdir()
    (killed / "status.json").write_text(json.dumps({"status": "running", "model": "cogvideox_tiny"}))
    (killed / "summary.json").write_text('{"params/trainable": 1')  # cut mid-write
    (root / "wandb").mkdir()  # not a job dir
    (root / "loss_curves.png").write_bytes(b"stale")  # from an earlier report of this sweep
    write_report(root, log_to_wandb=False)
    text = (root / "report.md").read_text()
    rows = markdown_table(text)
    assert [r["model"] for r in rows] == ["?", "cogvideox_tiny"]
    assert rows[0]["status"].startswith("**INCOMPLETE: no status.json")
    assert rows[1]["status"].startswith("**INCOMPLETE: status.json still says 'running'")
    assert "- Training loss (one panel per objective): skipped, no data to plot." in text
    assert "- Metrics base vs fine-tuned: skipped, no data to plot." in text
    assert not (root / "loss_curves.png").exists() and not (root / "metrics_before_after.png").exists()
    page = (root / "report.html").read_text()
    assert "No job wrote sample videos." in page and "No prompt was generated by two or more jobs" in page


def test_report_logs_a_wandb_table_offline(sweep, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    result = write_report(sweep, log_to_wandb=True)
    runs = list((sweep / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("run-*.wandb")) and result["wandb"] == str(runs[0])
    (table_file,) = runs[0].glob("files/media/table/report/jobs_*.table.json")
    table = json.loads(table_file.read_text())
    assert len(table["data"]) == 3
    row = dict(zip(table["columns"], table["data"][0], strict=True))
    assert row["temporal/temporal_ssim % change"] is None  # a bounded score: its change is in points
    assert row["temporal/temporal_ssim base ci_low"] == pytest.approx(-0.1353, abs=1e-4)
    assert row["temporal/temporal_ssim delta"] == pytest.approx(0.1) and row["temporal/temporal_ssim p"] == 0.5
    assert row["temporal/temporal_ssim role"] == "exploratory" and row["temporal/temporal_ssim adjusted p"] == 1.0
    assert row["clip_score/clip_sim role"] == "primary"
    # deltas +3 and -1: mean 1, standard error 2, t(0.975, 1) = 12.706
    assert row["clip_score/clip_score delta ci_low"] == pytest.approx(1.0 - 12.706204736 * 2.0, abs=1e-6)
    (pooled_file,) = runs[0].glob("files/media/table/report/across_runs_*.table.json")
    pooled = json.loads(pooled_file.read_text())
    primary = [dict(zip(pooled["columns"], line, strict=True)) for line in pooled["data"] if line[4] == "primary"]
    assert [(r["model"], r["score"], r["runs"]) for r in primary] == [
        ("modelscope_tiny", "clip_score/clip_sim", 1), ("animatediff_tiny", "clip_score/clip_sim", 1)]
    assert row["peak_mem_mb"] == pytest.approx(321.6) and row["status"] == "ok"


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "t2v_exp.report", *args, f"hydra.run.dir={cwd}/hydra"],
                          cwd=REPO, env={**os.environ, "WANDB_MODE": "offline"}, capture_output=True, text=True,
                          timeout=120)


def test_cli_writes_the_report_and_explains_a_bad_sweep_dir(sweep, tmp_path):
    done = run_cli(f"sweep_dir={sweep}", "wandb=false", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (sweep / "report.md").is_file() and (sweep / "report.html").is_file()
    missing = run_cli(cwd=tmp_path)
    assert missing.returncode != 0 and "sweep_dir is required" in missing.stderr
    wrong = run_cli(f"sweep_dir={tmp_path}/nope", "wandb=false", cwd=tmp_path)
    assert wrong.returncode != 0 and "is not a directory" in wrong.stderr


def test_rebuilding_the_report_updates_one_wandb_run_with_its_plots(sweep, monkeypatch):
    from .test_evaluate import wandb_records

    monkeypatch.setenv("WANDB_MODE", "offline")
    write_report(sweep, log_to_wandb=True)
    write_report(sweep, log_to_wandb=True)
    runs = sorted((sweep / "wandb").glob("offline-run-*"))
    assert len(runs) == 2  # one offline directory per build ...
    ids = set()
    for run in runs:
        records = wandb_records(run)
        (run_record,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
        ids.add(run_record.run_id)
        logged = {item.key or item.nested_key[0] for r in records if r.WhichOneof("record_type") == "history"
                  for item in r.history.item}
        assert {"report/jobs", "report/loss_curves"} <= logged, logged
    assert len(ids) == 1  # ... all of the same W&B run, which `wandb sync` merges into one


def test_links_to_files_with_url_special_characters_resolve(tmp_path):
    from urllib.parse import unquote

    from t2v_exp.reporting.html import rel

    target = tmp_path / "job #1 50%" / "a?b.mp4"
    link = rel(target, tmp_path)
    assert "#" not in link and "?" not in link and " " not in link
    assert (tmp_path / unquote(link)) == target
