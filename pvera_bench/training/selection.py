"""Grid search: fit every point of the adapter's grid on the train split and keep the best on val.

Each stage (a grid point, or the retrain of the chosen one) is fitted by a :class:`StageFitter`,
which checkpoints the run's :class:`~pvera_bench.state.RunState` after every epoch and resumes
a stage that was cut short. Points are fitted one after another, each stopping on its own, or,
with ``quirks.joint_early_stopping``, in lockstep as the official PVeRA code does
(:func:`search_jointly`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from omegaconf import DictConfig
from torch import nn

from pvera_bench.config import ProtocolConfig
from pvera_bench.config.grid import with_point
from pvera_bench.models.build import seeded_model
from pvera_bench.training.checkpoint import Checkpoint, GridRecord, RunState
from pvera_bench.training.inputs import TaskInputs
from pvera_bench.training.loggers import NullLogger
from pvera_bench.training.loop import EpochLoop, FitResult, Objective, fit, progress_bar
from pvera_bench.training.packed import Pack, log_groups, pack_groups, probe_loops

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

    def loop(
        self, cfg: DictConfig, model: nn.Module, train: str, val: str | None, resume: dict | None = None
    ) -> EpochLoop:
        """The epoch loop that trains ``model`` on split ``train``, validating on ``val``."""
        network, train_data, runtime = self.inputs.for_model(model, train)
        objective = Objective(
            adapter_lr=cfg.adapter.lr,
            regularization_weight=1.0 / cfg.dataset.beta,
            double_softmax=cfg.quirks.double_softmax,
            shuffle=not cfg.quirks.no_shuffle,
        )
        val_data = self.inputs.for_model(model, val)[1] if val else None
        return EpochLoop(network, train_data, val_data, runtime, cfg.trainer, cfg.protocol, objective, cfg.seed, resume)

    def fit(
        self, cfg: DictConfig, model: nn.Module, train: str, val: str | None, stage: str, state: RunState
    ) -> FitResult:
        """Train ``model`` on ``train`` (validating on ``val``); resumes if ``state`` was saved within ``stage``."""

        def on_epoch_end(record: dict, fit_state: Callable[[], dict]) -> None:
            self.logger.log({f"{stage}/{k}": v for k, v in record.items()})
            if self.checkpoint.enabled:  # the fit state copies the whole loop history: build it only to save it
                self.checkpoint.save(replace(state, stage=stage, fit=fit_state()))

        loop = self.loop(cfg, model, train, val, state.fit if state.stage == stage else None)
        return fit(loop, on_epoch_end, self.should_stop)


def needs_search(points: list[dict[str, Any]], protocol: ProtocolConfig) -> bool:
    """A single point that is retrained anyway needs no validation run."""
    return len(points) > 1 or protocol.retrain_split is None


def is_better(candidate: GridRecord, best: GridRecord | None, metric: str) -> bool:
    """Whether ``candidate`` beats ``best`` on val: lower loss, or higher top-1 with the loss breaking ties."""
    if best is None:
        return True
    if metric == "top1":
        return (candidate.val_top1, -candidate.val_loss) > (best.val_top1, -best.val_loss)
    return candidate.val_loss < best.val_loss


def grid_record(
    point: dict[str, Any], val: dict[str, float] | None, best_epoch: int, history: list[dict]
) -> GridRecord:
    """A fitted point: its kept epoch's val metrics, and the val loss of every epoch."""
    val = val or {}
    curve = [epoch["val_loss"] for epoch in history if "val_loss" in epoch]
    return GridRecord(point, val.get("loss"), val.get("nll"), val.get("top1"), best_epoch, len(history), curve)


def search_grid(cfg: DictConfig, points: list[dict[str, Any]], fitter: StageFitter, state: RunState) -> None:
    """Fit each grid point not yet in ``state.grid`` on the train split and mark the best on val in ``state``."""
    if cfg.quirks.joint_early_stopping and len(points) > 1:
        search_jointly(cfg, points, fitter, state)
        return
    if cfg.trainer.pack and len(points) - len(state.grid) > 1:
        search_packed(cfg, points, fitter, state)
        return
    protocol = cfg.protocol
    for index in range(len(state.grid), len(points)):
        point = points[index]
        point_cfg = with_point(cfg, point)
        log.info("grid point %d/%d %s", index + 1, len(points), point or "(the configured point)")
        model = fitter.new_model(point_cfg)
        fitted = fitter.fit(point_cfg, model, protocol.train_split, protocol.val_split, f"point{index}", state)
        keep(state, grid_record(point, fitted.val, fitted.best_epoch, fitted.history), model, fitted, protocol)
        state.stage, state.fit = None, None
        fitter.checkpoint.save(state)


def keep(state: RunState, record: GridRecord, model: nn.Module, fitted: FitResult, protocol: ProtocolConfig) -> None:
    """Add a fitted point to ``state.grid``, selecting it when it beats the choice so far on val."""
    best = next((r for r in state.grid if r.selected), None)
    if fitted.val is None or is_better(record, best, protocol.select_metric):
        select(state, record, model, fitted)
    state.grid.append(record)


def select(state: RunState, record: GridRecord, model: nn.Module, fitted: FitResult) -> None:
    """Make ``record`` the chosen point of ``state``, with ``model``'s trainable weights."""
    for earlier in state.grid:
        earlier.selected = False
    record.selected = True
    state.chosen_weights = {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}
    state.chosen_fit = fitted


