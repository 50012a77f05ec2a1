"""The one trainer and the one evaluation path.

Data arrive as uint8 tensors (see :mod:`pvera_bench.data`); batches are moved to the
device and normalised there. Training minimises cross-entropy plus, for stochastic
adapters, ``regularization / beta`` (PVeRA's KL). Evaluation returns top-1, NLL and ECE
from the predicted probabilities; in MC mode the probabilities are the mean of N
stochastic passes.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from pvera_bench.adapters import adapter_loss, sample_latents
from pvera_bench.config import ProtocolConfig, SamplingConfig, TrainerConfig
from pvera_bench.data import SplitData
from pvera_bench.errors import UserError

log = logging.getLogger(__name__)

ECE_BINS = 15
STOP_REQUESTED = threading.Event()  # set by the SIGTERM handler of pvera_bench.run: stop at the next batch


class Preempted(Exception):
    """Training stopped on request (SIGTERM); the last epoch's checkpoint is the state to resume from."""


RESIDENT_LIMIT_BYTES = 2 << 30  # splits up to this size live on the GPU; larger ones stream from pinned memory


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"trainer.device={name} is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"trainer.device={name} but CUDA is not available; use trainer.device=auto or cpu")
    return device


class Normalizer(nn.Module):
    """uint8 images -> normalised float, on the device."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.register_buffer("scale", 1.0 / (255.0 * torch.tensor(std).view(1, -1, 1, 1)), persistent=False)
        self.register_buffer("shift", (torch.tensor(mean) / torch.tensor(std)).view(1, -1, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images.float() * self.scale - self.shift


def place_split(data: SplitData, device: torch.device) -> SplitData:
    """Put a split where batches are cheapest to take from: on the GPU, or pinned host memory if large."""
    if device.type != "cuda":
        return data
    if data.images.numel() <= RESIDENT_LIMIT_BYTES:
        return SplitData(data.images.to(device), data.labels.to(device))
    return SplitData(data.images.pin_memory(), data.labels.pin_memory())


def batches(
    data: SplitData, batch_size: int, device: torch.device, generator: torch.Generator | None = None
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (uint8 images, labels) on ``device``; shuffled when a generator is given."""
    n = len(data)
    order = torch.randperm(n, generator=generator) if generator is not None else None
    for start in range(0, n, batch_size):
        if order is None:
            images, labels = data.images[start : start + batch_size], data.labels[start : start + batch_size]
        else:
            index = order[start : start + batch_size].to(data.labels.device)
            images, labels = data.images[index], data.labels[index]
        yield images.to(device, non_blocking=True), labels.to(device, non_blocking=True)


def autocast(device: torch.device, bf16: bool) -> contextlib.AbstractContextManager:
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16)


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


@dataclass
class Runtime:
    """Where and how the model runs."""

    device: torch.device
    normalize: Normalizer
    bf16: bool = False
    progress: bool = True


def train_one_epoch(
    model: nn.Module,
    data: SplitData,
    optimizer: torch.optim.Optimizer,
    scheduler,
    runtime: Runtime,
    batch_size: int,
    generator: torch.Generator,
    regularization_weight: float,
) -> float:
    """One pass over ``data``; returns the mean training loss.

    The loss stays on the device until the end of the epoch (no host synchronisation per step);
    a non-finite epoch loss raises ``FloatingPointError``.
    """
    model.train()
    total = torch.zeros((), device=runtime.device)
    for images, labels in batches(data, batch_size, runtime.device, generator):
        if STOP_REQUESTED.is_set():
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


