"""Where a model runs and how batches reach it: device, seeding, normalisation, batching, random streams."""

from __future__ import annotations

import contextlib
import ctypes
import random
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from pvera_bench.core.errors import UserError
from pvera_bench.data import SplitData

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
NEVER_TRIM = -1  # as the trim threshold: the heap is never given back (mallopt(3))
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


def reuse_freed_host_memory() -> None:
    """Keep freed host memory for reuse instead of returning it to the system (glibc only; else nothing).

    glibc serves allocations above its mmap threshold (at most 32 MiB by default) with fresh pages and unmaps
    them when freed, and gives the top of its heap back once more than the trim threshold is free, so a CPU
    training step whose activations are that large pays page faults on every one; at three ViT-B batches of 8
    (a packed grid) that is 18 % of the step on 2 cores. So large blocks come from the heap, which is never
    trimmed. ``mallopt`` takes a C int: a threshold above 2 GiB would wrap, which is why trimming is switched
    off instead of raised (the working set of a packed step can exceed 2 GiB).
    """
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    mallopt(M_MMAP_THRESHOLD, 1 << 30)
    mallopt(M_TRIM_THRESHOLD, NEVER_TRIM)


class Normalizer(nn.Module):
    """uint8 images -> normalised float, on the device."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.register_buffer("scale", 1.0 / (255.0 * torch.tensor(std).view(1, -1, 1, 1)), persistent=False)
        self.register_buffer("shift", (torch.tensor(mean) / torch.tensor(std)).view(1, -1, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images.float() * self.scale - self.shift


@dataclass
class Runtime:
    """Where and how the model runs; ``normalize`` turns a batch of the split into the model's input."""

    device: torch.device
    normalize: nn.Module
    bf16: bool = False
    progress: bool = True


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


def torch_rng_state() -> dict:
    """The state of torch's global generators: the CPU one and each CUDA device's."""
    return {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def same_torch_rng_state(first: dict, other: dict) -> bool:
    """Whether two :func:`torch_rng_state` results are equal: nothing was drawn between them."""
    return torch.equal(first["torch"], other["torch"]) and all(
        torch.equal(a, b) for a, b in zip(first["cuda"], other["cuda"], strict=True)
    )


def set_torch_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def rng_state(generator: torch.Generator) -> dict:
    """Every random stream a training epoch draws from, as tensors and plain values (weights-only loadable)."""
    numpy_state = np.random.get_state()
    return {
        **torch_rng_state(),
        "numpy": [numpy_state[0], torch.from_numpy(numpy_state[1].astype(np.int64)), *numpy_state[2:]],
        "python": random.getstate(),
        "shuffle": generator.get_state(),
    }


def restore_rng(state: dict, generator: torch.Generator) -> None:
    set_torch_rng_state(state)
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    random.setstate(tuple(tuple(x) if isinstance(x, list) else x for x in state["python"]))
    generator.set_state(state["shuffle"])


class RandomStreams:
    """One state of torch's global generators per packed model: what model i's layers draw comes from stream i,
    so each draws what it would draw alone (:mod:`pvera_bench.models.packing`)."""

    def __init__(self, states: list[dict]) -> None:
        self.states = states

    @contextlib.contextmanager
    def drawing(self, index: int) -> Iterator[None]:
        set_torch_rng_state(self.states[index])
        yield
        self.states[index] = torch_rng_state()
