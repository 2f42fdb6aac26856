"""The optimizer and its learning-rate schedule."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from clipsearch.training.config import TrainConfig

if TYPE_CHECKING:
    import torch


def lr_factor(config: TrainConfig, step: int, elapsed: float = 0.0) -> float:
    """The learning-rate multiplier at ``step``: linear warmup, then cosine decay.

    Args:
        config: the run's settings.
        step: optimizer steps done so far.
        elapsed: seconds spent training so far; only used with ``time_limit_minutes``.
    """
    warm, total, floor = config.warmup_steps, config.steps, config.final_lr_fraction
    if step < warm:
        return (step + 1) / warm
    progress = (step - warm) / max(1, total - warm)
    if config.time_limit_minutes:
        progress = max(progress, elapsed / (config.time_limit_minutes * 60))
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def set_lr(
    optimizer: torch.optim.Optimizer, config: TrainConfig, step: int, elapsed: float
) -> float:
    """Set every parameter group's learning rate for ``step``; returns it."""
    lr = config.lr * lr_factor(config, step, elapsed)
    for group in optimizer.param_groups:
        group["lr"] = lr
    return lr


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """The model's trainable parameters in two groups: with weight decay, and without it for
    gains, biases, norms and the temperature (open_clip's rule)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim < 2 or "bn" in name or "ln" in name or "bias" in name or "logit_scale" in name:
            no_decay.append(p)
        else:
            decay.append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(
    config: TrainConfig, groups: list[dict[str, Any]], device: str
) -> torch.optim.Optimizer:
    """AdamW over ``groups`` with the run's betas and epsilon; the learning rate is set each
    step by :func:`set_lr`."""
    import torch

    return torch.optim.AdamW(
        groups,
        lr=config.lr,
        betas=config.betas,
        eps=config.eps,
        # The fused kernel is faster than the per-tensor loop where torch has one.
        fused=device in ("cpu", "cuda"),
    )
