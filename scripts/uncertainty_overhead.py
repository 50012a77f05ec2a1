#!/usr/bin/env python
"""What the uncertainty metrics cost a run: ``python scripts/uncertainty_overhead.py [--runs DIR] [--repeats 5]``.

For every result under ``--runs`` with a predictions file, times ``uncertainty_metrics`` (calibration,
selective prediction, MC disagreement, temperature scaling, conformal sets, OOD detection) recomputed from
the stored predictions (median of ``--repeats``), plus writing the predictions file again, and prints both
against the run's wall time. The MC and OOD forward passes themselves are not included: they are the
model's work, not the metrics'.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from pvera_bench.artefacts.layout import RunFiles, read_result, result_files
from pvera_bench.artefacts.predictions import read_predictions, write_predictions
from pvera_bench.cli.runner import run_cli
from pvera_bench.config import ConformalConfig
from pvera_bench.core.errors import UserError
from pvera_bench.evaluation.uncertainty import uncertainty_metrics


def median_seconds(repeats: int, action: Callable, *arguments) -> float:
    """The median wall time of ``action(*arguments)`` over ``repeats`` calls."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        action(*arguments)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=Path, default=Path("results/runs"), help="folder of result JSONs")
    parser.add_argument("--repeats", type=int, default=5, help="timings per run; the median is shown")
    args = parser.parse_args(argv)
    rows = []
    for path in result_files(args.runs):
        record = read_result(path)
        if record.get("status") != "success" or not record.get("predictions"):
            continue
        stored = RunFiles(path).predictions
        predictions = read_predictions(stored)
        conformal = ConformalConfig(**record["config"].get("conformal", {}))
        metrics_s = median_seconds(args.repeats, uncertainty_metrics, predictions, conformal)
        with tempfile.TemporaryDirectory() as folder:
            copy = Path(folder) / stored.name
            write_s = median_seconds(args.repeats, write_predictions, copy, predictions, {})
        share = 100 * (metrics_s + write_s) / record["wall_s"]
        rows.append([str(path.relative_to(args.runs)), f"{record['wall_s']:.1f}", f"{metrics_s:.3f}", f"{write_s:.3f}"])
        rows[-1].append(f"{share:.2f} %")
    if not rows:
        raise UserError(f"no successful run with a predictions file under {args.runs}; run make demo first")
    header = ["run", "run wall (s)", "metrics (s)", "predictions file (s)", "share of the run"]
    print(pd.DataFrame(rows, columns=header).to_markdown(index=False, disable_numparse=True))


if __name__ == "__main__":
    run_cli(main)
