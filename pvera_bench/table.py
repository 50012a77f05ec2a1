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
import functools
import hashlib
import json
import math
from dataclasses import fields
from pathlib import Path

import pandas as pd

from pvera_bench.cli import run_cli
from pvera_bench.config import ADAPTER_QUIRKS, VTAB_GROUPS, DatasetConfig, QuirksConfig, TaskGroup
from pvera_bench.data.tasks import vtab_tasks
from pvera_bench.errors import UserError
from pvera_bench.plots import accuracy_vs_params
from pvera_bench.results import NON_IDENTITY_KEYS

BACKBONE_NAMES = {"vit_b16_in21k": "ViT-B/16 IN21k", "dinov2_vitb14": "DINOv2 ViT-B/14"}
PUBLISHED = Path(__file__).parent / "reference" / "published_vtab1k.csv"  # copied from the field survey, with sources
RUN_COLUMNS = (  # what each result file contributes to the tables, and the columns of --print
    "adapter dataset backbone sampling protocol setup seed status test_top1 val_top1 test_nll test_ece "
    "adapter_params head_params epochs_run wall_s"
).split()
# The quirks of experiment=pvera_paper that every adapter has: runs with all of them are the paper's computation.
PAPER_QUIRKS = {f.name for f in fields(QuirksConfig) if f.name not in ADAPTER_QUIRKS}
PAPER_SETUP = "official convention · official code's quirks (experiment=pvera_paper)"
PAPER_PROTOCOL = "PVeRA code"  # published rows whose protocol starts so sit beside the paper-setup runs
METHOD_KEYS = ["backbone", "protocol", "setup", "adapter", "sampling", "variant"]  # a row of the tables


LONG_CSV_COLUMNS = ("backbone", "protocol", "method", "source", "seeds", "params_m", "task", "top1", "std")
GROUP_LABELS = [group.capitalize() for group in VTAB_GROUPS]
SUMMARY_COLUMNS = [*GROUP_LABELS, "Mean (19)", "Mean (groups)"]


@functools.cache
def columns() -> tuple[tuple[str, DatasetConfig], ...]:
    """(option, config) of the 19 VTAB-1k tasks in column order; results name a task by its folder, ``name``."""
    return tuple(vtab_tasks())


def folders(group: TaskGroup | None = None) -> list[str]:
    """Folder names of the 19 tasks (or of one group's), in column order."""
    return [config.name for _, config in columns() if group in (None, config.group)]


def labels() -> list[str]:
    return [config.label for _, config in columns()]


def variant_of(record: dict) -> str:
    """Six hex digits of everything that defines a method but the task, seed and run-time settings."""
    config = record.get("config", {})
    defining = {k: config.get(k) for k in ("adapter", "grid", "protocol", "sampling", "trainer", "backbone")}
    for key in NON_IDENTITY_KEYS["trainer"]:
        (defining.get("trainer") or {}).pop(key, None)
    return hashlib.sha256(json.dumps(defining, sort_keys=True, default=str).encode()).hexdigest()[:6]


def setup_of(record: dict) -> str:
    """How a run computed, beyond its protocol: the adapter convention and the official code's quirks in force."""
    convention, quirks = record.get("convention"), set(record.get("quirks") or [])
    if convention is None:
        return "convention not recorded"
    if convention == "official" and quirks >= PAPER_QUIRKS:
        return PAPER_SETUP
    return f"{convention} convention" + (f" · quirks: {', '.join(sorted(quirks))}" if quirks else "")


def mc_dropout_of(record: dict) -> float | None:
    """The adapter dropout kept on in the MC passes of a ``sampling=mc`` run (None: no MC dropout)."""
    dropout = ((record.get("config") or {}).get("adapter") or {}).get("dropout")
    return dropout if record.get("sampling") == "mc" and dropout else None


def load_results(runs_dir: Path) -> pd.DataFrame:
    """One row per result JSON below ``runs_dir`` (missing keys stay empty); UserError if there is none."""
    rows = []
    for path in sorted(runs_dir.rglob("*.json")):
        try:
            record = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, ValueError) as error:
            raise UserError(f"{path}: not a readable result file ({error}); delete or fix it") from None
        if not isinstance(record, dict):
            raise UserError(f"{path}: not a result file (a JSON object); delete or fix it")
        rows.append(
            {key: record.get(key) for key in RUN_COLUMNS}
            | {
                "setup": setup_of(record),
                "variant": variant_of(record),
                "mc_dropout": mc_dropout_of(record),
                "error": record.get("error"),
                "path": str(path),
            }
        )
    if not rows:
        raise UserError(f"no result files under {runs_dir}; run some experiments first (see README)")
    return pd.DataFrame(rows, columns=[*RUN_COLUMNS, "variant", "mc_dropout", "error", "path"])


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


def method_labels(done: pd.DataFrame) -> pd.Series:
    """Per run, its method's row label: the adapter, its sampling mode unless ``mean`` (with the MC dropout rate),
    and the config digest where one (backbone, protocol, setup, adapter, sampling) ran under several
    configurations."""
    variants = done.groupby(METHOD_KEYS[:5]).variant.transform("nunique")
    modes = [
        "" if mode == "mean" else f" ({mode}{'' if pd.isna(dropout) else f', MC dropout {dropout:g}'})"
        for mode, dropout in zip(done.sampling, done.mc_dropout, strict=True)
    ]
    labels = done.adapter + pd.Series(modes, index=done.index, dtype=object)
    return labels + (" [" + done.variant + "]").where(variants > 1, "")


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


def number(value: float | None, digits: int = 1) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def cell(row: dict, task: str) -> str:
    if task not in row["per_task"]:
        return ""
    mean = number(row["per_task"][task])
    return f"{mean} ± {number(row['std'][task])}" if task in row["std"] and row["seeds"] and row["seeds"] > 1 else mean


def sections(rows: list[dict]) -> list[tuple[tuple[str, str], list[dict]]]:
    """Rows by (backbone, protocol), in order of first appearance: one table each."""
    grouped: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        grouped.setdefault((row["backbone"], row["protocol"]), []).append(row)
    return list(grouped.items())


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
    from pvera_bench.calibration import write_calibration  # imports this module

    frame = load_results(runs_dir)
    rows = our_rows(frame)
    rows = rows + reference_rows(rows)
    failed = frame[frame.status != "success"][
        ["adapter", "dataset", "backbone", "protocol", "seed", "status", "error", "path"]
    ]
    others = frame[(frame.status == "success") & ~frame.dataset.isin(folders())]
    others = (
        others.groupby(["backbone", "dataset", "protocol", "adapter", "sampling"])
        .test_top1.agg(["mean", "std", "count"])
        .reset_index()
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / name for name in ("vtab1k.md", "vtab1k.csv", "vtab1k.tex", "accuracy_vs_params.png")]
    paths[0].write_text(markdown(rows, failed, others))
    long_csv(rows).to_csv(paths[1], index=False)
    paths[2].write_text(latex(rows))
    accuracy_vs_params([row for row in rows if row["source"].startswith("pvera_bench")], paths[3])
    return paths + write_calibration(frame, out_dir, plot_tasks)


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
