"""The dataset options of ``conf/dataset/``, looked up by option or folder name."""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir

from pvera_bench.cli import CONF_DIR
from pvera_bench.config import DatasetConfig, register_configs
from pvera_bench.errors import UserError


def dataset_options() -> list[str]:
    return sorted(path.stem for path in (Path(CONF_DIR) / "dataset").glob("*.yaml"))


def load_datasets(names: list[str]) -> list[tuple[str, DatasetConfig]]:
    """(option, config) for each name; ``all`` means every task with a TFDS source (the 19 of VTAB-1k)."""
    register_configs()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        configs = {
            option: compose(config_name="config", overrides=[f"dataset={option}"]).dataset
            for option in dataset_options()
        }
    by_folder = {config.name: option for option, config in configs.items()}
    if names == ["all"]:
        return [(option, config) for option, config in configs.items() if config.tfds is not None]
    chosen = []
    for name in names:
        option = name if name in configs else by_folder.get(name)
        if option is None:
            raise UserError(f"unknown task {name!r}; choose from all, {', '.join(configs)}")
        chosen.append((option, configs[option]))
    return chosen
