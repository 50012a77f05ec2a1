"""The accuracy table of ``make table``: ``results/tables/vtab1k.{md,csv,tex}``.

Per task the mean ± std of test top-1 over seeds, the Natural / Specialized / Structured means, the mean of the
19 tasks and the mean of the three group means, and the trainable parameters; published rows
(``published_vtab1k.csv`` beside this module) beside ours with their source and protocol. A mean needs all of its
tasks: missing cells stay empty. Runs on other tasks (the demo's mnist5k) get their own section; failed runs are
listed below the table and never averaged. The 19 tasks, their labels, groups and column order are the dataset
options of ``pvera_bench/conf/dataset/``.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from pvera_bench.config import VTAB_GROUPS
from pvera_bench.reporting.document import Document, latex_table, number
from pvera_bench.reporting.results import (
    BACKBONE_NAMES,
    METHOD_KEYS,
    PAPER_SETUP,
    columns,
    folders,
    labels,
    method_labels,
    sections,
)

PUBLISHED = Path(__file__).parent / "published_vtab1k.csv"  # published VTAB-1k numbers, with their sources
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


def published_label(method: str, adapter: str, beside_ours: bool) -> str:
    """A published row's method, with the adapter of ours that implements it (the CSV's ``ours`` column)."""
    label = f"{method} (published)" if beside_ours else method
    return f"{label} = ours: {adapter}" if adapter else label


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
    published["ours"] = published.ours.fillna("")
    grouped = published.groupby(["method", "ours", "backbone", "source", "protocol"])
    for (method, adapter, backbone, source, protocol), values in grouped:
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
                "method": published_label(method, adapter, beside_ours),
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


def section_frame(section: list[dict]) -> pd.DataFrame:
    """One table of the accuracy document: a row per method, display strings."""
    header = ["Method", *labels(), *SUMMARY_COLUMNS, "Reported avg", "Params (M)", "Seeds", "Source"]
    records = [
        [
            row["method"],
            *[cell(row, t) for t in folders()],
            *[number(row[c], 2) for c in SUMMARY_COLUMNS],
            number(row.get("reported_average"), 1),
            number(row["params_m"], 3),
            "" if row["seeds"] is None else str(row["seeds"]),
            row["source"],
        ]
        for row in section
    ]
    return pd.DataFrame(records, columns=header)


def accuracy_document(
    rows: list[dict], failed: pd.DataFrame, others: pd.DataFrame, unreadable: list[str] = ()
) -> Document:
    document = Document("VTAB-1k test top-1 (%)")
    document.text("Per task: mean ± std over seeds. Group means and both averages only when every task is present.")
    if not rows:
        document.text("No results on the 19 VTAB-1k tasks yet.")
    for (backbone, protocol), section in sections(rows):
        document.heading(f"{backbone} · {protocol}").table(section_frame(section))
    if not others.empty:
        document.heading("Other tasks").table(display(others))
    document.heading("Failed runs (not averaged)")
    if failed.empty:
        document.text("None.")
    else:
        document.table(display(failed))
    if unreadable:
        document.heading("Unreadable result files (left out)").bullets(unreadable)
    return document


def display(frame: pd.DataFrame, digits: int = 4) -> pd.DataFrame:
    """A frame's values as table cells: floats with ``digits`` decimals, missing values empty."""
    return frame.map(lambda v: number(v, digits) if isinstance(v, float) else "" if v is None else str(v))


def accuracy_latex(rows: list[dict]) -> str:
    """The accuracy tables as booktabs tabulars, one per (backbone, protocol); a comment when there is none."""
    if not rows:
        return "% No results on the 19 VTAB-1k tasks yet: no table.\n"
    tables = []
    for (backbone, protocol), section in sections(rows):
        frame = section_frame(section)
        frame = frame[["Method", *labels(), *SUMMARY_COLUMNS, "Params (M)"]]
        frame[labels()] = [[number(row["per_task"].get(t)) for t in folders()] for row in section]
        tables.append(latex_table(frame, f"{backbone} / {protocol}"))
    return "\n".join(tables)


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


def statistics_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """The successful VTAB-1k runs as :mod:`pvera_bench.reporting.statistics` reads them: method, task, seed, score (%).

    A method is named by its row label, prefixed by its section when the runs span several (backbone,
    protocol, setup) sections, so that methods of different sections are never compared as one.
    """
    done = frame[(frame.status == "success") & frame.dataset.isin(folders())]
    labels = method_labels(done)
    sectioned = done[["backbone", "protocol", "setup"]].drop_duplicates().shape[0] > 1
    if sectioned:
        labels = done.backbone + " · " + done.protocol + " · " + done.setup + " · " + labels
    return pd.DataFrame({"method": labels, "task": done.dataset, "seed": done.seed, "score": 100 * done.test_top1})
