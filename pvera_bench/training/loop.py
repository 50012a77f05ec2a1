"""The one trainer: AdamW, a per-batch schedule, and an epoch loop that validates, stops early and resumes.

Data arrive as uint8 tensors (see :mod:`pvera_bench.data`); batches are moved to the
device and normalised there. Training minimises cross-entropy plus, for stochastic
adapters, ``adapter_loss / beta`` (PVeRA's KL). Validation always uses the mean latent of a
stochastic adapter. Evaluation is :mod:`pvera_bench.evaluation.predict`.
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
from pvera_bench.config import ProtocolConfig, SamplingConfig, SamplingMode, TrainerConfig
from pvera_bench.data import SplitData
from pvera_bench.evaluation.predict import evaluate
from pvera_bench.models.runtime import Runtime, autocast, batches, restore_rng, rng_state
from pvera_bench.training.optim import build_optimizer, build_scheduler

log = logging.getLogger(__name__)

VALIDATION_SAMPLING = SamplingConfig(SamplingMode.mean)  # stochastic adapters validate with the mean latent


class Preempted(Exception):
    """Training stopped on request (``should_stop``); the last epoch's checkpoint is the state to resume from."""


def never() -> bool:
    """The ``should_stop`` of a fit that nothing interrupts."""
    return False


def elapsed_since(start: float, device: torch.device) -> float:
    """Seconds since ``start`` (``time.perf_counter``), once the device's queued work is done."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def training_loss(logits: torch.Tensor, labels: torch.Tensor, double_softmax: bool) -> torch.Tensor:
    """Cross-entropy of the logits; with the double-softmax quirk, of their softmax (the official code's E1)."""
    return F.cross_entropy(logits.softmax(dim=-1) if double_softmax else logits, labels)


def train_epoch(
    loops: list[EpochLoop],
    network: nn.Module,
    should_stop: Callable[[], bool] = never,
) -> list[float]:
    """One pass over the train split for each loop; returns each loop's mean training loss.

    ``network`` is the one loop's model, or the trunk of several (:func:`pvera_bench.models.packing.pack_models`):
    each step then stacks the loops' batches (each loop's own order) and loop i's loss is computed on chunk i of
    the logits. Each loop has its own optimizer and schedule; one backward serves them all, since a loop's loss
    depends only on its own parameters. The losses stay on the device until the end of the epoch (no host
    synchronisation per step); a non-finite epoch loss raises ``FloatingPointError``; ``should_stop()`` is asked
    before every batch and raises ``Preempted`` when true.
    """
    runtime = loops[0].runtime
    network.train()
    for loop in loops:
        loop.model.train()
    iterators = [
        batches(loop.train, loop.trainer.batch_size, runtime.device, loop.generator if loop.objective.shuffle else None)
        for loop in loops
    ]
    totals = [torch.zeros((), device=runtime.device) for _ in loops]
    for step in zip(*iterators, strict=True):
        if should_stop():
            raise Preempted
        images = torch.cat([images for images, _ in step]) if len(step) > 1 else step[0][0]
        with autocast(runtime.device, runtime.bf16):
            logits = network(runtime.normalize(images))
        losses = [
            loop.loss(chunk.float(), labels)
            for loop, chunk, (_, labels) in zip(loops, logits.split([len(y) for _, y in step]), step, strict=True)
        ]
        for loop in loops:
            loop.optimizer.zero_grad(set_to_none=True)
        sum(losses).backward()
        for loop, loss, total, (_, labels) in zip(loops, losses, totals, step, strict=True):
            loop.optimizer.step()
            loop.scheduler.step()
            total += loss.detach() * len(labels)
    means = [total.item() / len(loop.train) for loop, total in zip(loops, totals, strict=True)]
    for mean in means:
        if not math.isfinite(mean):
            raise FloatingPointError(f"training loss is {mean}; lower trainer.lr or check the data")
    return means


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


@dataclass(frozen=True)
class Objective:
    """What a fit minimises and how it sees the data, besides the trainer's settings.

    Args:
        adapter_lr: learning rate of the adapter's parameters (None: ``trainer.lr``).
        regularization_weight: factor on the adapter's own loss (PVeRA's KL): ``1 / dataset.beta``.
        double_softmax: cross-entropy of the softmax, in training and in the val loss (quirk E1).
        shuffle: reshuffle the train split every epoch (False: file order, quirk E7).
    """

    adapter_lr: float | None = None
    regularization_weight: float = 0.0
    double_softmax: bool = False
    shuffle: bool = True


class EpochLoop:
    """One model's training, an epoch at a time: optimizer, schedule, random streams and early-stopping state.

    Each epoch trains on ``train`` and, when ``val`` is given, evaluates on it with the mean latent (the
    test-time ``sampling`` never chooses anything); an epoch whose val loss is lower than the best by more
    than ``protocol.min_rel_improvement`` (relative) becomes the best and resets ``stale``. The loop keeps
    its own random streams (torch, numpy, Python, shuffle) and restores them around every epoch, so loops
    run in lockstep compute what each would compute alone.

    Args:
        resume: a ``state()`` of an earlier loop: training goes on from there exactly as if it had not stopped.
    """

    def __init__(
        self,
        model: nn.Module,
        train: SplitData,
        val: SplitData | None,
        runtime: Runtime,
        trainer: TrainerConfig,
        protocol: ProtocolConfig,
        objective: Objective,
        seed: int,
        resume: dict[str, Any] | None = None,
    ) -> None:
        self.model, self.train, self.val, self.runtime = model, train, val, runtime
        self.trainer, self.protocol, self.objective = trainer, protocol, objective
        self.optimizer = build_optimizer(model, trainer, objective.adapter_lr)
        self.scheduler = build_scheduler(self.optimizer, trainer, math.ceil(len(train) / trainer.batch_size))
        self.generator = torch.Generator().manual_seed(seed)
        self.loop = LoopState()
        if resume is not None:
            model.load_state_dict(resume["model"], strict=False)
            self.optimizer.load_state_dict(resume["optimizer"])
            self.scheduler.load_state_dict(resume["scheduler"])
            restore_rng(resume["rng"], self.generator)
            self.loop = LoopState(**resume["loop"])
            log.info("resuming after epoch %d", self.loop.epoch)
        self.rng = rng_state(self.generator)

    def stopped_early(self) -> bool:
        """Whether the val loss has not improved for ``protocol.patience`` epochs."""
        return self.val is not None and self.loop.stale >= self.protocol.patience

    def done(self) -> bool:
        return self.loop.epoch >= self.trainer.epochs or (self.protocol.early_stopping and self.stopped_early())

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The training loss of one batch: cross-entropy plus the adapter's own loss (PVeRA's KL) times its weight."""
        loss = training_loss(logits, labels, self.objective.double_softmax)
        regularization = adapter_loss(self.model)
        if regularization is not None:
            loss = loss + self.objective.regularization_weight * regularization.float()
        return loss

    def begin_epoch(self) -> None:
        """Restore this loop's random streams and count the epoch."""
        restore_rng(self.rng, self.generator)
        self.loop.epoch += 1

    def end_epoch(self, train_loss: float, seconds: float) -> dict[str, float]:
        """Validate, update the best epoch and keep the random streams; returns the epoch's record."""
        loop = self.loop
        loop.train_time += seconds
        record = {"epoch": loop.epoch, "train_loss": train_loss}
        if self.val is not None:
            batch_size, double_softmax = self.trainer.eval_batch_size, self.objective.double_softmax
            loop.last_val = evaluate(
                self.model, self.val, self.runtime, batch_size, VALIDATION_SAMPLING, double_softmax
            )
            record.update({f"val_{k}": v for k, v in loop.last_val.items()})
            if loop.last_val["loss"] < loop.best_loss * (1 - self.protocol.min_rel_improvement):
                loop.best_loss, loop.stale = loop.last_val["loss"], 0
                loop.best_weights, loop.best_epoch = trainable_state(self.model), loop.epoch
                loop.best_val = loop.last_val
            else:
                loop.stale += 1
        loop.history.append(record)
        self.rng = rng_state(self.generator)
        return record

    def run_epoch(self, should_stop: Callable[[], bool] = never) -> dict[str, float]:
        """Train one epoch, validate, update the best epoch; returns the epoch's record."""
        self.begin_epoch()
        start = time.perf_counter()
        [loss] = train_epoch([self], self.model, should_stop)
        return self.end_epoch(loss, elapsed_since(start, self.runtime.device))

    def state(self) -> dict[str, Any]:
        """Everything needed to resume after the last epoch: tensors and plain values."""
        return {
            "model": trainable_state(self.model),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": self.rng,
            "loop": asdict(self.loop),
        }

    def images_per_s(self) -> float:
        return self.loop.epoch * len(self.train) / max(self.loop.train_time, 1e-9)

    def result(self) -> FitResult:
        """How the fit went; with early stopping the best epoch's weights are loaded back into the model."""
        loop = self.loop
        result = FitResult(loop.epoch, loop.epoch, self.images_per_s(), loop.history, loop.last_val)
        if self.protocol.early_stopping and loop.best_weights is not None:
            self.model.load_state_dict(loop.best_weights, strict=False)
            result.best_epoch, result.val = loop.best_epoch, loop.best_val
        return result


