"""``pvera-bench report [--runs DIR] [--tables DIR] [--out FILE]`` (``make report``): the tables, then one
self-contained HTML page of them, the figures and each run's provenance (:mod:`pvera_bench.reporting.report`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from pvera_bench.cli.table import TABLES, loaded, plot_task_option, results_folder


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="pvera-bench report", description=__doc__)
    results_folder(parser)
    parser.add_argument("--tables", type=Path, default=TABLES, help="where the tables go (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=Path("results/report.html"), help="the HTML file to write")
    plot_task_option(parser)
    args = parser.parse_args(argv)
    from pvera_bench.reporting.report import write_report  # after the arguments: --help needs no torch

    for path in write_report(loaded(args.runs), args.runs, args.tables, args.out, args.plot_task).paths:
        print(f"wrote {path}")
