"""Everything ``make table`` writes into ``results/tables/``, from the result files under ``results/runs/``:
the accuracy table (:mod:`~pvera_bench.reporting.accuracy`), the statistics
(:mod:`~pvera_bench.reporting.statistics_document`), the chosen hyperparameters
(:mod:`~pvera_bench.reporting.hyperparameters`) and the calibration table and figures
(:mod:`~pvera_bench.reporting.calibration_table`). The HTML report renders the same documents."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from pvera_bench.reporting.accuracy import (
    accuracy_document,
    accuracy_latex,
    long_csv,
    our_rows,
    reference_rows,
    statistics_frame,
)
from pvera_bench.reporting.calibration_table import write_calibration
from pvera_bench.reporting.document import Output
from pvera_bench.reporting.hyperparameters import write_hyperparameters
from pvera_bench.reporting.plots import accuracy_vs_params
from pvera_bench.reporting.results import folders
from pvera_bench.reporting.statistics_document import write_statistics

FAILED_COLUMNS = ["adapter", "dataset", "backbone", "protocol", "seed", "status", "error", "path"]
OTHER_TASK_KEYS = ["backbone", "dataset", "protocol", "setup", "adapter", "sampling"]


def write_accuracy(frame: pd.DataFrame, out_dir: Path) -> Output:
    """``vtab1k.{md,csv,tex}`` and ``accuracy_vs_params.png``."""
    out = Output(out_dir)
    rows = our_rows(frame)
    rows = rows + reference_rows(rows)
    failed = frame[frame.status != "success"][FAILED_COLUMNS]
    others = frame[(frame.status == "success") & ~frame.dataset.isin(folders())]
    others = others.groupby(OTHER_TASK_KEYS).test_top1.agg(["mean", "std", "count"]).reset_index()
    out.document("vtab1k", accuracy_document(rows, failed, others, frame.attrs.get("unreadable", [])))
    out.csv("vtab1k.csv", long_csv(rows))
    out.text("vtab1k.tex", accuracy_latex(rows))
    ours = [row for row in rows if row["source"].startswith("pvera_bench")]
    accuracy_vs_params(ours, out.figure("accuracy_vs_params.png", "Accuracy against trainable adapter parameters"))
    return out


def write_tables(frame: pd.DataFrame, out_dir: Path, plot_tasks: list[str] | None = None) -> Output:
    """Every table file and figure of the runs in ``frame`` (``load_results``'s); returns what was written."""
    out = write_accuracy(frame, out_dir)
    statistics = write_statistics(statistics_frame(frame), out_dir, n_tasks_total=len(folders()))
    for part in (statistics, write_hyperparameters(frame, out_dir), write_calibration(frame, out_dir, plot_tasks)):
        out.paths += part.paths
        out.documents |= part.documents
        out.figures += part.figures
    return out
