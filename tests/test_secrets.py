"""No credential from the environment ends up in anything a run writes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

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


TYPED = "hf_secretvalue123"  # HF_TOKEN's value, typed into an override as well (finding 3 of issue 14)
KEYED = "k3y-value-only-in-an-override"  # the value of an override whose key looks like a credential
KEYED_ARG = f"+hydra.job.env_set.SERVICE_API_KEY={KEYED}"


def leaks_under(root: Path, secrets: list[str]) -> list[str]:
    """Every file, W&B's .wandb protobufs included, read as bytes."""
    found = []
    for path in (p for p in Path(root).rglob("*") if p.is_file()):
        data = path.read_bytes()
        found += [f"{secret} in {path.relative_to(root)}" for secret in secrets if secret.encode() in data]
    return found


def run_module(module: str, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_TOKEN": TYPED, "WANDB_MODE": "offline"}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_secrets_typed_in_overrides_are_masked_in_hydra_files_and_wandb(tmp_path):
    run_dir = tmp_path / "run"
    result = run_module("t2v_exp.train", "train.max_steps=1", "validation.num_videos=0", f"logger.name=run-{TYPED}",
                        KEYED_ARG, f"hydra.run.dir={run_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    hydra_files = sorted(p.name for p in (run_dir / ".hydra").iterdir())
    assert hydra_files == ["config.yaml", "hydra.yaml", "overrides.yaml"]
    assert "logger.name=run-***" in (run_dir / ".hydra" / "overrides.yaml").read_text()
    assert list(run_dir.glob("wandb/offline-run-*/run-*.wandb"))
    assert not leaks_under(run_dir, [TYPED, KEYED])
    assert TYPED not in result.stdout + result.stderr and KEYED not in result.stdout + result.stderr


@pytest.mark.slow
def test_secrets_are_masked_in_everything_train_evaluate_and_a_sweep_write(tmp_path):
    run_dir, eval_dir, sweep_dir = tmp_path / "run", tmp_path / "eval", tmp_path / "sweep"
    secret_args = [f"logger.name=run-{TYPED}", KEYED_ARG]
    results = [
        run_module("t2v_exp.train", "train.max_steps=2", "validation.num_videos=1", *secret_args,
                   f"hydra.run.dir={run_dir}"),
        run_module("t2v_exp.evaluate", f"run_dir={run_dir}", "metrics=[temporal]", "num_videos=2",
                   f"logger.name=eval-{TYPED}", KEYED_ARG, f"hydra.run.dir={eval_dir}"),
        run_module("t2v_exp.train", "-m", "train.max_steps=1", "validation.num_videos=0", "seed=1,2", *secret_args,
                   f"hydra.sweep.dir={sweep_dir}"),
    ]
    for result in results:
        assert result.returncode == 0, result.stderr[-3000:]
        assert TYPED not in result.stdout + result.stderr and KEYED not in result.stdout + result.stderr
    assert (sweep_dir / "multirun.yaml").is_file() and (sweep_dir / "report.md").is_file()
    for root in (run_dir, sweep_dir, eval_dir):
        assert list(root.rglob("*.wandb")), root
        assert not leaks_under(root, [TYPED, KEYED]), (
            "a leak in evaluate's .hydra/ means conf/evaluate.yaml lacks hydra.callbacks.mask_secrets")
