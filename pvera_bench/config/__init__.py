"""Config schemas only: the typed shape, defaults and range checks of every Hydra group (the YAML options live
in ``pvera_bench/conf/``), the adapter grid, and where that folder is. Nothing here knows the adapter registry or
the task list; the checks that need them are :mod:`pvera_bench.pipeline.validate`'s."""

from pathlib import Path

from pvera_bench.config.adapter import AdapterConfig, Convention
from pvera_bench.config.base import (
    RENAMED_PROTOCOLS,
    SPLITS,
    VTAB_GROUPS,
    SamplingMode,
    Scheduler,
    SelectMetric,
    Split,
    TaskGroup,
    require,
)
from pvera_bench.config.groups import (
    ADAPTER_QUIRKS,
    BackboneConfig,
    ConformalConfig,
    DataConfig,
    DatasetConfig,
    OodConfig,
    PathsConfig,
    ProtocolConfig,
    QuirksConfig,
    RunConfig,
    SamplingConfig,
    TfdsSource,
    TrainerConfig,
)

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"  # ships inside the package, so a wheel runs anywhere

__all__ = [
    "ADAPTER_QUIRKS",
    "CONF_DIR",
    "RENAMED_PROTOCOLS",
    "SPLITS",
    "VTAB_GROUPS",
    "AdapterConfig",
    "BackboneConfig",
    "ConformalConfig",
    "Convention",
    "DataConfig",
    "DatasetConfig",
    "OodConfig",
    "PathsConfig",
    "ProtocolConfig",
    "QuirksConfig",
    "RunConfig",
    "SamplingConfig",
    "SamplingMode",
    "Scheduler",
    "SelectMetric",
    "Split",
    "TaskGroup",
    "TfdsSource",
    "TrainerConfig",
    "require",
]
