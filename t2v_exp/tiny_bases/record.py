"""Turn a finished pretraining run into a committed tiny base: float16 weights plus record.json.

    python -m t2v_exp.tiny_bases record outputs/runs/<pretrain run>

The run must be a full fine-tune that started from a random twin (``tiny:<twin>@random``) and
ended with an evaluation (``train.evaluate_at_end=true``): its oracle scores go into the record.
Components the run did not train (VAE, text encoder) are taken from the twin it started from, so
the bundle is the whole model the scores were measured on.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

from ..errors import ConfigError
from . import BUNDLE_ROOT, RANDOM_SUFFIX, component_dir

TINY_PREFIX = "tiny:"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def machine() -> dict:
    import diffusers  # deferred: diffusers; the tiny_bases list command imports this module
    import torch  # deferred: torch; the tiny_bases list command imports this module

    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "torch": torch.__version__, "diffusers": diffusers.__version__}


def oracle_scores(run_dir: Path, metrics: Path | None = None) -> dict:
    metrics = metrics or run_dir / "eval" / "metrics.json"
    if not metrics.is_file():
        raise ConfigError(f"{run_dir} has no eval/metrics.json: pretrain with train.evaluate_at_end=true")
    report = json.loads(metrics.read_text())
    oracle = report.get("summary", {}).get("shapes_oracle")
    if not oracle:
        raise ConfigError(f"{metrics} has no shapes_oracle scores: evaluate with evaluation.metrics=[shapes_oracle]")
    keep = ("value", "ci_low", "ci_high", "n", "n_prompts", "confidence", "method")
    return {"scores": {name: {k: stat.get(k) for k in keep} for name, stat in oracle.items()},
            "num_videos": report.get("num_videos"), "seeds_per_prompt": report.get("seeds_per_prompt"),
            "num_inference_steps": report.get("num_inference_steps"), "guidance_scale": report.get("guidance_scale"),
            "split": "validation (clips generated with a held-out seed)"}


def rescore(twin: str, out_root: Path = BUNDLE_ROOT, work_dir: Path | None = None) -> dict:
    """Score a committed base again with today's shapes oracle and intervals, the way its record
    was scored (held-out clips of its domain, its sampler settings), and rewrite the record's
    ``oracle`` (weights and digests untouched). Returns the new oracle entry."""
    path = out_root / twin / "record.json"
    rec = json.loads(path.read_text())
    old = rec["oracle"]
    with tempfile.TemporaryDirectory(prefix=f"rescore_{twin}_", dir=work_dir) as tmp:
        command = [sys.executable, "-m", "t2v_exp.evaluate", f"model={rec['model']}", f"dataset.domain={rec['domain']}",
                   "metrics=[shapes_oracle]", f"num_videos={old['num_videos']}", "seeds_per_prompt=1",
                   f"num_inference_steps={old['num_inference_steps']}", f"guidance_scale={old['guidance_scale']}",
                   "logger=none", f"hydra.run.dir={tmp}"]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"rescoring {twin} failed:\n{done.stderr[-3000:]}")
        rec["oracle"] = {**oracle_scores(Path(tmp), Path(tmp) / "metrics.json"),
                         "command": " ".join(["python -m t2v_exp.evaluate", *command[3:-2]])}
    path.write_text(json.dumps(rec, indent=2) + "\n")
    return rec["oracle"]


def twin_components(twin_root: Path, twin: str) -> list[str]:
    """The twin's weight-holding subfolders; weights at its root (a MotionAdapter) are component ``twin``."""
    components = {p.parent.name for p in twin_root.glob("*/*.safetensors")}
    if any(twin_root.glob("*.safetensors")):
        components.add(twin)
    return sorted(components)


def pretrained_twins(cfg, run_dir: Path) -> dict[str, Path]:
    """{twin: its random twin's directory} for every checkpoint the run started from (AnimateDiff: two)."""
    # deferred: hydra; the tiny_bases list command imports this module
    from hydra.utils import get_class

    from ..models.spec import spec_for  # the model families (torch) only when recording

    keys = spec_for(cfg.model).checkpoint_keys
    roots = get_class(cfg.model._target_).resolve(cfg.model, cfg.paths.cache_dir)
    roots = (roots,) if isinstance(roots, str) else tuple(roots)
    twins = {}
    for key, root in zip(keys, roots, strict=True):
        spec = str(cfg.model[key])
        if not (spec.startswith(TINY_PREFIX) and spec.endswith(RANDOM_SUFFIX)):
            raise ConfigError(f"{run_dir} trained from model.{key}={spec}: a base is pretrained from "
                              f"tiny:<twin>{RANDOM_SUFFIX}")
        twins[spec[len(TINY_PREFIX): -len(RANDOM_SUFFIX)]] = Path(root)
    return twins


