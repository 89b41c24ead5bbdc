"""What a run continues from, and putting the loop back exactly where that checkpoint left it.

``choose_checkpoints`` picks candidates from ``state.json`` files before any weights load (a run
dir holds one experiment; ``latest``/``auto`` pass over damaged checkpoints and other
experiments'); ``resume`` loads the first intact one into the model, optimizer, scheduler, loss
scaler and RNGs and returns where training stands.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import CheckpointError, ConfigError, UserError
from ..jobs.lock import RunDirLock
from .checkpoint import (
    DamagedCheckpoint,
    TrainState,
    differences,
    list_checkpoints,
    load_checkpoint,
    read_state,
    recover_replaced,
    unusable,
    verify_checkpoint,
)
from .randomness import restore_rng_state

log = logging.getLogger(__name__)


@dataclass
class Restored:
    """Where a run stands after ``resume`` (a fresh run: step 0, nothing resumed)."""

    state: TrainState = field(default_factory=TrainState)
    resumed_from: str | None = None
    changes: list[str] = field(default_factory=list)  # settings changed since the checkpoint
    wandb_run_id: str | None = None


def choose_checkpoints(resume: str | None, run_dir: Path, run_suffix: str, fingerprint: dict) -> list[Path]:
    """Checkpoints to try, best first: ``latest``/``auto`` pass over damaged ones and those of
    other experiments (logged); an explicit path must be intact and compatible. Empty: fresh."""
    guard_own_checkpoints(run_dir, resume, fingerprint)
    if not resume:
        return []
    resume = str(resume)
    search = find_resume_checkpoints(resume, run_dir, run_suffix, fingerprint)
    if search.passed_over:
        log.warning("resume=%s passed over:%s", resume, search.report())
    if search.candidates or resume not in ("latest", "auto"):
        return search.candidates
    if resume == "latest":  # asked to continue: starting from scratch instead would hide the mistake
        raise no_checkpoint_error(resume, run_dir, run_suffix, search)
    log.info("resume=auto: no checkpoint of this experiment to continue; starting fresh in %s", run_dir)
    return []


def guard_own_checkpoints(run_dir: Path, resume: str | None, fingerprint: dict) -> None:
    """A run dir holds one experiment: refuse to write into one that holds another's checkpoints
    (keep_last would delete them, and a later resume would mix the two)."""
    own = list_checkpoints(run_dir / "checkpoints")
    if not own:
        return
    if not resume:
        raise ConfigError(f"{run_dir} already holds checkpoints (newest {own[-1].name}); continue that run "
                          f"with resume=auto, or start this one elsewhere: hydra.run.dir=/path/to/new/run")
    for path in reversed(own):
        try:
            recorded = read_state(path).get("fingerprint")
        except DamagedCheckpoint:
            continue  # a damaged one is skipped (or named) by the resume itself
        differing = differences(recorded, fingerprint) if recorded is not None else []
        if differing:
            raise CheckpointError(
                f"{run_dir} holds checkpoints of another experiment ({path.name} differs: "
                f"{'; '.join(differing)}); training here would overwrite them. Resume with the checkpoint's "
                f"values, or start this run elsewhere: hydra.run.dir=/path/to/new/run")
        return


def resume(candidates: list[Path], *, explicit: bool, model, optimizer, lr_scheduler, scaler, optimizer_cfg,
           flat_settings: dict) -> Restored:
    """Load the first intact candidate into the training objects (an explicit ``resume=PATH``, or the
    last candidate, that is damaged raises naming the previous valid one)."""
    for i, path in enumerate(candidates):
        try:
            loaded = load_checkpoint(path)
        except DamagedCheckpoint as damage:
            if explicit or i == len(candidates) - 1:
                raise unusable(damage) from None
            log.warning("Skipping damaged checkpoint %s; trying %s", damage, candidates[i + 1])
            continue
        return _restore(loaded, model=model, optimizer=optimizer, lr_scheduler=lr_scheduler, scaler=scaler,
                        optimizer_cfg=optimizer_cfg, flat_settings=flat_settings)
    return Restored()


def _restore(loaded, *, model, optimizer, lr_scheduler, scaler, optimizer_cfg, flat_settings: dict) -> Restored:
    path = loaded.path
    try:
        model.load_trainable_state_dict(loaded.trainable)
        optimizer.load_state_dict(loaded.optimizer)
    except (KeyError, RuntimeError, ValueError) as exc:  # only reachable for checkpoints without a fingerprint
        raise CheckpointError(
            f"{path / 'trainable.safetensors'} does not fit {model.cfg.name} with these model.lora / "
            f"model.finetune settings ({type(exc).__name__}: {exc}); resume with the settings it was trained with"
        ) from None
    lr_scheduler.load_state_dict(loaded.scheduler)
    if loaded.scaler and scaler is not None:
        scaler.load_state_dict(loaded.scaler)
    apply_optimizer_settings(lr_scheduler, optimizer_cfg)
    try:
        restore_rng_state(loaded.rng_meta, loaded.rng_tensors)
    except (ValueError, TypeError, RuntimeError) as exc:
        raise unusable(DamagedCheckpoint(path, "rng.json", f"RNG state not restorable ({exc})")) from None
    restored = Restored(state=loaded.state, resumed_from=str(path),
                        changes=differences(loaded.raw_state.get("settings", {}), flat_settings),
                        wandb_run_id=loaded.raw_state.get("wandb_run_id"))
    log.info("Resumed from %s at step %d", path, restored.state.step)
    if restored.changes:
        log.info("Settings changed since that checkpoint (allowed: its fingerprint matches; optimizer "
                 "hyper-parameters and the LR schedule apply from step %d):%s", restored.state.step,
                 "".join(f"\n  {line}" for line in restored.changes))
    return restored


def apply_optimizer_settings(scheduler, opt) -> None:
    """Resume applies the current optimizer.lr / weight_decay / betas / eps (the saved state
    would restore the old ones): lowering the LR to continue a run that diverged is a common
    fix, and ignoring the value the user typed was finding 2 of issue 14. The LR schedule
    keeps its position (warmup/decay continue from the checkpoint's step) at the new base LR.
    The optimizer's moments stay; the optimizer class is part of the fingerprint."""
    values = {"weight_decay": float(opt.weight_decay), "betas": tuple(float(b) for b in opt.betas),
              "eps": float(opt.eps)}
    scheduler.base_lrs = [float(opt.lr)] * len(scheduler.optimizer.param_groups)
    for group, base, multiplier in zip(scheduler.optimizer.param_groups, scheduler.base_lrs,
                                       scheduler.lr_lambdas, strict=True):
        group.update({k: v for k, v in values.items() if k in group})
        group["initial_lr"] = base
        # What LambdaLR computes for this step; unchanged settings give the saved value exactly.
        group["lr"] = base * multiplier(scheduler.last_epoch)
    scheduler._last_lr = [group["lr"] for group in scheduler.optimizer.param_groups]


def bring_base_evaluation(source_run: Path, run_dir: Path) -> None:
    """A run resumed from another run dir's checkpoint does not score the base model again (it
    is past step 0): copy that run's ``eval_base/`` so the closing comparison still has it."""
    source, target = source_run / "eval_base", run_dir / "eval_base"
    if source_run.resolve() == run_dir.resolve() or target.exists():
        return
    if source.is_dir():
        shutil.copytree(source, target, symlinks=True)
        log.info("Base model's evaluation copied from %s (the resumed run does not redo it)", source)


# -- choosing what to resume -----------------------------------------------------------------------


@dataclass
class ResumeSearch:
    """Usable checkpoints, best first, and the ones passed over with the reason."""

    candidates: list[Path]
    passed_over: list[str]

    def report(self) -> str:
        return "".join(f"\n  - {line}" for line in self.passed_over)


def find_resume_checkpoints(resume: str, run_dir: Path, run_suffix: str,
                            expected: dict | None = None) -> ResumeSearch:
    """``latest``/``auto``: intact, compatible checkpoints, newest first, of this run dir and then
    of earlier runs of the same model and dataset (``..._<model>_<dataset>``, newest first; runs
    another process is still training are skipped). An explicit checkpoint or run directory must
    be intact and compatible, or this raises naming the bad file or each differing key."""
    if resume in ("latest", "auto"):
        return _search_runs(run_dir, run_suffix, expected)
    path = Path(resume).expanduser()
    if not (path / "state.json").is_file():
        found = list_checkpoints(path / "checkpoints")
        if not found:
            raise FileNotFoundError(f"resume={resume}: no complete checkpoint there (expected a checkpoint-NNNNNN "
                                    f"directory or a run directory containing checkpoints/)")
        path = found[-1]
    try:
        state = verify_checkpoint(path)
    except DamagedCheckpoint as damage:
        raise unusable(damage) from None
    if expected is not None and state.get("fingerprint") is None:
        log.warning("resume=%s: %s records no fingerprint (an older t2v_exp wrote it); resuming without "
                    "checking that it belongs to this experiment", resume, path)
        return ResumeSearch([path], [])
    differing = differences(state["fingerprint"], expected) if expected is not None else []
    if differing:
        raise CheckpointError(
            f"resume={resume}: {path} belongs to another experiment; these settings differ (checkpoint -> now):"
            + "".join(f"\n  {line}" for line in differing)
            + "\nResume with the checkpoint's values, or start a new run without resume= (or in another "
              "hydra.run.dir)."
        )
    return ResumeSearch([path], [])


def _search_runs(run_dir: Path, run_suffix: str, expected: dict | None) -> ResumeSearch:
    search = ResumeSearch([], [])
    runs = [run_dir] + sorted((d for d in run_dir.parent.glob(f"*{run_suffix}") if d != run_dir and d.is_dir()),
                              key=lambda d: d.stat().st_mtime, reverse=True)
    free = []
    for run in runs:
        holder = RunDirLock.holder(run) if run != run_dir else None
        if holder is not None:
            search.passed_over.append(f"{run}: another process (pid {holder}) is training it now")
        else:
            free.append(run)
    return compatible_checkpoints(free, expected, search)


def compatible_checkpoints(runs: list[Path], expected: dict | None,
                           search: ResumeSearch | None = None) -> ResumeSearch:
    """Intact checkpoints of ``runs`` (in that order, newest first within each) whose fingerprint
    equals ``expected``; the others are listed as passed over, with the reason."""
    search = search or ResumeSearch([], [])
    for run in runs:
        recover_replaced(run / "checkpoints")
        for path in reversed(list_checkpoints(run / "checkpoints")):
            try:
                state = verify_checkpoint(path)
            except DamagedCheckpoint as damage:
                log.warning("Skipping damaged checkpoint %s", damage)
                search.passed_over.append(f"{path}: damaged ({damage.file}: {damage.reason})")
                continue
            if expected is not None and state.get("fingerprint") is None:
                search.passed_over.append(f"{path}: records no fingerprint (an older t2v_exp wrote it); "
                                          f"resume={path} uses it anyway")
                continue
            differing = differences(state["fingerprint"], expected) if expected is not None else []
            if differing:
                search.passed_over.append(f"{path}: another experiment ({'; '.join(differing)})")
                continue
            search.candidates.append(path)
    return search


class NoCheckpointError(UserError, FileNotFoundError):
    """``resume=latest`` found nothing this experiment can continue from."""


def no_checkpoint_error(resume: str, run_dir: Path, run_suffix: str, search: ResumeSearch) -> NoCheckpointError:
    passed = f" Passed over:{search.report()}\n" if search.passed_over else " "
    return NoCheckpointError(
        f"resume={resume}: no complete checkpoint of this experiment in {run_dir} nor in earlier runs matching "
        f"'{run_dir.parent}/*{run_suffix}'.{passed}Pass resume=/path/to/run_dir or a checkpoint directory, or "
        f"resume=auto, which starts fresh when there is nothing to continue (e.g. in a requeue script)."
    )


def find_resume_checkpoint(resume: str, run_dir: Path, run_suffix: str, expected: dict | None = None) -> Path:
    """The best checkpoint :func:`find_resume_checkpoints` finds; raises when there is none."""
    search = find_resume_checkpoints(resume, run_dir, run_suffix, expected)
    if not search.candidates:
        raise no_checkpoint_error(resume, run_dir, run_suffix, search)
    return search.candidates[0]
