"""The optimiser and learning-rate schedule of one model's training."""

from __future__ import annotations

import logging
import math

import torch
from torch import nn

from pvera_bench.adapters import trainable_split
from pvera_bench.config import TrainerConfig

log = logging.getLogger(__name__)


def build_optimizer(model: nn.Module, trainer: TrainerConfig, adapter_lr: float | None) -> torch.optim.AdamW:
    """AdamW with the head at ``trainer.lr`` and the adapter at ``adapter.lr`` (default ``trainer.lr``)."""
    adapter, head = trainable_split(model)
    groups = [{"params": list(head.values()), "lr": trainer.lr}]
    if adapter:
        groups.append({"params": list(adapter.values()), "lr": adapter_lr if adapter_lr is not None else trainer.lr})
    # fused: one kernel for all parameters instead of a Python loop over them (CPU and CUDA)
    return torch.optim.AdamW(groups, weight_decay=trainer.weight_decay, fused=True)


def build_scheduler(optimizer: torch.optim.Optimizer, trainer: TrainerConfig, steps_per_epoch: int):
    """Linear warm-up over ``warmup_epochs``, then constant or cosine decay to zero, stepped per batch."""
    warmup = trainer.warmup_epochs * steps_per_epoch
    total = max(1, trainer.epochs * steps_per_epoch)
    if trainer.warmup_epochs >= trainer.epochs > 0 and warmup:
        log.warning(
            "trainer.warmup_epochs=%d >= trainer.epochs=%d: the learning rate warms up for the whole run and reaches "
            "%.3g of trainer.lr at its end",
            trainer.warmup_epochs,
            trainer.epochs,
            total / warmup,
        )

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if trainer.scheduler == "cosine":
            progress = (step - warmup) / max(1, total - warmup)
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
