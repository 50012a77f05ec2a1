"""``pvera-bench run [overrides]`` (and ``python -m pvera_bench``): one run, or a sweep with ``-m``; Hydra's own
flags, launchers and sweepers work as in any Hydra app."""

from __future__ import annotations

import logging
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from pvera_bench.cli.runner import exit_with, run_cli
from pvera_bench.config import CONF_DIR, RENAMED_PROTOCOLS
from pvera_bench.core.errors import UserError
from pvera_bench.pipeline.validate import register_configs, validate

log = logging.getLogger("pvera_bench")
register_configs()


def notice_renamed_protocol() -> None:
    """One line on stderr when the command names a protocol by its old name."""
    old = HydraConfig.get().runtime.choices.get("protocol")
    if old in RENAMED_PROTOCOLS:
        new = RENAMED_PROTOCOLS[old]
        print(
            f"notice: protocol={old} is now called protocol={new} (the same protocol); results say {new}",
            file=sys.stderr,
        )


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def main(cfg: DictConfig) -> float:
    notice_renamed_protocol()
    try:
        validate(cfg)  # bad input fails here, before the training stack (timm, torchmetrics) is even imported
        from pvera_bench.pipeline.run import run

        return run(cfg).get("test_top1")
    except UserError as error:
        if HydraConfig.get().mode == RunMode.MULTIRUN:  # the sweep goes on; Hydra re-raises at its end
            log.error("%s", error)
            raise
        exit_with(error)  # a single run ends here, in one line, before Hydra adds its own report


def command(argv: list[str]) -> None:
    """Run Hydra's app on ``argv`` (Hydra reads its arguments from ``sys.argv``)."""
    sys.argv = [sys.argv[0], *argv]
    run_cli(main)
