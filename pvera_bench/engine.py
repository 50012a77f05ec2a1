"""The one trainer: AdamW, a per-batch schedule, and an epoch loop that validates, stops early and resumes.

Data arrive as uint8 tensors (see :mod:`pvera_bench.data`); batches are moved to the
device and normalised there. Training minimises cross-entropy plus, for stochastic
adapters, ``adapter_loss / beta`` (PVeRA's KL). Evaluation is :mod:`pvera_bench.evaluation`.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from pvera_bench.adapters import adapter_loss
from pvera_bench.config import ProtocolConfig, SamplingConfig, TrainerConfig
from pvera_bench.data import SplitData
from pvera_bench.evaluation import evaluate
from pvera_bench.runtime import Runtime, autocast, batches, restore_rng, rng_state

log = logging.getLogger(__name__)


class Preempted(Exception):
    """Training stopped on request (``should_stop``); the last epoch's checkpoint is the state to resume from."""


def never() -> bool:
    """The ``should_stop`` of a fit that nothing interrupts."""
    return False


def build_optimizer(model: nn.Module, trainer: TrainerConfig, adapter_lr: float | None) -> torch.optim.AdamW:
    """AdamW with the head at ``trainer.lr`` and the adapter at ``adapter.lr`` (default ``trainer.lr``)."""
    head = [p for n, p in model.named_parameters() if p.requires_grad and n.startswith("head.")]
    rest = [p for n, p in model.named_parameters() if p.requires_grad and not n.startswith("head.")]
    groups = [{"params": head, "lr": trainer.lr}]
    if rest:
        groups.append({"params": rest, "lr": adapter_lr if adapter_lr is not None else trainer.lr})
    # fused: one kernel for all parameters instead of a Python loop over them (CPU and CUDA)
    return torch.optim.AdamW(groups, weight_decay=trainer.weight_decay, fused=True)


def build_scheduler(optimizer: torch.optim.Optimizer, trainer: TrainerConfig, steps_per_epoch: int):
    """Linear warm-up over ``warmup_epochs``, then constant or cosine decay to zero, stepped per batch."""
    warmup = trainer.warmup_epochs * steps_per_epoch
    total = max(1, trainer.epochs * steps_per_epoch)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if trainer.scheduler == "cosine":
            progress = (step - warmup) / max(1, total - warmup)
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def train_one_epoch(
    model: nn.Module,
    data: SplitData,
    optimizer: torch.optim.Optimizer,
    scheduler,
    runtime: Runtime,
    batch_size: int,
    generator: torch.Generator,
    regularization_weight: float,
    should_stop: Callable[[], bool] = never,
) -> float:
    """One pass over ``data``; returns the mean training loss.

    The loss stays on the device until the end of the epoch (no host synchronisation per step);
    a non-finite epoch loss raises ``FloatingPointError``; ``should_stop()`` is asked before every
    batch and raises ``Preempted`` when true.
    """
    model.train()
    total = torch.zeros((), device=runtime.device)
    for images, labels in batches(data, batch_size, runtime.device, generator):
        if should_stop():
            raise Preempted
        with autocast(runtime.device, runtime.bf16):
            logits = model(runtime.normalize(images))
        loss = F.cross_entropy(logits.float(), labels)
        regularization = adapter_loss(model)
        if regularization is not None:
            loss = loss + regularization_weight * regularization.float()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        total += loss.detach() * len(labels)
    mean = total.item() / len(data)
    if not math.isfinite(mean):
        raise FloatingPointError(f"training loss is {mean}; lower trainer.lr or check the data")
    return mean


@dataclass
class FitResult:
    epochs_run: int
    best_epoch: int  # 1-based epoch whose weights are kept
    train_images_per_s: float
    history: list[dict] = field(default_factory=list)
    val: dict[str, float] | None = None  # validation metrics of the kept weights


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


@dataclass
class LoopState:
    """What the epoch loop carries from one epoch to the next (all of it goes into a checkpoint)."""

    epoch: int = 0
    best_loss: float = math.inf
    stale: int = 0
    best_epoch: int = 0
    best_val: dict | None = None
    best_weights: dict | None = None
    last_val: dict | None = None
    train_time: float = 0.0
    history: list = field(default_factory=list)


