"""The dataset options of ``conf/dataset/``: the one list of tasks, for data preparation and the tables."""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from pvera_bench.cli import CONF_DIR, one_line
from pvera_bench.config import VTAB_GROUPS, DatasetConfig, register_configs
from pvera_bench.errors import UserError


def dataset_options() -> list[str]:
    return sorted(path.stem for path in (Path(CONF_DIR) / "dataset").glob("*.yaml"))


def dataset_configs() -> dict[str, DatasetConfig]:
    """Every dataset option's typed config, by option name (``cifar100``; its folder is ``config.name``)."""
    register_configs()
    configs = {}
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        for option in dataset_options():
            try:
                configs[option] = OmegaConf.to_object(compose(overrides=[f"+dataset={option}"]).dataset)
            except (ValueError, OmegaConfBaseException) as error:
                raise UserError(f"conf/dataset/{option}.yaml: {one_line(error)}") from None
    return configs


def vtab_tasks() -> list[tuple[str, DatasetConfig]]:
    """(option, config) of the 19 VTAB-1k tasks, in the tables' column order (``dataset.order``)."""
    tasks = [(option, config) for option, config in dataset_configs().items() if config.group in VTAB_GROUPS]
    return sorted(tasks, key=lambda task: task[1].order)


def load_datasets(names: list[str]) -> list[tuple[str, DatasetConfig]]:
    """(option, config) for each name, an option or a folder name; ``all`` means the 19 VTAB-1k tasks."""
    if names == ["all"]:
        return vtab_tasks()
    configs = dataset_configs()
    by_folder = {config.name: option for option, config in configs.items()}
    chosen = []
    for name in names:
        option = name if name in configs else by_folder.get(name)
        if option is None:
            raise UserError(f"unknown task {name!r}; choose from all, {', '.join(configs)}")
        chosen.append((option, configs[option]))
    return chosen
