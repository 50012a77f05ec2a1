"""A composed config made typed and checked, the registry included: the one place every entry point validates.

:func:`register_configs` stores the group schemas (and each registered adapter's) in Hydra's ConfigStore, so the
YAML options extend them and a misspelt key fails at composition; :func:`validate` builds the typed
:class:`~pvera_bench.config.RunConfig` and adds the checks that need the adapter registry and the task list.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import asdict, fields, is_dataclass
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from pvera_bench.adapters import ADAPTERS
from pvera_bench.config import (
    AdapterConfig,
    BackboneConfig,
    DatasetConfig,
    OodConfig,
    ProtocolConfig,
    RunConfig,
    SamplingConfig,
    TrainerConfig,
    require,
)
from pvera_bench.config.grid import grid_points
from pvera_bench.core.errors import UserError, one_line
from pvera_bench.core.plugins import config_search_path
from pvera_bench.data.tasks import ood_tasks


def has_key(node: Any, dotted_key: str) -> bool:
    """Whether ``a.b.c`` names a field (or dict key) of a typed config."""
    for part in dotted_key.split("."):
        if is_dataclass(node) and part in {f.name for f in fields(node)}:
            node = getattr(node, part)
        elif isinstance(node, Mapping) and part in node:
            node = node[part]
        else:
            return False
    return True


def adapter_config(hparams: Mapping[str, Any]) -> AdapterConfig:
    """The adapter's config dataclass built from its fields (``name`` included); ValueError names the adapter."""
    name = hparams.get("name")
    require(name in ADAPTERS, f"adapter.name={name!r} is not registered; choose one of {', '.join(sorted(ADAPTERS))}")
    try:
        return ADAPTERS[name].config_cls(**hparams)
    except (TypeError, ValueError) as error:
        raise ValueError(f"adapter={name}: {error}") from None


def check_grid_point(config: RunConfig, point: Mapping[str, Any]) -> None:
    """Every key of a grid point is a config key, and the adapter it gives is a valid one."""
    for key in point:
        require(has_key(config, key), f"grid.{config.adapter.name}: {key} is not a config key")
    adapter_values = {key.removeprefix("adapter."): v for key, v in point.items() if key.startswith("adapter.")}
    if adapter_values:
        adapter_config({**asdict(config.adapter), **adapter_values})


def unknown_keys(node: DictConfig, prefix: str = "") -> list[tuple[str, str, list[str]]]:
    """Every key of ``node`` (recursively) that its schema does not define, as (where, key, the keys defined
    there). Fields typed as plain dicts (``grid``, ``backbone.model_kwargs``, ``logger``) take any key."""
    schema = OmegaConf.get_type(node)
    if not is_dataclass(schema):
        return []
    names = [f.name for f in fields(schema)]
    found = []
    for key in node:
        if key not in names:
            found.append((prefix, str(key), names))
        elif isinstance(child := node._get_node(key), DictConfig):
            found += unknown_keys(child, f"{prefix}{key}.")
    return found


def check_keys(cfg: DictConfig) -> None:
    """A key the schema does not define is an error wherever it comes from (``+key``, ``++key``, a YAML option)."""
    unknown = unknown_keys(cfg)
    if unknown:
        prefix, key, names = unknown[0]
        closest = difflib.get_close_matches(key, names, n=1)
        if closest:
            hint = f"did you mean {prefix}{closest[0]}?"
        else:
            hint = f"{prefix.rstrip('.') or 'the config'} has {', '.join(names)}"
        raise UserError(
            f"{prefix}{key} is not a config key ({hint}); keys cannot be added with + or ++, except timm arguments "
            "under backbone.model_kwargs"
        )


def validate(cfg: DictConfig) -> RunConfig:
    """The typed config of a composed one; unknown keys, bad values and combinations end in a one-line UserError."""
    check_keys(cfg)
    try:
        adapter_config(OmegaConf.to_container(cfg.adapter, resolve=True))  # first: its message names the adapter
        config: RunConfig = OmegaConf.to_object(cfg)
        for point in grid_points(config):
            check_grid_point(config, point)
        if config.ood.tasks:
            ood_tasks(config.ood, config.dataset)  # a bad task name fails here, before anything is built
        return config
    except (TypeError, ValueError) as error:
        raise UserError(str(error)) from None
    except OmegaConfBaseException as error:
        raise UserError(one_line(error)) from None


def register_configs() -> None:
    """Store the group schemas so that the YAML options can extend them, and name the plugins' config packages
    (``${pvera_bench_searchpath:}``, Hydra's search path in ``conf/config.yaml``)."""
    search_path = config_search_path()  # a broken plugin fails here, in its own words
    OmegaConf.register_new_resolver("pvera_bench_searchpath", lambda: search_path, replace=True)
    cs = ConfigStore.instance()
    cs.store(name="run_schema", node=RunConfig)
    for group, node in [
        ("backbone", BackboneConfig),
        ("dataset", DatasetConfig),
        ("sampling", SamplingConfig),
        ("protocol", ProtocolConfig),
        ("trainer", TrainerConfig),
        ("ood", OodConfig),
    ]:
        cs.store(group=f"schema/{group}", name="base", node=node)
    for name, spec in ADAPTERS.items():
        cs.store(group="schema/adapter", name=name, node=spec.config_cls(name=name))