def fit(
    loop: EpochLoop,
    on_epoch_end: Callable[[dict, Callable[[], dict[str, Any]]], None] | None = None,
    should_stop: Callable[[], bool] = never,
) -> FitResult:
    """Run ``loop`` until its epochs are spent or, with ``protocol.early_stopping``, its val loss stops improving.

    Args:
        on_epoch_end: called after every epoch with the epoch's record and ``loop.state`` (the resumable
            state, built only when called: it copies the weights and the history).
        should_stop: asked before every batch; when it returns True, ``Preempted`` is raised.
    """
    bar = progress_bar(loop.trainer.epochs, loop.loop.epoch, loop.runtime.progress)
    while not loop.done():
        record = loop.run_epoch(should_stop)
        bar.update(1)
        bar.set_postfix({k: f"{v:.3f}" for k, v in record.items() if k in ("train_loss", "val_loss", "val_top1")})
        if on_epoch_end is not None:
            on_epoch_end(record, loop.state)
    bar.close()
    if loop.protocol.early_stopping and loop.stopped_early():
        log.info("early stop at epoch %d: val loss has not improved for %d epochs", loop.loop.epoch, loop.loop.stale)
    return loop.result()


def progress_bar(epochs: int, done: int, enabled: bool) -> tqdm:
    return tqdm(total=epochs, initial=done, desc="train", disable=not enabled, leave=False)