def fit(
    model: nn.Module,
    train: SplitData,
    val: SplitData | None,
    runtime: Runtime,
    trainer: TrainerConfig,
    protocol: ProtocolConfig,
    sampling: SamplingConfig,
    adapter_lr: float | None,
    regularization_weight: float,
    seed: int,
    resume: dict[str, Any] | None = None,
    on_epoch_end: Callable[[dict, Callable[[], dict[str, Any]]], None] | None = None,
    should_stop: Callable[[], bool] = never,
) -> FitResult:
    """Train for ``trainer.epochs``, validating every epoch when a val split is given.

    With ``protocol.early_stopping`` the run stops after ``protocol.patience`` epochs without
    a relative val-loss decrease of ``protocol.min_rel_improvement`` and the weights of the
    best epoch are restored; otherwise the last epoch's weights are kept.

    Args:
        resume: a state returned by the ``state`` callable of an earlier call: training goes on
            from there exactly as if it had not stopped (same data order, same random draws).
        on_epoch_end: called after every epoch with the epoch's record and a callable that
            returns the full resumable state (tensors and plain values, for checkpoints).
        should_stop: asked before every batch; when it returns True, ``Preempted`` is raised.
    """
    optimizer = build_optimizer(model, trainer, adapter_lr)
    steps = math.ceil(len(train) / trainer.batch_size)
    scheduler = build_scheduler(optimizer, trainer, steps)
    generator = torch.Generator().manual_seed(seed)
    loop = LoopState()
    if resume is not None:
        model.load_state_dict(resume["model"], strict=False)
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        restore_rng(resume["rng"], generator)
        loop = LoopState(**resume["loop"])
        log.info("resuming after epoch %d", loop.epoch)

    def state() -> dict[str, Any]:
        return {
            "model": trainable_state(model),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rng": rng_state(generator),
            "loop": asdict(loop),
        }

    bar = tqdm(total=trainer.epochs, initial=loop.epoch, desc="train", disable=not runtime.progress, leave=False)
    while loop.epoch < trainer.epochs and not (
        protocol.early_stopping and val is not None and loop.stale >= protocol.patience
    ):
        loop.epoch += 1
        start = time.perf_counter()
        loss = train_one_epoch(
            model,
            train,
            optimizer,
            scheduler,
            runtime,
            trainer.batch_size,
            generator,
            regularization_weight,
            should_stop,
        )
        if runtime.device.type == "cuda":
            torch.cuda.synchronize(runtime.device)
        loop.train_time += time.perf_counter() - start
        record = {"epoch": loop.epoch, "train_loss": loss}
        if val is not None:
            loop.last_val = evaluate(model, val, runtime, trainer.eval_batch_size, sampling)
            record.update({f"val_{k}": v for k, v in loop.last_val.items()})
            if loop.last_val["nll"] < loop.best_loss * (1 - protocol.min_rel_improvement):
                loop.best_loss, loop.stale = loop.last_val["nll"], 0
                if protocol.early_stopping:
                    loop.best_weights, loop.best_epoch = trainable_state(model), loop.epoch
                    loop.best_val = loop.last_val
            else:
                loop.stale += 1
        loop.history.append(record)
        bar.update(1)
        bar.set_postfix({k: f"{v:.3f}" for k, v in record.items() if k in ("train_loss", "val_nll", "val_top1")})
        if on_epoch_end is not None:
            on_epoch_end(record, state)
    bar.close()
    if protocol.early_stopping and val is not None and loop.stale >= protocol.patience:
        log.info("early stop at epoch %d: val loss has not improved for %d epochs", loop.epoch, loop.stale)
    result = FitResult(loop.epoch, loop.epoch, loop.epoch * len(train) / max(loop.train_time, 1e-9), loop.history)
    if loop.best_weights is not None:
        model.load_state_dict(loop.best_weights, strict=False)
        result.best_epoch, result.val = loop.best_epoch, loop.best_val
    else:
        result.val = loop.last_val
    return result
