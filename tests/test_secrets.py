"""No credential from the environment ends up in anything a run writes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from .conftest import REPO

SECRETS = {
    "WANDB_API_KEY": "wandbkey-0123456789abcdef0123456789abcdef01234567",
    "HF_TOKEN": "hf_SECRETtokenVALUE1234567890",
    "MY_SERVICE_SECRET": "svc-secret-value-987654",
    "CUSTOM_ACCESS_KEY": "custom-key-value-24680",
}


def test_secrets_never_written_by_a_run(tmp_path):
    run_dir = tmp_path / "run"
    # The secret also reaches the config through an interpolation, the way a careless user might.
    env = {**os.environ, **SECRETS, "WANDB_MODE": "offline"}
    result = subprocess.run(
        [sys.executable, "-m", "t2v_exp.train", "train.max_steps=2", "validation.num_videos=1",
         "+logger.tags=[${oc.env:HF_TOKEN}]", f"hydra.run.dir={run_dir}"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    written = [p for p in Path(run_dir).rglob("*") if p.is_file()]
    assert any(p.name == "metrics.jsonl" for p in written) and any(p.suffix == ".wandb" for p in written)
    leaks = []
    for path in written:
        data = path.read_bytes()
        leaks += [f"{name} in {path.relative_to(run_dir)}" for name, value in SECRETS.items() if value.encode() in data]
    assert not leaks, leaks
    assert SECRETS["HF_TOKEN"] not in result.stdout + result.stderr
