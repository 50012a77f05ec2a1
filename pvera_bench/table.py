"""Tables from result files: ``python -m pvera_bench.table [--runs DIR] [--out DIR]`` (``make table``).

Reads every ``results/runs/**.json`` and writes ``results/tables/vtab1k.{md,csv,tex}`` and
``accuracy_vs_params.png``: per task the mean ± std of test top-1 over seeds, the
Natural / Specialized / Structured means, the mean of the 19 tasks and the mean of the three
group means, and the trainable parameters; published rows (``reference/published_vtab1k.csv``)
beside ours with their source and protocol. A mean needs all of its tasks: missing cells stay
empty. Runs on other tasks (the demo's mnist5k) get their own section; failed runs are listed
below the table and never averaged. The 19 tasks, their labels, groups and column order are the
dataset options of ``conf/dataset/``. ``--print`` shows one row per run instead (the demo uses it).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import pandas as pd

from pvera_bench.calibration import write_calibration
from pvera_bench.cli import run_cli
from pvera_bench.config import VTAB_GROUPS
from pvera_bench.errors import UserError
from pvera_bench.hyperparameters import write_hyperparameters
from pvera_bench.plots import accuracy_vs_params
from pvera_bench.runs import (
    METHOD_KEYS,
    PAPER_SETUP,
    RUN_COLUMNS,
    columns,
    folders,
    labels,
    load_results,
    method_labels,
    number,
    sections,
)
from pvera_bench.statistics import write_statistics

BACKBONE_NAMES = {"vit_b16_in21k": "ViT-B/16 IN21k", "dinov2_vitb14": "DINOv2 ViT-B/14"}
PUBLISHED = Path(__file__).parent / "reference" / "published_vtab1k.csv"  # copied from the field survey, with sources
PAPER_PROTOCOL = "PVeRA code"  # published rows whose protocol starts so sit beside the paper-setup runs


LONG_CSV_COLUMNS = ("backbone", "protocol", "method", "source", "seeds", "params_m", "task", "top1", "std")
GROUP_LABELS = [group.capitalize() for group in VTAB_GROUPS]
SUMMARY_COLUMNS = [*GROUP_LABELS, "Mean (19)", "Mean (groups)"]


def summarise(per_task: dict[str, float]) -> dict[str, float]:
    """Group means, mean of 19 and mean of group means, each only when all its tasks are there."""
    summary = {}
    for group, label in zip(VTAB_GROUPS, GROUP_LABELS, strict=True):
        values = [per_task.get(folder) for folder in folders(group)]
        summary[label] = sum(values) / len(values) if None not in values else None
    every = [per_task.get(folder) for folder in folders()]
    summary["Mean (19)"] = sum(every) / len(every) if None not in every else None
    groups = [summary[label] for label in GROUP_LABELS]
    summary["Mean (groups)"] = sum(groups) / 3 if None not in groups else None
    return summary


def our_rows(frame: pd.DataFrame) -> list[dict]:
    """One row per method (backbone, protocol, setup, adapter, sampling, variant): per-task mean ± std in %."""
    done = frame[(frame.status == "success") & frame.dataset.isin(folders())]
    done = done.assign(label=method_labels(done))
    rows = []
    for key, runs in done.groupby(METHOD_KEYS, sort=True):
        backbone, protocol, setup, _, _, _ = key
        label = runs.label.iloc[0]
        stats = runs.groupby("dataset").test_top1.agg(["mean", "std", "count"])
        per_task = {d: 100 * stats.loc[d, "mean"] for d in stats.index}
        rows.append(
            {
                "backbone": backbone,
                "protocol": f"{protocol} · {setup}",
                "method": label,
                "source": "pvera_bench (this repo)",
                "per_task": per_task,
                "std": {
                    d: 100 * (0.0 if math.isnan(stats.loc[d, "std"]) else stats.loc[d, "std"]) for d in stats.index
                },
                "seeds": int(stats["count"].max()),
                "params_m": runs.adapter_params.mean() / 1e6,
                **summarise(per_task),
            }
        )
    return rows


def reference_rows(ours: list[dict]) -> list[dict]:
    """Published rows for the backbones we have results for (per-task values, or a reported average).

    Rows of the PVeRA paper go into the table of our runs of its computation (experiment=pvera_paper) on the
    same backbone, when there are such runs; other published rows get a table of their own.
    """
    backbones = {row["backbone"] for row in ours}
    paper_sections = {row["backbone"]: row["protocol"] for row in ours if row["protocol"].endswith(PAPER_SETUP)}
    published = pd.read_csv(PUBLISHED)
    folder_of = {option: config.name for option, config in columns()}  # the CSV names tasks by dataset option
    rows = []
    for (method, backbone, source, protocol), values in published.groupby(["method", "backbone", "source", "protocol"]):
        matching = [k for k, name in BACKBONE_NAMES.items() if name == backbone and k in backbones]
        if not matching:
            continue
        per_task = {folder_of[t]: v for t, v in zip(values.task, values.top1, strict=True) if t in folder_of}
        reported = values[~values.task.isin(folder_of)].top1
        beside_ours = protocol.startswith(PAPER_PROTOCOL) and matching[0] in paper_sections
        rows.append(
            {
                "backbone": matching[0],
                "protocol": paper_sections[matching[0]] if beside_ours else f"published: {protocol}",
                "method": f"{method} (published)" if beside_ours else method,
                "source": source,
                "per_task": per_task,
                "std": {},
                "seeds": None,
                "params_m": None,
                "reported_average": float(reported.iloc[0]) if len(reported) else None,
                **summarise(per_task),
            }
        )
    return rows


def cell(row: dict, task: str) -> str:
    if task not in row["per_task"]:
        return ""
    mean = number(row["per_task"][task])
    return f"{mean} ± {number(row['std'][task])}" if task in row["std"] and row["seeds"] and row["seeds"] > 1 else mean


def markdown(rows: list[dict], failed: pd.DataFrame, others: pd.DataFrame) -> str:
    header = ["Method", *labels(), *SUMMARY_COLUMNS, "Reported avg", "Params (M)", "Seeds", "Source"]
    lines = [
        "# VTAB-1k test top-1 (%)",
        "",
        "Per task: mean ± std over seeds. Group means and both averages only when every task is present.",
        "",
    ]
    if not rows:
        lines += ["No results on the 19 VTAB-1k tasks yet.", ""]
    for (backbone, protocol), section in sections(rows):
        lines += [f"## {backbone} · {protocol}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for row in section:
            values = [
                row["method"],
                *[cell(row, t) for t in folders()],
                *[number(row[c], 2) for c in SUMMARY_COLUMNS],
                number(row.get("reported_average"), 1),
                number(row["params_m"], 3),
                "" if row["seeds"] is None else str(row["seeds"]),
                row["source"],
            ]
            lines.append("| " + " | ".join(values) + " |")
        lines.append("")
    if not others.empty:
        lines += ["## Other tasks", "", to_markdown(others), ""]
    lines += ["## Failed runs (not averaged)", ""]
    lines += [to_markdown(failed) if not failed.empty else "None.", ""]
    return "\n".join(lines)


def latex(rows: list[dict]) -> str:
    headers = [*labels(), *SUMMARY_COLUMNS]
    out = []
    for (backbone, protocol), section in sections(rows):
        out += [
            f"% {backbone} / {protocol}",
            "\\begin{tabular}{l" + "r" * (len(headers) + 1) + "}",
            "\\toprule",
            " & ".join(["Method", *headers, "Params (M)"]) + " \\\\",
            "\\midrule",
        ]
        for row in section:
            values = [
                row["method"],
                *[number(row["per_task"].get(t)) for t in folders()],
                *[number(row[c], 2) for c in SUMMARY_COLUMNS],
                number(row["params_m"], 3),
            ]
            out.append(" & ".join(v.replace("_", "\\_").replace("%", "\\%") for v in values) + " \\\\")
        out += ["\\bottomrule", "\\end{tabular}", ""]
    return "\n".join(out)


def long_csv(rows: list[dict]) -> pd.DataFrame:
    """One line per (method, task or summary column): the CSV that other tools read."""
    records = []
    for row in rows:
        base = {k: row[k] for k in LONG_CSV_COLUMNS[:6]}
        for task in folders():
            records.append({**base, "task": task, "top1": row["per_task"].get(task), "std": row["std"].get(task)})
        for column in SUMMARY_COLUMNS:
            records.append({**base, "task": column, "top1": row[column], "std": None})
        if row.get("reported_average") is not None:
            records.append({**base, "task": "reported average", "top1": row["reported_average"], "std": None})
    return pd.DataFrame(records, columns=LONG_CSV_COLUMNS)


def to_markdown(frame: pd.DataFrame, float_format: str = "{:.4f}") -> str:
    """A GitHub Markdown table; empty cells for missing values."""

    def text(value) -> str:
        if value is None or (isinstance(value, float) and pd.isna(value)):
            return ""
        return float_format.format(value) if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(frame.columns) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(text(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)


def write_tables(runs_dir: Path, out_dir: Path, plot_tasks: list[str] | None = None) -> list[Path]:
    """Write the four table files, then the calibration table and figures (:mod:`pvera_bench.calibration`);
    returns their paths."""
    frame = load_results(runs_dir)
    rows = our_rows(frame)
    rows = rows + reference_rows(rows)
    failed = frame[frame.status != "success"][
        ["adapter", "dataset", "backbone", "protocol", "seed", "status", "error", "path"]
    ]
    others = frame[(frame.status == "success") & ~frame.dataset.isin(folders())]
    others = (
        others.groupby(["backbone", "dataset", "protocol", "setup", "adapter", "sampling"])
        .test_top1.agg(["mean", "std", "count"])
        .reset_index()
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / name for name in ("vtab1k.md", "vtab1k.csv", "vtab1k.tex", "accuracy_vs_params.png")]
    paths[0].write_text(markdown(rows, failed, others))
    long_csv(rows).to_csv(paths[1], index=False)
    paths[2].write_text(latex(rows))
    accuracy_vs_params([row for row in rows if row["source"].startswith("pvera_bench")], paths[3])
    paths += write_statistics(statistics_frame(frame), out_dir, n_tasks_total=len(folders()))
    return paths + write_hyperparameters(frame, out_dir) + write_calibration(frame, out_dir, plot_tasks)


def statistics_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """The successful VTAB-1k runs as :mod:`pvera_bench.statistics` reads them: method, task, seed, score (%).

    A method is named by its row label, prefixed by its section when the runs span several (backbone,
    protocol, setup) sections, so that methods of different sections are never compared as one.
    """
    done = frame[(frame.status == "success") & frame.dataset.isin(folders())]
    labels = method_labels(done)
    sectioned = done[["backbone", "protocol", "setup"]].drop_duplicates().shape[0] > 1
    if sectioned:
        labels = done.backbone + " · " + done.protocol + " · " + done.setup + " · " + labels
    return pd.DataFrame({"method": labels, "task": done.dataset, "seed": done.seed, "score": 100 * done.test_top1})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=Path, default=Path("results/runs"), help="folder of result JSONs")
    parser.add_argument("--out", type=Path, default=Path("results/tables"), help="where the tables go")
    parser.add_argument("--print", action="store_true", help="print one row per run instead of writing tables")
    parser.add_argument("--backbone", help="with --print: keep only this backbone id")
    parser.add_argument("--dataset", help="with --print: keep only this dataset (folder name, as in result paths)")
    parser.add_argument(
        "--plot-task",
        action="append",
        help="draw the reliability and risk-coverage figures of this task only (repeatable; default: every task "
        "with stored predictions)",
    )
    args = parser.parse_args(argv)
    if not args.runs.is_dir():
        raise UserError(f"{args.runs} does not exist; run some experiments first (see README)")
    if args.print:
        frame = load_results(args.runs)
        for column in ("backbone", "dataset"):
            if getattr(args, column):
                frame = frame[frame[column] == getattr(args, column)]
        if frame.empty:
            raise UserError(f"no result files under {args.runs} match")
        print(to_markdown(frame[RUN_COLUMNS].sort_values(["dataset", "adapter", "seed"])))
        return
    for path in write_tables(args.runs, args.out, args.plot_task):
        print(f"wrote {path}")


if __name__ == "__main__":
    run_cli(main)
