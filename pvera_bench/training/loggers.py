"""Experiment trackers, chosen by the ``logger`` config group and built with ``hydra.utils.instantiate``."""

from __future__ import annotations

from typing import Any


class NullLogger:
    """Logs nothing; the result JSON is the record."""

    def start(self, name: str, config: dict[str, Any]) -> None:
        pass

    def log(self, metrics: dict[str, Any]) -> None:
        pass

    def finish(self, summary: dict[str, Any]) -> None:
        pass


class WandbLogger(NullLogger):
    """Weights & Biases: the resolved config at start, per-epoch metrics, the final row as the summary.

    Args:
        project: W&B project.
        entity: W&B team or user (None: the default of the logged-in account).
        mode: offline (default: written under ``dir``, synced later with ``wandb sync``), online or disabled.
        dir: where offline runs are written (None: ./wandb).
    """

    def __init__(
        self, project: str = "pvera_bench", entity: str | None = None, mode: str = "offline", dir: str | None = None
    ) -> None:
        self.settings = {"project": project, "entity": entity, "mode": mode, "dir": dir}
        self.run = None

    def start(self, name: str, config: dict[str, Any]) -> None:
        import wandb  # imported here: nothing needs wandb unless logger=wandb

        self.run = wandb.init(name=name, config=config, reinit="finish_previous", **self.settings)

    def log(self, metrics: dict[str, Any]) -> None:
        self.run.log(metrics)

    def finish(self, summary: dict[str, Any]) -> None:
        self.run.summary.update(summary)
        self.run.finish()