@torch.no_grad()
def predict(
    model: nn.Module, data: SplitData, runtime: Runtime, batch_size: int, sampling: SamplingConfig
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Class probabilities for every image (float32, CPU) and, for MC sampling, their per-image std.

    In ``mc`` mode each batch goes through the model ``sampling.n`` times with a fresh latent
    draw per pass; the probabilities are averaged and the std (over passes) of the probability
    of the predicted class is returned per image.
    """
    model.eval()
    passes = sampling.n if sampling.mode == "mc" else 1
    probs, stds = [], []
    bar = tqdm(total=len(data), desc="eval", disable=not runtime.progress or len(data) < 5000, leave=False)
    latent = "random" if sampling.mode == "mc" else sampling.mode
    for images, _ in batches(data, batch_size, runtime.device):
        inputs = runtime.normalize(images)
        samples = []
        for _ in range(passes):
            with autocast(runtime.device, runtime.bf16), sample_latents(model, latent):
                samples.append(model(inputs).float().softmax(dim=-1))
        stacked = torch.stack(samples)
        mean = stacked.mean(dim=0)
        probs.append(mean.cpu())
        if passes > 1:
            predicted = mean.argmax(dim=-1)
            stds.append(stacked.gather(2, predicted.expand(passes, -1).unsqueeze(-1)).squeeze(-1).std(dim=0).cpu())
        bar.update(len(images))
    bar.close()
    return torch.cat(probs), (torch.cat(stds) if stds else None)


def classification_metrics(probs: torch.Tensor, labels: torch.Tensor, n_bins: int = ECE_BINS) -> dict[str, float]:
    """Top-1 accuracy, negative log-likelihood and expected calibration error (equal-width bins)."""
    labels = labels.cpu()
    confidence, predicted = probs.max(dim=-1)
    correct = (predicted == labels).float()
    nll = -torch.log(probs.gather(1, labels.unsqueeze(1)).squeeze(1).clamp_min(1e-12)).mean()
    bins = torch.clamp((confidence * n_bins).ceil().long() - 1, 0, n_bins - 1)
    ece = torch.zeros(())
    for b in range(n_bins):
        in_bin = bins == b
        if in_bin.any():
            ece += in_bin.float().mean() * (correct[in_bin].mean() - confidence[in_bin].mean()).abs()
    return {"top1": correct.mean().item(), "nll": nll.item(), "ece": ece.item()}


def evaluate(
    model: nn.Module, data: SplitData, runtime: Runtime, batch_size: int, sampling: SamplingConfig
) -> dict[str, float]:
    probs, stds = predict(model, data, runtime, batch_size, sampling)
    metrics = classification_metrics(probs, data.labels)
    if stds is not None:
        metrics["predictive_std"] = stds.mean().item()
    return metrics


@dataclass
class FitResult:
    epochs_run: int
    best_epoch: int  # 1-based epoch whose weights are kept
    train_images_per_s: float
    history: list[dict] = field(default_factory=list)
    val: dict[str, float] | None = None  # validation metrics of the kept weights


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def rng_state(generator: torch.Generator) -> dict:
    """Every random stream a training epoch draws from, as tensors and plain values."""
    numpy_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [numpy_state[0], torch.from_numpy(numpy_state[1].astype(np.int64)), *numpy_state[2:]],
        "python": random.getstate(),
        "shuffle": generator.get_state(),
    }


def restore_rng(state: dict, generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    random.setstate(tuple(tuple(x) if isinstance(x, list) else x for x in state["python"]))
    generator.set_state(state["shuffle"])


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
    resume: dict | None = None,
    on_epoch_end: Callable[[dict, Callable[[], dict]], None] | None = None,
) -> FitResult:
    """Train for ``trainer.epochs``, validating every epoch when a val split is given.

    With ``protocol.early_stopping`` the run stops after ``protocol.patience`` epochs without
    a relative val-loss decrease of ``protocol.min_rel_improvement`` and the weights of the
    best epoch are restored; otherwise the last epoch's weights are kept.

    Args:
        resume: a state returned by the ``state`` callable of an earlier call: training goes on
            from there exactly as if it had not stopped (same data order, same random draws).
        on_epoch_end: called after every epoch with the epoch's record and a callable that
            returns the full resumable state (for checkpoints).
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

    def state() -> dict:
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
            model, train, optimizer, scheduler, runtime, trainer.batch_size, generator, regularization_weight
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
