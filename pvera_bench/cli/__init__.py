"""The ``pvera-bench`` command: one console entry point with a subcommand per job.

Each subcommand's module is imported only when it runs, so ``pvera-bench --help`` is instant. The
``python -m pvera_bench[.table|.report|.export|.params]`` forms call the same subcommands.
"""

from __future__ import annotations

import importlib
import sys

from pvera_bench.cli.runner import exit_with, run_cli
from pvera_bench.core.errors import UserError

# subcommand -> (module under pvera_bench.cli, what it does)
COMMANDS = {
    "run": ("hydra_app", "train and test one configuration; -m sweeps (Hydra overrides: adapter=lora dataset=dtd ...)"),
    "table": ("table", "results/runs/**.json -> results/tables/ (accuracy, statistics, calibration, hyperparameters)"),
    "report": ("report", "one self-contained HTML page of the tables, figures and provenance"),
    "params": ("params", "trainable-parameter counts of a configuration (Hydra overrides), no data needed"),
    "export": ("export", "a run's adapter as a Hugging Face PEFT adapter folder (optionally pushed to the hub)"),
    "prepare": ("prepare", "build VTAB-1k task folders from TFDS (needs network and TensorFlow, or --mock)"),
    "reproduce": ("reproduce", "print the sweep that reproduces the PVeRA paper's table, with projected GPU-hours"),
}


def usage() -> str:
    rows = "\n".join(f"  {name:<10} {text}" for name, (_, text) in COMMANDS.items())
    return (
        "usage: pvera-bench <command> [arguments]\n\n"
        f"commands:\n{rows}\n\n"
        "`pvera-bench <command> --help` describes each; `pvera-bench run --help` lists the config groups."
    )


def run_as_module(module_name: str, command: str) -> None:
    """What ``python -m pvera_bench.<command>`` runs: ``pvera-bench <command>`` with the module's arguments."""
    if module_name == "__main__":
        main([command, *sys.argv[1:]])


def main(argv: list[str] | None = None) -> None:
    """Dispatch ``pvera-bench <command> [arguments]`` to the command's module."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        sys.exit(0 if argv else 2)
    name, arguments = argv[0], argv[1:]
    if name not in COMMANDS:
        print(
            f"error: unknown command {name!r}; choose one of {', '.join(COMMANDS)} (pvera-bench --help)",
            file=sys.stderr,
        )
        sys.exit(2)
    try:
        module = importlib.import_module(f"pvera_bench.cli.{COMMANDS[name][0]}")
    except UserError as error:  # e.g. an installed adapter plugin that fails to import (pvera_bench.core.plugins)
        exit_with(error)
    if name == "run":
        module.command(arguments)
    else:
        run_cli(lambda: module.main(arguments))
