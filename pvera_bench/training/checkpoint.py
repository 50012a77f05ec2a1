"""A run's progress as a checkpoint: every epoch leaves a :class:`RunState` of tensors and plain values beside the
result, written atomically and read back weights-only, so a run killed at any point resumes where it was and ends
with the same numbers."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from pvera_bench.core.files import load_tensors, write_atomically
from pvera_bench.training.loop import FitResult

log = logging.getLogger(__name__)


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
    packed_with: list[int] = field(default_factory=list)  # the points it trained packed with (itself included)

    def as_json(self) -> dict[str, Any]:
        """The point's entry in the result's ``grid`` (``selected`` only on the chosen one, ``packed_with`` only when
        packed)."""
        record = asdict(self)
        for flag in ("selected", "packed_with"):
            if not record[flag]:
                del record[flag]
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
            return RunState.from_checkpoint(load_tensors(self.path))
        except Exception as error:  # a truncated or foreign checkpoint restarts the run, never runs code
            log.warning("checkpoint %s is unreadable (%s); starting over", self.path, type(error).__name__)
            return RunState()

    def save(self, state: RunState) -> None:
        if self.enabled:
            checkpoint = state.to_checkpoint()
            write_atomically(self.path, lambda file: torch.save(checkpoint, file))

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)
