"""Sweep report from a sweep directory laid out like a real one (two jobs ok, one failed)."""

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

from .conftest import REPO


def eval_dir(path: Path, ssim: float, finetuned: bool) -> None:
    metrics = {"temporal": {"status": "ok", "temporal_ssim": ssim, "motion": 0.1, "seconds": 0.2},
               "fvd": {"status": "skipped", "reason": "I3D weights not found", "fix": "set ..."}}
    path.mkdir(parents=True)
    (path / "metrics.json").write_text(json.dumps({"finetuned": finetuned, "num_videos": 2, "frames": 4,
                                                   "resolution": [16, 16], "metrics": metrics}))
    frames = np.full((4, 16, 16, 3), 100, np.uint8)
    for i in range(2):
        write_video(path / "videos" / f"00{i}_a_red_circle.mp4", frames, fps=8)


def ok_job(sweep: Path, num: int, model: str, family: str, before: float, after: float) -> None:
    job = sweep / f"{num}_{model}_shapes"
    job.mkdir(parents=True)
    (job / "status.json").write_text(json.dumps({"status": "ok", "model": model, "dataset": "shapes",
                                                 "wall_time_s": 120.0, "gpu_hours": 0.5, "error": None}))
    (job / "config.yaml").write_text(f"model:\n  name: {model}\n  family: {family}\n  finetune: lora\n"
                                     f"  lora:\n    rank: 4\ndataset:\n  name: shapes\n")
    (job / "summary.json").write_text(json.dumps({"params/trainable": 1000, "params/trainable_pct": 1.5,
                                                  "final_loss": 0.25}))
    (job / "metrics.jsonl").write_text("\n".join(json.dumps({"step": s, "train/loss": 1.0 / s,
                                                             "train/peak_mem_mb": 100.0 + s}) for s in (1, 2, 3)))
    eval_dir(job / "eval_base", before, False)
    eval_dir(job / "eval", after, True)


@pytest.fixture
def sweep(tmp_path):
    root = tmp_path / "sweep"
    ok_job(root, 0, "modelscope_tiny", "modelscope", 0.50, 0.60)
    ok_job(root, 2, "animatediff_tiny", "animatediff", 0.40, 0.30)
    failed = root / "1_cogvideox_tiny_shapes"
    failed.mkdir()
    (failed / "status.json").write_text(json.dumps({"status": "failed", "model": "cogvideox_tiny",
                                                    "dataset": "shapes", "error": "ConfigError: frames not 4k+1\nmore"}))
    (failed / "metrics.jsonl").write_text('{"step": 1, "train/loss": 2.0}\n{"step": 2, "train/lo')  # cut by a kill
    return root


def test_markdown_rows_changes_and_failed_job(sweep):
    write_report(sweep, log_to_wandb=False)
    rows = [line for line in (sweep / "report.md").read_text().splitlines() if line.startswith("| ")]
    assert [r.split(" | ")[0] for r in rows[1:]] == ["| 0_modelscope_tiny_shapes", "| 1_cogvideox_tiny_shapes",
                                                     "| 2_animatediff_tiny_shapes"]
    assert "0.5 → 0.6 (+20.0%)" in rows[1] and "1,000 (1.50%)" in rows[1] and "lora r4" in rows[1]
    assert "0.4 → 0.3 (-25.0%)" in rows[3]
    assert "**FAILED**: ConfigError: frames not 4k+1" in rows[2] and "more" not in rows[2]
    assert "`fvd` not computed: I3D weights not found" in (sweep / "report.md").read_text()


def test_html_pairs_base_and_finetuned_videos_and_plots_are_images(sweep):
    write_report(sweep, log_to_wandb=False)
    page = (sweep / "report.html").read_text()
    assert "<table>" in page and 'class="failed"' in page
    sources = re.findall(r'<video[^>]* src="([^"]+)"', page)
    assert len(sources) == 8  # 2 ok jobs x 2 prompts x (base, fine-tuned)
    assert all((sweep / src).is_file() for src in sources)
    assert any("/eval_base/" in s for s in sources) and any("/eval/" in s for s in sources)
    for name in ("loss_curves.png", "metrics_before_after.png"):
        with Image.open(sweep / name) as image:
            assert image.format == "PNG" and image.size[0] > 100
        assert name in page


def test_report_logs_a_wandb_table_offline(sweep, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    write_report(sweep, log_to_wandb=True)
    runs = list((sweep / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("run-*.wandb"))


def test_cli(sweep, tmp_path):
    out = tmp_path / "elsewhere"
    result = subprocess.run([sys.executable, "-m", "t2v_exp.report", f"sweep_dir={sweep}", f"out_dir={out}",
                             "wandb=false"], cwd=REPO, env={**os.environ}, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (out / "report.md").is_file() and (out / "report.html").is_file()
    missing = subprocess.run([sys.executable, "-m", "t2v_exp.report", f"sweep_dir={tmp_path}/none", "wandb=false"],
                             cwd=REPO, capture_output=True, text=True, timeout=300)
    assert missing.returncode != 0 and "is not a directory" in missing.stderr
