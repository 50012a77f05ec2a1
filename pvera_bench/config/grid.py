"""The hyperparameter grid of an adapter: its points, and a config with one point set."""

from __future__ import annotations

import copy
import itertools
from typing import Any

from omegaconf import DictConfig, OmegaConf


def grid_points(cfg: Any) -> list[dict[str, Any]]:
    """Every combination of the adapter's grid values (``[{}]`` when it has no grid), from a composed
    ``DictConfig`` or a typed ``RunConfig``."""
    space = cfg.grid.get(cfg.adapter.name) or {}
    keys = sorted(space)
    return [dict(zip(keys, values, strict=True)) for values in itertools.product(*(space[k] for k in keys))] or [{}]


def with_point(cfg: DictConfig, point: dict[str, Any]) -> DictConfig:
    """A copy of the config with one grid point's values set."""
    updated = copy.deepcopy(cfg)
    for key, value in point.items():
        OmegaConf.update(updated, key, value, merge=False)
    return updated
