"""A run's config composed from Hydra overrides outside a Hydra app (``pvera-bench params``, tests, notebooks)."""

from __future__ import annotations

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from pvera_bench.config import CONF_DIR
from pvera_bench.pipeline.validate import register_configs


def compose_config(overrides: list[str]) -> DictConfig:
    """The config ``pvera-bench run <overrides>`` would run, not yet validated."""
    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))
