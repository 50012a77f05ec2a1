"""The composed config of one run, and the checks across its groups that need no registry."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING

from pvera_bench.config.base import SelectMetric, require
from pvera_bench.config.grid import grid_points
from pvera_bench.config.groups import (
    BackboneConfig,
    ConformalConfig,
    DataConfig,
    DatasetConfig,
    OodConfig,
    PathsConfig,
    ProtocolConfig,
    QuirksConfig,
    SamplingConfig,
    TrainerConfig,
)

LOGGER_MODULE = "pvera_bench.training.loggers."


@dataclass
class RunConfig:
    """The composed config of one run; building it checks every group, and the groups against each other where
    no registry is needed (the grid points and OOD tasks are checked by :func:`pvera_bench.pipeline.validate`)."""

    adapter: Any = MISSING  # schema chosen by the adapter option, see pvera_bench.adapters
    dataset: DatasetConfig = MISSING
    backbone: BackboneConfig = MISSING
    sampling: SamplingConfig = MISSING
    protocol: ProtocolConfig = MISSING
    trainer: TrainerConfig = MISSING
    grid: dict[str, Any] = field(default_factory=dict)  # adapter name -> {config key: [values]}
    logger: Any = None  # _target_ of a pvera_bench.training.loggers class and its arguments
    quirks: QuirksConfig = field(default_factory=QuirksConfig)
    ood: OodConfig = field(default_factory=OodConfig)
    conformal: ConformalConfig = field(default_factory=ConformalConfig)
    data: DataConfig = field(default_factory=DataConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    seed: int = 0

    def __post_init__(self) -> None:
        require(self.seed >= 0, f"seed={self.seed} must be >= 0")
        logger_target = str((self.logger or {}).get("_target_", f"{LOGGER_MODULE}NullLogger"))
        require(
            logger_target.startswith(LOGGER_MODULE),
            f"logger._target_={logger_target} is not a class of {LOGGER_MODULE}: configs are data, and only "
            "pvera_bench's own loggers are instantiated from them",
        )
        points = grid_points(self)
        require(
            self.protocol.val_split is not None or len(points) == 1,
            "a grid needs protocol.val_split to choose a point (or use grid=none)",
        )
        require(
            not self.quirks.joint_early_stopping
            or (self.protocol.early_stopping and self.protocol.select_metric == SelectMetric.nll),
            "quirks.joint_early_stopping needs protocol.early_stopping=true and protocol.select_metric=nll "
            "(the official code's selection); use protocol=early_stop",
        )
