"""``pvera-bench table [--runs DIR] [--out DIR] [--plot-task TASK] [--print]`` (``make table``): the tables of
:mod:`pvera_bench.reporting.tables` from the result files; ``--print`` shows one row per run instead (the demo
uses it)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pvera_bench.core.errors import UserError

RUNS, TABLES = Path("results/runs"), Path("results/tables")


def results_folder(parser: argparse.ArgumentParser) -> None:
    """The ``--runs`` option every analysis command has."""
    parser.add_argument("--runs", type=Path, default=RUNS, help="folder of result JSONs (default: %(default)s)")


def plot_task_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--plot-task",
        action="append",
        help="draw the reliability and risk-coverage figures of this task only (repeatable; default: every task "
        "with stored predictions)",
    )


def loaded(runs: Path):
    """The runs under ``runs`` (``load_results``), or a one-line error when the folder does not exist."""
    from pvera_bench.reporting.results import load_results

    if runs.exists() and not runs.is_dir():
        raise UserError(f"--runs {runs} is a file, not the folder of result files (results/runs)")
    if not runs.is_dir():
        raise UserError(f"{runs} does not exist; run some experiments first (see README)")
    frame = load_results(runs)
    for reason in frame.attrs["unreadable"]:
        print(f"warning: {reason} (left out of the tables)", file=sys.stderr)
    return frame


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="pvera-bench table", description=__doc__)
    results_folder(parser)
    parser.add_argument("--out", type=Path, default=TABLES, help="where the tables go (default: %(default)s)")
    parser.add_argument("--print", action="store_true", help="print one row per run instead of writing tables")
    parser.add_argument("--backbone", help="with --print: keep only this backbone id")
    parser.add_argument("--dataset", help="with --print: keep only this dataset (folder name, as in result paths)")
    plot_task_option(parser)
    args = parser.parse_args(argv)
    from pvera_bench.reporting.accuracy import display  # after the arguments: --help needs no torch
    from pvera_bench.reporting.results import RUN_COLUMNS
    from pvera_bench.reporting.tables import write_tables

    frame = loaded(args.runs)
    if args.print:
        for column in ("backbone", "dataset"):
            if getattr(args, column):
                frame = frame[frame[column] == getattr(args, column)]
        if frame.empty:
            raise UserError(f"no result files under {args.runs} match")
        runs = display(frame[RUN_COLUMNS].sort_values(["dataset", "adapter", "seed"]))
        print(runs.to_markdown(index=False, disable_numparse=True))
        return
    for path in write_tables(frame, args.out, args.plot_task).paths:
        print(f"wrote {path}")
