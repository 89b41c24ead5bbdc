"""Optimizer factories and the learning-rate schedule."""

from __future__ import annotations

import math

import torch


def adamw_8bit(params, lr: float, weight_decay: float, betas, eps: float):
    try:
        import bitsandbytes as bnb  # deferred: optional extra (t2v_exp[bnb], CUDA only), only for adamw_8bit
    except ImportError as exc:
        raise ImportError(
            "optimizer=adamw_8bit needs bitsandbytes: pip install 't2v_exp[bnb]' (CUDA only), "
            "or use optimizer=adamw"
        ) from exc
    return bnb.optim.AdamW8bit(params, lr=lr, weight_decay=weight_decay, betas=tuple(betas), eps=eps)


def lr_multiplier(step: int, *, schedule: str, warmup_steps: int, max_steps: int) -> float:
    """Linear warmup to the base LR, then constant / linear / cosine decay to zero at max_steps."""
    if warmup_steps and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = (step - warmup_steps) / max(1, max_steps - warmup_steps)
    progress = min(max(progress, 0.0), 1.0)
    if schedule == "linear":
        return 1.0 - progress
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"train.lr_schedule={schedule!r}; valid: constant, linear, cosine")


def build_lr_scheduler(optimizer, *, schedule: str, warmup_steps: int, max_steps: int):
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: lr_multiplier(step, schedule=schedule, warmup_steps=warmup_steps, max_steps=max_steps),
    )
