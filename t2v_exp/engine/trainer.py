"""The training loop: optimizer steps, periodic checkpoints and samples, stopping on a signal.

It knows the VideoModel protocol and nothing about any family. Everything it works on comes
ready-built in ``TrainingParts`` (engine/setup.py builds them for a real run; tests and
benchmarks build their own).
"""

from __future__ import annotations

import logging
import math
import resource
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig
from tqdm.auto import tqdm

from .. import config as config_schema
from ..config import LatentSampling
from ..errors import UserError
from ..models import TruncatedPrompts, sample_posterior
from .checkpoint import list_checkpoints, save_checkpoint
from .preemption import TrainingInterrupted, stop_signals
from .randomness import apply_caption_dropout, dropout_seed, sample_generators, seeded_global_rng
from .samples import generate_samples, validation_prompts
from .setup import TrainingParts, build_parts, frozen_on_accelerator, validate_run

log = logging.getLogger(__name__)


class CheckpointWriteError(UserError, RuntimeError):
    """A checkpoint could not be written (disk full, permissions); earlier ones are untouched."""


class NonFiniteLossError(UserError, RuntimeError):
    """Training produced too many non-finite losses or gradients in a row."""


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss_kb / (2**20 if sys.platform == "darwin" else 2**10)


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


class Trainer:
    """Runs optimizer steps on ready-built parts; ``fit`` trains to ``train.max_steps`` (or
    ``train.stop_after_steps``) and returns the run's summary."""

    def __init__(self, cfg: DictConfig, run_dir: Path, parts: TrainingParts):
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.ckpt_root = self.run_dir / "checkpoints"
        self.parts = parts
        self.settings = StepSettings.from_config(cfg)
        self.accelerator, self.model, self.optimizer = parts.accelerator, parts.model, parts.optimizer
        self.lr_scheduler, self.batches, self.tracker = parts.lr_scheduler, parts.batches, parts.tracker
        self.dataset, self.cache, self.weight_dtype = parts.dataset, parts.cache, parts.weight_dtype
        self.trains_text_encoder = parts.trains_text_encoder
        self.is_main = parts.is_main
        self.state = parts.restored.state
        self.trainable = self.model.trainable_parameters()  # fixed from here on; listing it costs ~1 ms
        run = getattr(self.tracker, "run", None)  # a W&B run once started: every checkpoint records its id
        self.wandb_run_id = run.id if run is not None else parts.restored.wandb_run_id
        self.grad_norm = float("nan")  # of the last applied update
        self.update_skipped = False
        self.nonfinite_in_a_row = 0

    @classmethod
    def from_config(cls, cfg: DictConfig, run_dir: Path) -> Trainer:
        """Check the run and build its parts from the config, as the recipe does (no run-dir lock)."""
        return cls(cfg, run_dir, build_parts(cfg, Path(run_dir), validate_run(cfg)))

    def close(self, exit_code: int = 0) -> None:
        """Finish tracking (the recipe does it for a real run)."""
        self.tracker.finish(exit_code=exit_code)

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
                           "fingerprint": self.parts.fingerprint, "settings": self.parts.flat_settings,
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

    def sample(self) -> None:
        """Validation videos of the current weights into ``samples/step-NNNNNN`` and W&B."""
        cfg = self.cfg.validation
        if not cfg.enabled or cfg.num_videos == 0:  # num_videos=0: no validation videos
            return
        with frozen_on_accelerator(self.cfg, self.parts):
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

    # -- the loop -----------------------------------------------------------------------------
    def fit(self) -> dict:
        """Train until ``train.max_steps`` (or ``train.stop_after_steps`` more), checkpointing and
        sampling on the way; the final checkpoint is saved. Returns the run's summary."""
        cfg = self.cfg.train
        batch_iter = iter(self.batches)
        last = {}
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
        if not finished:
            log.info("Stopped at step %d of %d (train.stop_after_steps); continue with resume=latest",
                     self.state.step, cfg.max_steps)
        restored = self.parts.restored
        return {"final_loss": last.get("train/loss"), "finished": finished, "final_dir": None,
                "resumed_from": restored.resumed_from, "resume_changes": restored.changes, **asdict(self.state),
                "cache": asdict(self.cache.stats) if self.cache else None,
                "prompts_truncated": TruncatedPrompts.count, "prompt_truncated_example": TruncatedPrompts.example}

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
            self.sample()
