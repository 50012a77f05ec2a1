"""Tables from result files: ``python -m pvera_bench.table [--runs DIR] [--backbone ID] [--dataset NAME]``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

RUN_COLUMNS = [
    "adapter",
    "dataset",
    "backbone",
    "sampling",
    "protocol",
    "seed",
    "status",
    "test_top1",
    "val_top1",
    "test_nll",
    "test_ece",
    "adapter_params",
    "head_params",
    "epochs_run",
    "wall_s",
]


def load_results(runs_dir: Path) -> pd.DataFrame:
    """One row per result JSON below ``runs_dir`` (missing keys stay empty)."""
    rows = []
    for path in sorted(runs_dir.rglob("*.json")):
        record = json.loads(path.read_text())
        rows.append({key: record.get(key) for key in RUN_COLUMNS} | {"path": str(path)})
    return pd.DataFrame(rows, columns=[*RUN_COLUMNS, "path"])


def to_markdown(frame: pd.DataFrame, float_format: str = "{:.4f}") -> str:
    """A GitHub Markdown table; empty cells for missing values."""

    def cell(value) -> str:
        if value is None or (isinstance(value, float) and pd.isna(value)):
            return ""
        if isinstance(value, float):
            return float_format.format(value)
        return str(value)

    lines = ["| " + " | ".join(frame.columns) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=Path, default=Path("results/runs"), help="folder of result JSONs")
    parser.add_argument("--backbone", help="keep only this backbone id")
    parser.add_argument("--dataset", help="keep only this dataset")
    args = parser.parse_args(argv)
    frame = load_results(args.runs)
    for column in ("backbone", "dataset"):
        if getattr(args, column):
            frame = frame[frame[column] == getattr(args, column)]
    if frame.empty:
        raise SystemExit(f"error: no result files under {args.runs} match")
    shown = frame.drop(columns=["path"]).sort_values(["dataset", "adapter", "seed"])
    print(to_markdown(shown))


if __name__ == "__main__":
    main()