def point_loops(
    cfg: DictConfig, points: list[dict[str, Any]], fitter: StageFitter, saved: list[dict | None]
) -> tuple[list[DictConfig], list[EpochLoop]]:
    """Each point's config and epoch loop, each built right after its model (as a point fitted alone is), the
    first ``len(saved)`` resumed from their saved states."""
    cfgs, loops = [], []
    for index, point in enumerate(points):
        point_cfg = with_point(cfg, point)
        model = fitter.new_model(point_cfg)
        resume = saved[index] if index < len(saved) else None
        cfgs.append(point_cfg)
        loops.append(fitter.loop(point_cfg, model, cfg.protocol.train_split, cfg.protocol.val_split, resume))
    return cfgs, loops


def search_packed(cfg: DictConfig, points: list[dict[str, Any]], fitter: StageFitter, state: RunState) -> None:
    """Fit the points not yet in ``state.grid`` in packs (:mod:`pvera_bench.training.packed`), each point stopping on
    its own; a pack's checkpoint holds the state of each of its points."""
    first = len(state.grid)
    saved = state.fit["members"] if state.stage == f"pack{first}" else []
    cfgs, loops = point_loops(cfg, points[first:], fitter, saved)
    probes = probe_loops(loops)
    groups = pack_groups(probes, loops, cfgs)
    log_groups(groups, probes, first)
    for group in groups:
        pack = Pack([loops[i] for i in group], len(group) > 1, draws=any(probes[i].drew for i in group))
        stage = f"pack{first + group[0]}"
        done = max(loop.loop.epoch for loop in pack.loops)
        bar = progress_bar(cfg.trainer.epochs, done, fitter.inputs.runtime.progress)
        while active := [i for i, loop in enumerate(pack.loops) if not loop.done()]:
            records = pack.run_epoch(active, fitter.should_stop)
            for i, record in zip(active, records, strict=True):
                fitter.logger.log({f"point{first + group[i]}/{k}": v for k, v in record.items()})
            bar.update(1)
            if fitter.checkpoint.enabled:
                members = [loop.state() for loop in pack.loops]
                fitter.checkpoint.save(replace(state, stage=stage, fit={"members": members}))
        bar.close()
        for index in group:
            fitted = loops[index].result()
            record = grid_record(points[first + index], fitted.val, fitted.best_epoch, fitted.history)
            record.packed_with = [first + i for i in group] if len(group) > 1 else []
            keep(state, record, loops[index].model, fitted, cfg.protocol)
        state.stage, state.fit = None, None
        fitter.checkpoint.save(state)


def search_jointly(cfg: DictConfig, points: list[dict[str, Any]], fitter: StageFitter, state: RunState) -> None:
    """The official PVeRA code's grid search (leofillioux/pvera ``utils/train.py``, lines 110-130): all points train
    in lockstep, an epoch each in turn, until every one has gone ``protocol.patience`` epochs without improving its own
    val loss.

    Whenever the lowest of the points' best val losses improves on the last saved one by more than
    ``protocol.min_rel_improvement``, that point and epoch become the choice; the last choice is kept.
    Each point keeps its own random streams, so it trains as it would alone; with ``trainer.pack`` the points
    share one forward pass, as in the official code, when they can (else they train in turn).
    """
    protocol, trainer = cfg.protocol, cfg.trainer
    saved = state.fit if state.stage == "grid" else {"members": [], "choice": None}
    cfgs, loops = point_loops(cfg, points, fitter, saved["members"])
    probes = probe_loops(loops) if trainer.pack else []
    packed = trainer.pack and len(pack_groups(probes, loops, cfgs)) == 1
    pack = Pack(loops, packed, draws=any(p.drew for p in probes))
    log.info("joint early stopping: the %d grid points train %s", len(points), "packed" if packed else "in turn")
    choice = saved["choice"]  # {"index", "loss", "epoch", "val", "weights"} of the last saved best
    bar = progress_bar(trainer.epochs, loops[0].loop.epoch, loops[0].runtime.progress)
    while loops[0].loop.epoch < trainer.epochs and not all(loop.stopped_early() for loop in loops):
        records = pack.run_epoch(list(range(len(loops))), fitter.should_stop)
        for index, record in enumerate(records):
            fitter.logger.log({f"point{index}/{k}": v for k, v in record.items()})
        index = min(range(len(loops)), key=lambda i: loops[i].loop.best_loss)
        best = loops[index].loop
        if choice is None or best.best_loss < choice["loss"] * (1 - protocol.min_rel_improvement):
            choice = {"index": index, "loss": best.best_loss, "epoch": best.best_epoch, "val": best.best_val}
            choice["weights"] = best.best_weights
        bar.update(1)
        if fitter.checkpoint.enabled:
            members = [loop.state() for loop in loops]
            fitter.checkpoint.save(replace(state, stage="grid", fit={"members": members, "choice": choice}))
    bar.close()
    for index, (point, loop) in enumerate(zip(points, loops, strict=True)):
        chosen = index == choice["index"]
        history = loop.loop.history
        record = grid_record(
            point,
            choice["val"] if chosen else loop.loop.best_val,
            choice["epoch"] if chosen else loop.loop.best_epoch,
            history,
        )
        record.packed_with = list(range(len(points))) if packed else []
        if chosen:
            loop.model.load_state_dict(choice["weights"], strict=False)
            fitted = FitResult(len(history), choice["epoch"], loop.images_per_s(), history, choice["val"])
            select(state, record, loop.model, fitted)
        state.grid.append(record)
    state.stage, state.fit = None, None
    fitter.checkpoint.save(state)
