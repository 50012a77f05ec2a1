"""The dataset options of ``pvera_bench/conf/dataset/``: the one list of tasks, for data preparation, OOD sets and
the tables."""

from __future__ import annotations

import functools
from pathlib import Path

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from pvera_bench.config import CONF_DIR, VTAB_GROUPS, DatasetConfig, OodConfig
from pvera_bench.core.errors import UserError, one_line

OOD_PRESETS = ("near", "far")  # the other tasks of the run's VTAB-1k group; the tasks of the other groups


def dataset_options() -> list[str]:
    return sorted(path.stem for path in (Path(CONF_DIR) / "dataset").glob("*.yaml"))


@functools.cache
def dataset_configs() -> dict[str, DatasetConfig]:
    """Every dataset option's typed config, by option name (``cifar100``; its folder is ``config.name``).

    Each option's YAML is merged onto the dataset schema directly (no Hydra composition), so this also
    works inside a running Hydra app.
    """
    configs = {}
    for option in dataset_options():
        try:
            values = OmegaConf.load(Path(CONF_DIR) / "dataset" / f"{option}.yaml")
            values.pop("defaults", None)
            configs[option] = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(DatasetConfig), values))
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


def ood_tasks(ood: OodConfig, dataset: DatasetConfig) -> list[DatasetConfig]:
    """The tasks whose test images are OOD inputs for a run on ``dataset``: ``ood.tasks`` with ``near`` and
    ``far`` expanded, the run's own task left out; ValueError (one line, naming the valid ones) for a bad name."""
    tasks = vtab_tasks()
    chosen: dict[str, DatasetConfig] = {}
    for name in ood.tasks:
        if name == "near":
            chosen |= {c.name: c for _, c in tasks if c.group == dataset.group}
        elif name == "far":
            chosen |= {c.name: c for _, c in tasks if c.group != dataset.group}
        else:
            try:
                [(_, config)] = load_datasets([name])
            except (UserError, ValueError):
                valid = ", ".join([*OOD_PRESETS, *dataset_options()])
                raise ValueError(f"ood.tasks: unknown task {name!r}; choose from {valid}") from None
            chosen[config.name] = config
    chosen.pop(dataset.name, None)
    if ood.tasks and not chosen:
        raise ValueError(
            f"ood.tasks={list(ood.tasks)} leaves no task other than {dataset.name} (group {dataset.group}); "
            "name other tasks, e.g. ood=far or ood.tasks=[dtd,svhn]"
        )
    return list(chosen.values())
