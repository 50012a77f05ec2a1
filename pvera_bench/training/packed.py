"""Packed training (``trainer.pack``): a run's grid points train in one forward through the frozen backbone.

Each step stacks the points' batches (each point's own order), the frozen layers run once on the whole batch
and point i's adapter and head on chunk i (:func:`pvera_bench.models.packing.pack_models`); one backward, then
each point's own optimizer and schedule step. A point keeps everything it has alone: its data order, its random
streams (its layers draw from its own stream), its learning rate, schedule and early stopping; a point that
stops leaves the pack and the batch shrinks. So each point computes what it computes alone, up to the rounding
of the frozen layers' kernels on a larger batch.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import torch
from omegaconf import OmegaConf
from torch import nn

from pvera_bench.models.packing import Probe, pack_models, probe, same_trunk_tensors
from pvera_bench.models.runtime import RandomStreams, restore_rng, torch_rng_state
from pvera_bench.training.loop import EpochLoop, elapsed_since, never, train_epoch

log = logging.getLogger(__name__)


class Pack:
    """Epoch loops trained together: with ``packed``, one forward per step; without, one after another."""

    def __init__(self, loops: list[EpochLoop], packed: bool = True, draws: bool | None = None) -> None:
        """``draws``: whether the loops' models draw random numbers (None: probe them, when packed)."""
        self.loops = loops
        self.packed = packed
        self.streams = RandomStreams([])
        self.draws = packed and (any(p.drew for p in probe_loops(loops)) if draws is None else draws)
        self.trunks: dict[tuple[int, ...], nn.Module] = {}

    def trunk(self, active: tuple[int, ...]) -> nn.Module:
        """The trunk of the loops in ``active`` (rebuilt when a loop leaves the pack)."""
        if active not in self.trunks:
            streams = self.streams if self.draws else None
            self.trunks = {active: pack_models([self.loops[i].model for i in active], streams)}
        return self.trunks[active]

    def run_epoch(self, active: list[int], should_stop: Callable[[], bool] = never) -> list[dict[str, float]]:
        """One epoch of each loop in ``active``; returns their records."""
        if not self.packed:
            return [self.loops[i].run_epoch(should_stop) for i in active]
        loops = [self.loops[i] for i in active]
        states = []
        for loop in loops:
            loop.begin_epoch()
            states.append(torch_rng_state())
        self.streams.states = states
        start = time.perf_counter()
        losses = train_epoch(loops, self.trunk(tuple(active)), should_stop)
        seconds = elapsed_since(start, loops[0].runtime.device)
        records = []
        for loop, state, loss in zip(loops, self.streams.states, losses, strict=True):
            restore_rng({**loop.rng, **state, "shuffle": loop.generator.get_state()}, loop.generator)
            records.append(loop.end_epoch(loss, seconds))
        return records


def example(loop: EpochLoop) -> torch.Tensor:
    """The loop's first training image, as the model sees it."""
    return loop.runtime.normalize(loop.train.images[:1].to(loop.runtime.device))


def probe_loops(loops: list[EpochLoop]) -> list[Probe]:
    """Each loop's model probed on its first training image (:func:`pvera_bench.models.packing.probe`)."""
    return [probe(loop.model, example(loop)) for loop in loops]


def pack_groups(probes: list[Probe], loops: list[EpochLoop], cfgs: list) -> list[list[int]]:
    """The grid points, in order, cut into runs that can train packed: consecutive points with equal trainer,
    protocol and backbone settings, equal site output shapes and equal frozen tensors. A point whose frozen
    layers draw random numbers trains alone."""
    keys = [
        (OmegaConf.to_yaml(cfg.trainer), OmegaConf.to_yaml(cfg.protocol), OmegaConf.to_yaml(cfg.backbone), found.shapes)
        for found, cfg in zip(probes, cfgs, strict=True)
    ]
    groups: list[list[int]] = []
    for index, (key, found) in enumerate(zip(keys, probes, strict=True)):
        first = groups[-1][0] if groups else None
        if (
            first is not None
            and not found.frozen_drew
            and not probes[first].frozen_drew
            and keys[first] == key
            and same_trunk_tensors(loops[first].model, loops[index].model)
        ):
            groups[-1].append(index)
        else:
            groups.append([index])
    return groups


def log_groups(groups: list[list[int]], probes: list[Probe], offset: int) -> None:
    for group in groups:
        named = ", ".join(str(offset + i + 1) for i in group)
        if len(group) > 1:
            log.info("grid points %s train packed: one forward through the frozen backbone per step", named)
        elif probes[group[0]].frozen_drew:
            log.info("grid point %s trains alone: its frozen layers draw random numbers (stochastic depth?)", named)
        else:
            log.info(
                "grid point %s trains alone: no neighbour packs with it (their settings, frozen weights or "
                "activation shapes differ, or their frozen layers draw)",
                named,
            )
