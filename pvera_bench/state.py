"""What keeps a run safe to stop and to repeat: the results folder check, the lock, SIGTERM, the checkpoint.

Every epoch leaves a checkpoint beside the result: a :class:`RunState` of tensors and plain
values, written atomically and read back weights-only, so a run killed at any point resumes
where it was and ends with the same numbers.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import shutil
import signal
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from pvera_bench.engine import FitResult
from pvera_bench.errors import UserError

log = logging.getLogger(__name__)

MIN_FREE_BYTES = 256 << 20  # a results folder with less free space fails before training


def ensure_writable(folder: Path) -> None:
    """Fail now, not after hours of training, if results cannot be written there."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
            pass
    except OSError as error:
        reason = error.strerror or error
        raise UserError(f"paths.results: cannot write to {folder} ({reason}); choose another folder") from None
    free = shutil.disk_usage(folder).free
    if free < MIN_FREE_BYTES:
        raise UserError(
            f"paths.results: only {free >> 20} MiB free in {folder}; free some space or choose another folder"
        )


@contextlib.contextmanager
def exclusive(path: Path) -> Iterator[bool]:
    """Hold ``<result>.lock`` for the run; yields False when another process holds it (the same run is under way)."""
    with open(path.with_suffix(".lock"), "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@contextlib.contextmanager
def stop_on_sigterm() -> Iterator[Callable[[], bool]]:
    """Yields the ``should_stop`` of the training loop: true once SIGTERM (e.g. SLURM preemption) has arrived.

    Within the block SIGTERM no longer kills the process; training stops at the next batch instead.
    Outside the main thread (where Python cannot handle signals) nothing is installed.
    """
    requested = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield requested.is_set
        return
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: requested.set())
    try:
        yield requested.is_set
    finally:
        signal.signal(signal.SIGTERM, previous)


@dataclass
class GridRecord:
    """A finished grid point: its values, how it scored on val, and whether it is the one chosen so far."""

    point: dict[str, Any]
    val_loss: float | None  # the training criterion on val: the NLL, or the double-softmax loss (quirk E1)
    val_nll: float | None
    val_top1: float | None
    best_epoch: int
    epochs_run: int
    val_curve: list[float] = field(default_factory=list)  # the val loss of every epoch
    selected: bool = False

    def as_json(self) -> dict[str, Any]:
        """The point's entry in the result's ``grid`` (``selected`` only on the chosen one)."""
        record = asdict(self)
        if not self.selected:
            del record["selected"]
        return record


@dataclass
class RunState:
    """A run's progress: the grid points finished, the chosen point's weights, and the fit under way."""

    grid: list[GridRecord] = field(default_factory=list)  # finished grid points, in grid order
    chosen_weights: dict[str, torch.Tensor] | None = None  # trainable weights of the selected point
    chosen_fit: FitResult | None = None  # how the selected point trained
    stage: str | None = None  # the stage whose fit is under way: point<i>, grid (joint early stopping) or retrain
    fit: dict[str, Any] | None = None  # that fit's resumable state (``engine.fit``'s ``resume``)

    def selected_index(self) -> int:
        """The index of the chosen grid point (0 when no point was searched)."""
        return next((i for i, record in enumerate(self.grid) if record.selected), 0)

    def to_checkpoint(self) -> dict[str, Any]:
        """Tensors and plain values only, as ``torch.load(weights_only=True)`` reads them back."""
        state = {f.name: getattr(self, f.name) for f in fields(self)}  # shallow: tensors are not copied
        state["grid"] = [asdict(record) for record in self.grid]
        state["chosen_fit"] = asdict(self.chosen_fit) if self.chosen_fit is not None else None
        return state

    @classmethod
    def from_checkpoint(cls, saved: dict[str, Any]) -> RunState:
        state = cls(**saved)
        state.grid = [GridRecord(**record) for record in state.grid]
        state.chosen_fit = FitResult(**state.chosen_fit) if state.chosen_fit is not None else None
        return state


class Checkpoint:
    """The :class:`RunState` of a run, saved atomically beside its result and read back weights-only."""

    def __init__(self, path: Path, enabled: bool) -> None:
        self.path = path
        self.enabled = enabled

    def load(self) -> RunState:
        """The saved state, or a fresh one when there is none (or checkpoints are off)."""
        if not self.enabled or not self.path.is_file():
            return RunState()
        try:
            return RunState.from_checkpoint(torch.load(self.path, map_location="cpu", weights_only=True))
        except Exception as error:  # a truncated or foreign checkpoint restarts the run, never runs code
            log.warning("checkpoint %s is unreadable (%s); starting over", self.path, type(error).__name__)
            return RunState()

    def save(self, state: RunState) -> None:
        if self.enabled:
            temporary = self.path.with_name(f".{self.path.name}.tmp")
            torch.save(state.to_checkpoint(), temporary)
            temporary.replace(self.path)

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)
