"""The generic training loop. It knows the VideoModel protocol and nothing about any family."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import resource
import shutil
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from .. import config as config_schema
from ..config import LatentSampling
from ..errors import CheckpointError, ConfigError
from ..models import resolve_and_validate
from ..models.common import TruncatedPrompts, mixed_precision_dtype, sample_posterior
from .batches import BatchStream, DataPosition, instantiate_dataset
from .checkpoint import (
    DamagedCheckpoint,
    RunDirLock,
    TrainState,
    differences,
    find_resume_checkpoints,
    fingerprint,
    flat_settings,
    list_checkpoints,
    load_checkpoint,
    no_checkpoint_error,
    read_state,
    restore_rng_state,
    save_checkpoint,
    unusable,
)
from .optim import build_lr_scheduler
from .tracking import Tracker, redact
from .validation import generate_samples, validation_prompts

log = logging.getLogger(__name__)


def sample_generators(seed: int, step: int, keys: list[str]) -> list[torch.Generator]:
    """One generator per sample from (seed, step, sample key): timesteps, noise and caption
    dropout then depend neither on RNG state nor on how the global batch is split over
    processes or accumulation steps."""
    generators = []
    for key in keys:
        key_hash = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little")
        state = np.random.SeedSequence([seed, step, key_hash]).generate_state(2, dtype=np.uint32)
        generators.append(torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1])))
    return generators


def dropout_seed(seed: int, step: int, micro: int, process: int) -> int:
    """The global-RNG seed for one micro-batch's forward/backward. Dropout inside the denoiser
    (UNet3D's temporal convs use p=0.1) draws from the global RNG; seeding it from the run's
    position makes a resumed run draw the same masks as the uninterrupted one, whatever ran in
    between (validation, evaluation, a checkpoint load)."""
    state = np.random.SeedSequence([seed, step, micro, process, 0xD40]).generate_state(2, dtype=np.uint32)
    return int(state[0]) << 32 | int(state[1])


@contextlib.contextmanager
def seeded_global_rng(seed: int, device: torch.device):
    """Run a block on a global RNG seeded with `seed`, leaving the caller's RNG state untouched."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        yield


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss_kb / (2**20 if sys.platform == "darwin" else 2**10)


def apply_caption_dropout(prompts: list[str], probability: float, generators: list[torch.Generator]) -> list[str]:
    if probability <= 0:
        return prompts
    drop = [torch.rand(1, generator=g).item() < probability for g in generators]
    return ["" if d else p for p, d in zip(prompts, drop, strict=True)]


def objective_label(model) -> str | None:
    """What the training loss measures, for the report: losses of different objectives are not comparable."""
    experts = getattr(model, "objectives", None)  # Wan 2.2: one objective per expert
    if isinstance(experts, dict) and experts:
        labels = sorted({getattr(o, "label", None) for o in experts.values()} - {None})
        if labels:
            return f"{', '.join(labels)} ({len(experts)} experts)"
    objective = getattr(model, "objective", None)
    label = getattr(objective, "label", None)
    if isinstance(label, str):
        return label
    return "flow matching" if callable(objective) else None  # LTX builds its objective per token count


def objective_value(objective: str, summary: dict, eval_report: dict | None) -> float | None:
    """``final_loss`` or ``<metric>/<score>`` of the end-of-training evaluation."""
    if objective == "final_loss":
        return summary.get("final_loss")
    metric, _, score = objective.partition("/")
    entry = (eval_report or {}).get("metrics", {}).get(metric, {})
    if entry.get("status") != "ok" or score not in entry:
        raise ValueError(f"train.objective={objective}: no such score in the end-of-training evaluation "
                         f"(set train.evaluate_at_end=true and include '{metric}' in evaluation.metrics)")
    return float(entry[score])


def require_writable(run_dir: Path) -> None:
    """Fail in the first second, not at the first checkpoint an hour later."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / f".write-test-{os.getpid()}"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"The run directory {run_dir} is not writable ({exc.strerror}); "
                          f"choose another with hydra.run.dir=/path/with/space") from exc


@contextlib.contextmanager
def stop_signals():
    """Record SIGTERM/SIGINT (cluster preemption, Ctrl-C) instead of dying mid-step.

    Yields a list that receives the signal number; the loop checks it after each step, saves a
    checkpoint and stops. A second signal while saving falls back to the default behaviour.
    """
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return

    def handler(signum, _frame):
        received.append(signum)
        signal.signal(signum, previous[signum])

    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    for sig in previous:
        signal.signal(sig, handler)
    try:
        yield received
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def reset_single_process_accelerate_state() -> None:
    """Let a second job in the same process choose its own precision.

    accelerate keeps one AcceleratorState per process and refuses a different mixed precision
    later (in-process sweeps, notebooks, tests). Outside a distributed launch nothing else
    depends on that state, so it is safe to drop; under ``accelerate launch`` it is left alone.
    """
    from accelerate.state import AcceleratorState, GradientState, PartialState

    if PartialState._shared_state and PartialState().num_processes == 1:
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()


def validate_buckets(cfg: DictConfig, model_cls, roots) -> None:
    """Every ``dataset.buckets`` shape must be one the model takes, checked like model.num_frames/height/width."""
    from ..data.buckets import parse_buckets

    buckets = cfg.dataset.get("buckets")
    if buckets is None:
        return
    try:
        parsed = parse_buckets(OmegaConf.to_container(buckets))
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    for i, (frames, height, width) in enumerate(parsed):
        shaped = OmegaConf.merge(cfg.model, {"num_frames": frames, "height": height, "width": width})
        try:
            model_cls.validate(shaped, roots)
        except ConfigError as exc:
            raise ConfigError(f"dataset.buckets[{i}]=[{frames}, {height}, {width}] does not suit {cfg.model.name}: "
                              f"{exc}") from None


class TrainingInterrupted(KeyboardInterrupt):
    """SIGTERM/SIGINT arrived; a checkpoint of the last completed step was saved first."""

    def __init__(self, signum: int, checkpoint):
        super().__init__(f"stopped by signal {signum}; checkpoint {checkpoint}")
        self.signum = signum
        self.checkpoint = checkpoint


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written (disk full, permissions); earlier ones are untouched."""


class NonFiniteLossError(RuntimeError):
    """Training produced too many non-finite losses or gradients in a row."""


@dataclass(frozen=True)
class StepSettings:
    """The config values read on every step, as plain Python. Reading a DictConfig node costs
    ~13 µs, which added up to ~0.2 ms a step: 1-2 % of a tiny model's step (bench/bench_overhead.py)."""

    seed: int
    caption_dropout: float
    max_grad_norm: float  # inf: no clipping
    accumulation: int
    max_steps: int
    log_every: int
    checkpoint_every: int
    validate_every: int
    latent_sampling: LatentSampling

    @classmethod
    def from_config(cls, cfg: DictConfig) -> StepSettings:
        train = cfg.train
        return cls(seed=int(cfg.seed), caption_dropout=float(cfg.model.caption_dropout),
                   max_grad_norm=float(train.max_grad_norm) if train.max_grad_norm > 0 else math.inf,
                   accumulation=int(cfg.gpu.gradient_accumulation_steps), max_steps=int(train.max_steps),
                   log_every=int(train.log_every), checkpoint_every=int(train.checkpoint_every or 0),
                   validate_every=int(train.validate_every or 0),
                   latent_sampling=LatentSampling(config_schema.enum_value(cfg.model.latent_sampling)))


def refuse_with_text_encoder_lora(cfg: DictConfig, num_processes: int) -> None:
    """What model.text_encoder_lora cannot be combined with (yet), before anything is encoded."""
    if str(cfg.dataset.get("cache", "none")) == "latents":
        raise ConfigError("model.text_encoder_lora=true trains the text encoder, so prompt embeddings cannot be "
                          "cached: use dataset.cache=none (or model.text_encoder_lora=false)")
    if num_processes > 1:
        raise ConfigError("model.text_encoder_lora=true runs in one process only: the text encoder is not wrapped "
                          "for gradient averaging across processes; drop it or train on one GPU")


class Trainer:
    def __init__(self, cfg: DictConfig, run_dir: Path, lock: RunDirLock | None = None):
        """``lock``: the caller already holds ``run_dir``'s lock (the CLI takes it before writing
        status.json); otherwise ``setup`` takes it and ``close`` releases it."""
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.ckpt_root = self.run_dir / "checkpoints"
        self.grad_norm = float("nan")  # of the last applied update
        self.update_skipped = False
        self.nonfinite_in_a_row = 0
        self.trains_text_encoder = False  # setup() sets it from the model (model.text_encoder_lora)
        self.lock = lock
        self._own_lock: RunDirLock | None = None

    # -- setup --------------------------------------------------------------------------------
    def setup(self) -> None:
        from accelerate import Accelerator
        from accelerate.utils import set_seed

        cfg = self.cfg
        config_schema.validate(cfg)
        lr_warning = config_schema.full_finetune_lr_warning(cfg)
        if lr_warning:
            log.warning("%s", lr_warning)
        self.settings = StepSettings.from_config(cfg)
        require_writable(self.run_dir)
        if self.lock is None and int(os.environ.get("RANK", "0")) == 0:  # the ranks share rank 0's dir
            self.lock = self._own_lock = RunDirLock(self.run_dir).acquire()
        # Locate the checkpoint and check geometry from JSON configs before any weights load.
        mixed = str(config_schema.enum_value(cfg.precision.mixed_precision))
        model_cls, roots = resolve_and_validate(cfg.model, cfg.paths.cache_dir, mixed)
        validate_buckets(cfg, model_cls, roots)
        device = config_schema.resolve_device(cfg.gpu.device, torch.cuda.is_available())
        reset_single_process_accelerate_state()
        self.accelerator = Accelerator(
            mixed_precision=mixed, gradient_accumulation_steps=cfg.gpu.gradient_accumulation_steps,
            cpu=device == "cpu", project_dir=str(self.run_dir),
        )
        if device == "cuda" and cfg.precision.allow_tf32:
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        set_seed(cfg.seed)
        self.is_main = self.accelerator.is_main_process
        self.fingerprint = fingerprint(cfg, self.accelerator.num_processes)
        self.flat_settings = flat_settings(cfg)
        # Which checkpoint to continue, chosen from state.json files before any weights load.
        resume_from = self._resume_candidates(cfg.resume)
        self.dataset = instantiate_dataset(cfg.dataset, split="train", report_dir=str(self.run_dir))
        self.model = model_cls(cfg.model, roots)
        self.model.enable_memory_savers(
            gradient_checkpointing=cfg.gpu.gradient_checkpointing, vae_slicing=cfg.gpu.vae_slicing,
            vae_tiling=cfg.gpu.vae_tiling,
        )
        self.weight_dtype = mixed_precision_dtype(mixed)
        frozen_device = "cpu" if cfg.gpu.cpu_offload else None
        self.model.place(self.accelerator.device, self.weight_dtype, frozen_device)
        self.trains_text_encoder = bool(getattr(self.model, "text_encoder_lora", None))
        if self.trains_text_encoder:
            refuse_with_text_encoder_lora(cfg, self.accelerator.num_processes)
        self.cache = None
        if str(cfg.dataset.get("cache", "none")) == "latents":
            self._use_latent_cache()
        counts = self.model.parameter_counts()
        self.param_counts = {**counts, "trainable_pct": 100.0 * counts["trainable"] / max(1, counts["total"])}
        log.info("Parameters: %s trainable of %s total (%.3f%%)", f"{counts['trainable']:,}",
                 f"{counts['total']:,}", self.param_counts["trainable_pct"])
        params = self.model.trainable_parameters()
        self.optimizer = instantiate(cfg.optimizer, params=params, _convert_="all")
        self.lr_scheduler = build_lr_scheduler(
            self.optimizer, schedule=str(getattr(cfg.train.lr_schedule, "value", cfg.train.lr_schedule)),
            warmup_steps=cfg.train.warmup_steps, max_steps=cfg.train.max_steps,
        )
        self.model.denoiser, self.optimizer = self.accelerator.prepare(self.model.denoiser, self.optimizer)
        self.trainable = self.model.trainable_parameters()  # fixed from here on; listing it costs ~1 ms
        self.state = TrainState()
        self.resumed_from = None
        self.resume_changes: list[str] = []
        self.wandb_run_id = None
        if resume_from:
            self._resume(resume_from, explicit=str(cfg.resume) not in ("latest", "auto"))
        self.batches = BatchStream(
            self.dataset, batch_size=cfg.gpu.batch_size, seed=cfg.seed, rank=self.accelerator.process_index,
            world_size=self.accelerator.num_processes, num_workers=cfg.gpu.num_workers,
            pin_memory=cfg.gpu.pin_memory, start=DataPosition(self.state.epoch, self.state.batch_in_epoch),
        )
        container = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
        if self.is_main:  # the resolved config, read back by `t2v_exp.evaluate run_dir=...`
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "config.yaml").write_text(OmegaConf.to_yaml(redact(container)))
        self.tracker = Tracker(self.run_dir, logger_cfg=cfg.logger, config=container, enabled=self.is_main,
                               extra_tags=[cfg.model.name, cfg.dataset.name], run_id=self.wandb_run_id)
        if self.tracker.run is not None:  # recorded in every checkpoint: a resume continues this W&B run
            self.wandb_run_id = self.tracker.run.id
        self.tracker.summary({"params/" + k: v for k, v in self.param_counts.items()})

    def _use_latent_cache(self) -> None:
        """Encode (or reuse) every clip and prompt once, then train from the cache with the VAE
        and text encoder off the accelerator."""
        from .latent_cache import CachedLatents, LatentCache, cached_prompts

        root = Path(self.cfg.paths.cache_dir) / "latent_cache"
        dataset_cfg = OmegaConf.to_container(self.cfg.dataset, resolve=True)
        self.cache = LatentCache(root, self.model, dataset_cfg,
                                 posteriors=self.settings.latent_sampling == LatentSampling.sample)
        if self.is_main:
            self.cache.build(self.dataset, cached_prompts(self.dataset), device=self.accelerator.device)
        self.accelerator.wait_for_everyone()
        if not self.is_main:  # other ranks read what rank 0 wrote
            self.cache.build(self.dataset, cached_prompts(self.dataset), device=self.accelerator.device)
        self.dataset = CachedLatents(self.dataset, self.cache, self.cfg.seed)
        self._offload_frozen(True)

    def _offload_frozen(self, offload: bool) -> None:
        if self.cache is None or self.cfg.gpu.cpu_offload:
            return
        target = torch.device("cpu") if offload else self.accelerator.device
        for module in (self.model.vae, self.model.text_encoder):
            module.to(target)
        if offload and torch.cuda.is_available():
            torch.cuda.empty_cache()

    # -- resume ---------------------------------------------------------------------------------
    def _resume_candidates(self, resume: str | None) -> list[Path]:
        """Checkpoints to try, best first: ``latest``/``auto`` pass over damaged ones and those of
        other experiments (logged); an explicit path must be intact and compatible. Empty: fresh."""
        self._guard_own_checkpoints(resume)
        if not resume:
            return []
        resume = str(resume)
        suffix = f"_{self.cfg.model.name}_{self.cfg.dataset.name}"
        search = find_resume_checkpoints(resume, self.run_dir, suffix, self.fingerprint)
        if search.passed_over:
            log.warning("resume=%s passed over:%s", resume, search.report())
        if search.candidates or resume not in ("latest", "auto"):
            return search.candidates
        if resume == "latest":  # asked to continue: starting from scratch instead would hide the mistake
            raise no_checkpoint_error(resume, self.run_dir, suffix, search)
        log.info("resume=auto: no checkpoint of this experiment to continue; starting fresh in %s", self.run_dir)
        return []

    def _guard_own_checkpoints(self, resume: str | None) -> None:
        """A run dir holds one experiment: refuse to write into one that holds another's checkpoints
        (keep_last would delete them, and a later resume would mix the two)."""
        own = list_checkpoints(self.ckpt_root)
        if not own:
            return
        if not resume:
            raise ConfigError(f"{self.run_dir} already holds checkpoints (newest {own[-1].name}); continue that run "
                              f"with resume=auto, or start this one elsewhere: hydra.run.dir=/path/to/new/run")
        for path in reversed(own):
            try:
                recorded = read_state(path).get("fingerprint")
            except DamagedCheckpoint:
                continue  # a damaged one is skipped (or named) by the resume itself
            differing = differences(recorded, self.fingerprint) if recorded is not None else []
            if differing:
                raise CheckpointError(
                    f"{self.run_dir} holds checkpoints of another experiment ({path.name} differs: "
                    f"{'; '.join(differing)}); training here would overwrite them. Resume with the checkpoint's "
                    f"values, or start this run elsewhere: hydra.run.dir=/path/to/new/run")
            return

    def _resume(self, candidates: list[Path], *, explicit: bool) -> None:
        for i, path in enumerate(candidates):
            try:
                loaded = load_checkpoint(path)
            except DamagedCheckpoint as damage:
                if explicit or i == len(candidates) - 1:
                    raise unusable(damage) from None
                log.warning("Skipping damaged checkpoint %s; trying %s", damage, candidates[i + 1])
                continue
            self._restore(loaded)
            return

    def _restore(self, loaded) -> None:
        path = loaded.path
        try:
            self.model.load_trainable_state_dict(loaded.trainable)
            self.optimizer.load_state_dict(loaded.optimizer)
        except (KeyError, RuntimeError, ValueError) as exc:  # only reachable for checkpoints without a fingerprint
            raise CheckpointError(
                f"{path / 'trainable.safetensors'} does not fit {self.cfg.model.name} with these model.lora / "
                f"model.finetune settings ({type(exc).__name__}: {exc}); resume with the settings it was trained with"
            ) from None
        self.lr_scheduler.load_state_dict(loaded.scheduler)
        if loaded.scaler and self.accelerator.scaler is not None:
            self.accelerator.scaler.load_state_dict(loaded.scaler)
        self._apply_optimizer_settings()
        try:
            restore_rng_state(loaded.rng_meta, loaded.rng_tensors)
        except (ValueError, TypeError, RuntimeError) as exc:
            raise unusable(DamagedCheckpoint(path, "rng.json", f"RNG state not restorable ({exc})")) from None
        self.state = loaded.state
        self.resumed_from = str(path)
        self._bring_base_evaluation(path.parent.parent)
        self.wandb_run_id = loaded.raw_state.get("wandb_run_id")
        self.resume_changes = differences(loaded.raw_state.get("settings", {}), self.flat_settings)
        log.info("Resumed from %s at step %d", path, self.state.step)
        if self.resume_changes:
            log.info("Settings changed since that checkpoint (allowed: its fingerprint matches; optimizer "
                     "hyper-parameters and the LR schedule apply from step %d):%s", self.state.step,
                     "".join(f"\n  {line}" for line in self.resume_changes))

    def _bring_base_evaluation(self, source_run: Path) -> None:
        """A run resumed from another run dir's checkpoint does not score the base model again (it
        is past step 0): copy that run's ``eval_base/`` so the closing comparison still has it."""
        source, target = source_run / "eval_base", self.run_dir / "eval_base"
        if not self.is_main or source_run.resolve() == self.run_dir.resolve() or target.exists():
            return
        if self.cfg.train.evaluate_base and source.is_dir():
            shutil.copytree(source, target, symlinks=True)
            log.info("Base model's evaluation copied from %s (the resumed run does not redo it)", source)

    def _apply_optimizer_settings(self) -> None:
        """Resume applies the current optimizer.lr / weight_decay / betas / eps (the saved state
        would restore the old ones): lowering the LR to continue a run that diverged is a common
        fix, and ignoring the value the user typed was finding 2 of issue 14. The LR schedule
        keeps its position (warmup/decay continue from the checkpoint's step) at the new base LR.
        The optimizer's moments stay; the optimizer class is part of the fingerprint."""
        opt = self.cfg.optimizer
        values = {"weight_decay": float(opt.weight_decay), "betas": tuple(float(b) for b in opt.betas),
                  "eps": float(opt.eps)}
        scheduler = self.lr_scheduler
        scheduler.base_lrs = [float(opt.lr)] * len(scheduler.optimizer.param_groups)
        for group, base, multiplier in zip(scheduler.optimizer.param_groups, scheduler.base_lrs,
                                           scheduler.lr_lambdas, strict=True):
            group.update({k: v for k, v in values.items() if k in group})
            group["initial_lr"] = base
            # What LambdaLR computes for this step; unchanged settings give the saved value exactly.
            group["lr"] = base * multiplier(scheduler.last_epoch)
        scheduler._last_lr = [group["lr"] for group in scheduler.optimizer.param_groups]

    # -- one optimizer step -------------------------------------------------------------------
    def _micro_step(self, batch: dict, micro: int) -> float:
        settings = self.settings
        device = self.accelerator.device
        generators = sample_generators(settings.seed, self.state.step, batch["key"])
        prompts = apply_caption_dropout(batch["prompt"], settings.caption_dropout, generators)
        with torch.no_grad():
            if "latents" in batch:  # from the latent cache: nothing to encode
                latents = batch["latents"]
                if "latents_std" in batch:
                    latents = sample_posterior(latents.to(device), batch["latents_std"].to(device), generators)
                embeds = self.cache.embeds(prompts).to(device=device, dtype=self.weight_dtype)
            else:
                if settings.latent_sampling == LatentSampling.sample:
                    latents = sample_posterior(*self.model.encode_video_posteriors(batch["video"]), generators)
                else:
                    latents = self.model.encode_videos(batch["video"])
                if not self.trains_text_encoder:
                    embeds = self.model.encode_prompts(prompts).to(device=device, dtype=self.weight_dtype)
            latents = latents.to(device=device, dtype=self.weight_dtype)
        if self.trains_text_encoder:  # its LoRA learns: the prompts are encoded with autograd on
            embeds = self.model.encode_prompts(prompts).to(device=device, dtype=self.weight_dtype)
        rng_seed = dropout_seed(settings.seed, self.state.step, micro, self.accelerator.process_index)
        with self.accelerator.accumulate(self.model.denoiser), self.accelerator.autocast(), \
                seeded_global_rng(rng_seed, device):
            loss = self.model.training_loss(latents, embeds, generators)
            # Always backward, even on a NaN loss: every DDP rank must join the all-reduce; the
            # non-finite gradient norm then tells all ranks alike to skip the update.
            self.accelerator.backward(loss)
            if self.accelerator.sync_gradients:
                self._apply_update()
        return loss.detach().float().item()

    def _apply_update(self) -> None:
        self.grad_norm = float(self.accelerator.clip_grad_norm_(self.trainable, self.settings.max_grad_norm))
        self.update_skipped = not math.isfinite(self.grad_norm)
        # With fp16 loss scaling the scaler itself skips overflowing steps and must see them to
        # lower its scale; without a scaler a non-finite step is simply not applied.
        if not self.update_skipped or self.accelerator.scaler is not None:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def train_step(self, batch_iter) -> dict:
        started = time.perf_counter()
        losses = []
        samples = 0
        for micro in range(self.settings.accumulation):
            batch = next(batch_iter)
            samples += len(batch["prompt"]) * self.accelerator.num_processes
            losses.append(self._micro_step(batch, micro))
        lr = self.lr_scheduler.get_last_lr()[0]
        self.lr_scheduler.step()
        self.state.step += 1
        self.state.samples_seen += samples
        position = self.batches.position
        self.state.epoch, self.state.batch_in_epoch = position.epoch, position.batch
        # The logged loss is the global batch's: averaged over processes, not rank 0's share.
        loss = torch.tensor(float(np.mean(losses)), device=self.accelerator.device)
        loss = float(self.accelerator.reduce(loss, reduction="mean")) if self.accelerator.num_processes > 1 else float(loss)
        self._check_finite(loss)
        elapsed = time.perf_counter() - started
        return {
            "train/loss": loss, "train/lr": lr, "train/grad_norm": self.grad_norm,
            "train/samples_per_s": samples / max(elapsed, 1e-9), "train/step_s": elapsed,
            "train/peak_mem_mb": peak_memory_mb(self.accelerator.device), "train/epoch": self.state.epoch,
            "train/skipped_nonfinite": self.state.skipped_nonfinite,
        }

    def _check_finite(self, loss: float) -> None:
        """Count non-finite steps; stop after too many in a row (the last good checkpoint stays)."""
        scaler_overflow = self.accelerator.scaler is not None and math.isfinite(loss)
        if math.isfinite(loss) and (not self.update_skipped or scaler_overflow):
            self.nonfinite_in_a_row = 0
            return
        self.state.skipped_nonfinite += 1
        self.nonfinite_in_a_row += 1
        policy = self.cfg.train.nonfinite
        log.warning("Step %d: non-finite loss (%s) or gradient norm (%s); update skipped (%d in a row)",
                    self.state.step, loss, self.grad_norm, self.nonfinite_in_a_row)
        if policy == "stop" or self.nonfinite_in_a_row >= self.cfg.train.max_nonfinite_in_a_row:
            raise NonFiniteLossError(
                f"Stopped at step {self.state.step}: {self.nonfinite_in_a_row} non-finite step(s) in a row "
                f"(train.nonfinite={policy}, train.max_nonfinite_in_a_row={self.cfg.train.max_nonfinite_in_a_row}). "
                f"The last good checkpoint is kept in {self.ckpt_root}; lower optimizer.lr, check the data, "
                f"or use precision=bf16/fp32."
            )

    # -- periodic work ------------------------------------------------------------------------
    def save(self) -> Path | None:
        self.accelerator.wait_for_everyone()
        path = None
        if self.is_main:
            scaler = self.accelerator.scaler.state_dict() if self.accelerator.scaler is not None else None
            trainable = self.model.trainable_state_dict()
            try:
                path = save_checkpoint(
                    self.ckpt_root, state=self.state, trainable=trainable,
                    optimizer_state=self.optimizer.state_dict(), scheduler_state=self.lr_scheduler.state_dict(),
                    scaler_state=scaler, keep_last=self.cfg.train.keep_last,
                    extra={"model": self.cfg.model.name, "finetune": str(self.cfg.model.finetune.value),
                           "fingerprint": self.fingerprint, "settings": self.flat_settings,
                           "wandb_run_id": self.wandb_run_id},
                )
            except Exception as exc:  # OSError, or the serializer's own error type for ENOSPC
                kept = list_checkpoints(self.ckpt_root)
                previous = f"the previous checkpoint {kept[-1]} is intact" if kept else "there is no earlier checkpoint"
                raise CheckpointWriteError(
                    f"Writing the step-{self.state.step} checkpoint failed ({exc}); {previous}. "
                    f"Free disk space (or set hydra.run.dir elsewhere) and resume=latest."
                ) from exc
            log.info("Saved %s", path)
        self.accelerator.wait_for_everyone()
        return path

    def validate(self) -> None:
        cfg = self.cfg.validation
        if not cfg.enabled or cfg.num_videos == 0:  # num_videos=0: no validation videos
            return
        self.accelerator.wait_for_everyone()
        self._offload_frozen(False)
        if self.is_main:
            captions = self.dataset.captions() if hasattr(self.dataset, "captions") else []
            prompts = validation_prompts(list(cfg.prompts), captions, cfg.num_videos)
            out_dir = self.run_dir / "samples" / f"step-{self.state.step:06d}"
            videos = generate_samples(
                self.model, prompts, out_dir, num_inference_steps=cfg.num_inference_steps,
                guidance_scale=cfg.guidance_scale, seed=cfg.seed, fps=self.cfg.model.fps,
                autocast=self.accelerator.autocast,
            )
            self.tracker.log_videos(videos, step=self.state.step, fps=self.cfg.model.fps)
            log.info("Wrote %d validation videos to %s", len(videos), out_dir)
        self._offload_frozen(True)
        self.accelerator.wait_for_everyone()

    def evaluate(self, *, base: bool = False) -> dict | None:
        """Score the model into ``<run>/eval`` (fine-tuned, paired with ``eval_base`` when it
        exists) or ``<run>/eval_base`` (before any step: LoRA is still a no-op, full weights untouched).

        Never fails the run for its numbers: a skipped metric or a refused comparison (eval and
        eval_base not comparable) is recorded in metrics.json and logged, and training goes on.
        """
        from ..evaluation import evaluate_model, problems

        self.accelerator.wait_for_everyone()
        self._offload_frozen(False)
        report = None
        if self.is_main:
            settings = self.cfg.evaluation
            out_dir = self.run_dir / ("eval_base" if base else "eval")
            baseline = self.run_dir / "eval_base"
            dataset = instantiate_dataset(self.cfg.dataset, split=settings.split, report_dir=str(self.run_dir))
            description = {"mode": "model" if base else "run_dir", "model": self.cfg.model.name,
                           "dataset": self.cfg.dataset.name, "finetuned": not base, "step": self.state.step,
                           "settings_prefix": "evaluation."}  # fixes name +evaluation.metric_settings...
            report = evaluate_model(
                self.model, dataset, settings, out_dir, fps=self.cfg.model.fps, autocast=self.accelerator.autocast,
                description=description, tracker=self.tracker, role="eval_base" if base else "eval",
                baseline=str(baseline) if not base and (baseline / "metrics.json").is_file() else None,
            )
            for missing in problems(report):
                log.warning("%s: %s %s (%s; fix: %s)", out_dir.name, missing["metric"], missing["status"],
                            missing["reason"], missing["fix"])
            if report.get("comparison_refused"):
                log.error("%s\n(recorded in %s; training goes on and the fine-tuned weights are kept)",
                          report["comparison_refused"]["message"], out_dir / "metrics.json")
        self._offload_frozen(True)
        self.accelerator.wait_for_everyone()
        return report

    def export(self) -> Path:
        """Write final/ into a fresh directory and rename it into place: a crash mid-export never
        leaves half a final/, and files another dir hard-links (a reused sweep job) never change."""
        out_dir = self.run_dir / "final"
        if self.is_main:
            staging = self.run_dir / f".final-{os.getpid()}"
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir(parents=True)
            self.model.export(staging)
            replaced = self.run_dir / f".final-replaced-{os.getpid()}"
            if out_dir.exists():
                os.replace(out_dir, replaced)
            os.replace(staging, out_dir)
            shutil.rmtree(replaced, ignore_errors=True)
        self.accelerator.wait_for_everyone()
        return out_dir

    def publish(self, final_dir: Path) -> None:
        """The model card beside the exported weights; the upload when push_to_hub=true."""
        if not self.is_main:
            return
        from ..model_card import push_to_hub, write_model_card

        card = write_model_card(final_dir, self.cfg, model=self.model, steps=self.state.step,
                                eval_report=self.eval_report, samples_root=self.run_dir / "samples")
        log.info("Model card: %s", card)
        if self.cfg.push_to_hub:
            log.info("push_to_hub: %s", push_to_hub(final_dir, self.cfg.hub_repo_id))

    # -- the loop -----------------------------------------------------------------------------
    def fit(self) -> dict:
        cfg = self.cfg.train
        self.eval_report = None
        batch_iter = iter(self.batches)
        last = {}
        if self.cfg.train.evaluate_base and self.state.step == 0:
            self.evaluate(base=True)
        progress = tqdm(total=cfg.max_steps, initial=self.state.step, desc="train", unit="step",
                        disable=not self.is_main, dynamic_ncols=True)
        stop_at = cfg.max_steps
        if cfg.stop_after_steps:
            stop_at = min(cfg.max_steps, self.state.step + cfg.stop_after_steps)
        with stop_signals() as received:
            while self.state.step < stop_at:
                last = self.train_step(batch_iter)
                self._after_step(last, progress, stop_at)
                if received:
                    progress.close()
                    path = self.save()
                    log.warning("Signal %d: saved %s at step %d; continue with resume=latest",
                                received[0], path, self.state.step)
                    raise TrainingInterrupted(received[0], path)
        progress.close()
        self.save()
        finished = self.state.step >= cfg.max_steps
        final_dir = None
        if finished:
            self.validate()
            final_dir = str(self.export())
            if cfg.evaluate_at_end:
                self.eval_report = self.evaluate()
            self.publish(Path(final_dir))
        else:
            log.info("Stopped at step %d of %d (train.stop_after_steps); continue with resume=latest",
                     self.state.step, cfg.max_steps)
        summary = {"final_loss": last.get("train/loss"), "finished": finished, "final_dir": final_dir,
                   "resumed_from": self.resumed_from, "resume_changes": self.resume_changes, **asdict(self.state),
                   "cache": asdict(self.cache.stats) if self.cache else None,
                   "prompts_truncated": TruncatedPrompts.count, "prompt_truncated_example": TruncatedPrompts.example,
                   "objective_kind": objective_label(self.model)}
        summary["objective"] = objective_value(cfg.objective, summary, self.eval_report)
        self.tracker.summary({**{"params/" + k: v for k, v in self.param_counts.items()}, **summary})
        return summary

    def _after_step(self, last: dict, progress, stop_at: int) -> None:
        settings, step = self.settings, self.state.step
        progress.update(1)
        # refresh=False: update() redraws at tqdm's own pace instead of a terminal write every step.
        progress.set_postfix(loss=f"{last['train/loss']:.4f}", lr=f"{last['train/lr']:.2e}", refresh=False)
        if step % settings.log_every == 0 or step == settings.max_steps:
            self.tracker.log(last, step=step)
        done = step == stop_at  # the final save/validation follow the loop
        if settings.checkpoint_every and step % settings.checkpoint_every == 0 and not done:
            self.save()
        if settings.validate_every and step % settings.validate_every == 0 and not done:
            self.validate()

    def close(self, exit_code: int = 0) -> None:
        tracker = getattr(self, "tracker", None)
        if tracker is not None:
            tracker.finish(exit_code=exit_code)
        if self._own_lock is not None:
            self._own_lock.release()
            self.lock = self._own_lock = None


def run_training(cfg: DictConfig, run_dir: Path, lock: RunDirLock | None = None) -> dict:
    trainer = Trainer(cfg, run_dir, lock)
    exit_code = 1
    try:
        trainer.setup()
        summary = trainer.fit()
        exit_code = 0
        return summary
    finally:
        # Always close the tracker so a multirun's next job never inherits a stale W&B run.
        trainer.close(exit_code)
