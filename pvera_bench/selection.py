"""Grid search: fit every point of the adapter's grid on the train split and keep the best on val.

Each stage (a grid point, or the retrain of the chosen one) is fitted by a :class:`StageFitter`,
which checkpoints the run's :class:`~pvera_bench.state.RunState` after every epoch and resumes
a stage that was cut short.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from omegaconf import DictConfig
from torch import nn

from pvera_bench.config import ProtocolConfig
from pvera_bench.engine import FitResult, fit
from pvera_bench.features import TaskInputs
from pvera_bench.grid import with_point
from pvera_bench.loggers import NullLogger
from pvera_bench.model import seeded_model
from pvera_bench.state import Checkpoint, GridRecord, RunState

log = logging.getLogger(__name__)


class StageFitter:
    """Fits one stage of a run on the task's splits, saving the run state after every epoch.

    Args:
        inputs: the task's splits (and a linear probe's cached features).
        checkpoint: where the run state goes.
        logger: receives every epoch's record, keyed ``<stage>/<metric>``.
        should_stop: asked before every batch; true stops the fit with ``Preempted``.
    """

    def __init__(
        self, inputs: TaskInputs, checkpoint: Checkpoint, logger: NullLogger, should_stop: Callable[[], bool]
    ) -> None:
        self.inputs = inputs
        self.checkpoint = checkpoint
        self.logger = logger
        self.should_stop = should_stop

    def new_model(self, cfg: DictConfig, weights: dict | None = None) -> nn.Module:
        return seeded_model(cfg, self.inputs.runtime.device, weights)

    def fit(
        self, cfg: DictConfig, model: nn.Module, train: str, val: str | None, stage: str, state: RunState
    ) -> FitResult:
        """Train ``model`` on ``train`` (validating on ``val``); resumes if ``state`` was saved within ``stage``."""

        def on_epoch_end(record: dict, fit_state: Callable[[], dict]) -> None:
            self.logger.log({f"{stage}/{k}": v for k, v in record.items()})
            if self.checkpoint.enabled:  # the fit state copies the whole loop history: build it only to save it
                self.checkpoint.save(replace(state, stage=stage, fit=fit_state()))

        network, train_data, runtime = self.inputs.for_model(model, train)
        return fit(
            network,
            train_data,
            self.inputs.for_model(model, val)[1] if val else None,
            runtime,
            cfg.trainer,
            cfg.protocol,
            cfg.sampling,
            adapter_lr=cfg.adapter.lr,
            regularization_weight=1.0 / cfg.dataset.beta,
            seed=cfg.seed,
            resume=state.fit if state.stage == stage else None,
            on_epoch_end=on_epoch_end,
            should_stop=self.should_stop,
        )


def needs_search(points: list[dict[str, Any]], protocol: ProtocolConfig) -> bool:
    """A single point that is retrained anyway needs no validation run."""
    return len(points) > 1 or protocol.retrain_split is None


def is_better(candidate: GridRecord, best: GridRecord | None, metric: str) -> bool:
    """Whether ``candidate`` beats ``best`` on val: lower NLL, or higher top-1 with NLL breaking ties."""
    if best is None:
        return True
    if metric == "top1":
        return (candidate.val_top1, -candidate.val_nll) > (best.val_top1, -best.val_nll)
    return candidate.val_nll < best.val_nll


def search_grid(cfg: DictConfig, points: list[dict[str, Any]], fitter: StageFitter, state: RunState) -> None:
    """Fit each grid point not yet in ``state.grid`` on the train split and mark the best on val in ``state``."""
    protocol = cfg.protocol
    for index in range(len(state.grid), len(points)):
        point = points[index]
        point_cfg = with_point(cfg, point)
        log.info("grid point %d/%d %s", index + 1, len(points), point or "(the configured point)")
        model = fitter.new_model(point_cfg)
        fitted = fitter.fit(point_cfg, model, protocol.train_split, protocol.val_split, f"point{index}", state)
        val = fitted.val or {}
        record = GridRecord(point, val.get("nll"), val.get("top1"), fitted.best_epoch, fitted.epochs_run)
        best = next((r for r in state.grid if r.selected), None)
        if fitted.val is None or is_better(record, best, protocol.select_metric):
            for earlier in state.grid:
                earlier.selected = False
            record.selected = True
            state.chosen_weights = {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}
            state.chosen_fit = fitted
        state.grid.append(record)
        state.stage, state.fit = None, None
        fitter.checkpoint.save(state)
