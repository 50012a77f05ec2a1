"""What a run's result file records: what ran, how it trained and tested, and the numbers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn

from pvera_bench.config import ConformalConfig
from pvera_bench.evaluation.predict import Predictions, prediction_metrics
from pvera_bench.evaluation.uncertainty import uncertainty_metrics
from pvera_bench.models.build import count_parameters, quirks_in_force
from pvera_bench.training.checkpoint import GridRecord
from pvera_bench.training.inputs import TaskInputs
from pvera_bench.training.loop import FitResult


@dataclass
class Outcome:
    """What the protocol produced: the tested model, how it trained, the searched grid and the test metrics."""

    model: nn.Module
    fitted: FitResult
    grid: list[GridRecord]
    predictions: dict[str, Predictions]  # test, and val when the tested model never trained on it
    train_wall_s: float

    @property
    def test(self) -> dict[str, float]:
        return prediction_metrics(self.predictions["test"])

    @property
    def chosen(self) -> GridRecord | None:
        return next((record for record in self.grid if record.selected), None)


def run_identity(cfg: DictConfig, status: str) -> dict[str, Any]:
    """The first keys of every result: its status and what ran."""
    return {
        "status": status,
        "adapter": cfg.adapter.name,
        "dataset": cfg.dataset.name,
        "group": cfg.dataset.group,
        "backbone": cfg.backbone.id,
        "pretrained": bool(cfg.backbone.pretrained or cfg.backbone.weights),
        "sampling": cfg.sampling.mode,
        "protocol": cfg.protocol.name,
        "convention": cfg.adapter.convention,
        "quirks": quirks_in_force(cfg),
        "seed": cfg.seed,
    }


def outcome_fields(outcome: Outcome, inputs: TaskInputs, conformal: ConformalConfig) -> dict[str, Any]:
    """The result's numbers: test and val metrics, what the predictions say beyond top-1, parameter counts,
    the grid, and how the training went."""
    test, fitted, chosen, device = outcome.test, outcome.fitted, outcome.chosen, inputs.runtime.device
    return {
        "test_top1": test["top1"],
        "test_nll": test["nll"],
        "test_ece": test["ece"],
        "val_top1": chosen.val_top1 if chosen else None,
        "val_nll": chosen.val_nll if chosen else None,
        "val_loss": chosen.val_loss if chosen else None,
        **({"test_predictive_std": test["predictive_std"]} if "predictive_std" in test else {}),
        "uncertainty": uncertainty_metrics(outcome.predictions, conformal),
        **count_parameters(outcome.model),
        "features_cached": inputs.uses_features(outcome.model),
        "grid_point": chosen.point if chosen else {},
        "grid": [record.as_json() for record in outcome.grid],
        "packed": any(record.packed_with for record in outcome.grid),  # trained packed (trainer.pack)
        "epochs_run": fitted.epochs_run,
        "best_epoch": fitted.best_epoch,
        "train_images_per_s": fitted.train_images_per_s,
        "peak_memory_mb": (torch.cuda.max_memory_allocated(device) / 2**20) if device.type == "cuda" else None,
        "device": str(device),
        "train_wall_s": outcome.train_wall_s,
    }