def record(run_dir: str | os.PathLike, out_root: Path = BUNDLE_ROOT) -> list[Path]:
    """Write ``out_root/<twin>/`` for each twin pretraining run ``run_dir`` trained; returns those directories."""
    # deferred: omegaconf; the tiny_bases list command imports this module
    from omegaconf import OmegaConf

    run_dir = Path(run_dir)
    cfg = OmegaConf.load(run_dir / "config.yaml")
    if cfg.model.finetune != "full":
        raise ConfigError(f"{run_dir} is a {cfg.model.finetune} fine-tune: a base is pretrained with model.finetune=full")
    twins = pretrained_twins(cfg, run_dir)
    status = json.loads((run_dir / "status.json").read_text())
    if status.get("status") != "ok":
        raise ConfigError(f"{run_dir} did not finish (status {status.get('status')})")
    summary = json.loads((run_dir / "summary.json").read_text())
    trained = Path(summary["final_dir"])
    overrides = OmegaConf.load(run_dir / ".hydra" / "overrides.yaml")
    recipe_overrides = [o for o in overrides if not str(o).startswith(("hydra.", "logger="))]
    shared = {
        "family": str(cfg.model.family),
        "model": str(cfg.model.name),
        "recipe": " ".join(["python -m t2v_exp.train", *map(str, recipe_overrides)]),
        "steps": summary["step"],
        "samples_seen": summary.get("samples_seen"),
        "final_loss": summary.get("final_loss"),
        "wall_time_s": round(status["wall_time_s"], 1),
        "machine": machine(),
        "domain": str(cfg.dataset.domain),
        "oracle": oracle_scores(run_dir),
        "dtype": "float16 (trained in float32)",
    }
    written = []
    for twin, twin_root in twins.items():
        components = twin_components(twin_root, twin)
        sources = {c: trained / c if (trained / c).is_dir() else component_dir(twin_root, c, twin) for c in components}
        out = out_root / twin
        files = write_bundle(out, sources)
        rec = {"twin": twin, **shared,
               "trained_with": sorted(set(twins) - {twin}),  # bases trained together score together
               "components": {c: ("trained" if (trained / c).is_dir() else "as in the twin it started from (not trained)")
                              for c in components},
               **file_fields(files)}
        (out / "record.json").write_text(json.dumps(rec, indent=2) + "\n")
        written.append(out)
    return written


def write_bundle(out: Path, sources: dict[str, Path]) -> dict[str, str]:
    """``out/<component>.safetensors`` (float16) and ``.config.json`` from each source dir; their sha256s."""
    import torch  # deferred: torch; the tiny_bases list command imports this module
    from safetensors.torch import load_file, save_file  # deferred: safetensors.torch, as above

    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob("*"):
        stale.unlink()
    files = {}
    for component, source in sources.items():
        (weights,) = sorted(source.glob("*.safetensors"))
        tensors = {k: v.to(torch.float16) if v.is_floating_point() else v for k, v in load_file(weights).items()}
        target = out / f"{component}.safetensors"
        save_file(tensors, str(target), metadata={"format": "pt"})
        config = json.loads((source / "config.json").read_text())
        config.pop("_name_or_path", None)  # the recording machine's cache path: not part of the base
        (out / f"{component}.config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        files[target.name] = sha256(target)
        files[f"{component}.config.json"] = sha256(out / f"{component}.config.json")
    return files


def file_fields(files: dict[str, str]) -> dict:
    return {"files": files, "recorded": dt.date.today().isoformat(),
            "bundle_sha256": hashlib.sha256("".join(f"{k}:{v}" for k, v in sorted(files.items())).encode()).hexdigest()}


def record_vae(name: str, out_root: Path = BUNDLE_ROOT) -> Path:
    """Fit shared VAE ``name`` afresh (never from an earlier bundle) and commit it with its fit figures.
    The shared VAEs are the ones the families declare (``FamilySpec.fitted_vaes``); committed so no
    machine fits them."""
    from ..models.registry import fitted_vaes  # the model families (torch) only when recording

    builders = fitted_vaes()
    if name not in builders:
        raise ConfigError(f"unknown fitted VAE '{name}'; valid: {sorted(builders)}")
    builder = builders[name]
    with tempfile.TemporaryDirectory(prefix=f"t2v_fit_{name}_") as staging:
        fitted = Path(staging)
        builder(fitted)
        fit = json.loads((fitted / "fit.json").read_text())
        out = out_root / name
        files = write_bundle(out, {"vae": fitted / "vae"})
    rec = {"twin": name, "kind": "fitted VAE (shared by the tiny twins)",
           "recipe": f"python -m t2v_exp.tiny_bases record-vae {name}", "fit": fit, "machine": machine(),
           "dtype": "float16 (fitted in float32)", **file_fields(files)}
    (out / "record.json").write_text(json.dumps(rec, indent=2) + "\n")
    return out
