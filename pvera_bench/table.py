"""Tables from result files: ``python -m pvera_bench.table [--runs DIR] [--out DIR]`` (``make table``).

Reads every ``results/runs/**.json`` and writes ``results/tables/vtab1k.{md,csv,tex}`` and
``accuracy_vs_params.png``: per task the mean ± std of test top-1 over seeds, the
Natural / Specialized / Structured means, the mean of the 19 tasks and the mean of the three
group means, and the trainable parameters; published rows (``reference/published_vtab1k.csv``)
beside ours with their source and protocol. A mean needs all of its tasks: missing cells stay
empty. Failed runs are listed below the table and never averaged. ``--print`` shows one row
per run instead (the demo uses it).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
from pathlib import Path

import pandas as pd

from pvera_bench.results import NON_IDENTITY_KEYS

# (result folder name, dataset option, short label) in the usual column order
TASKS = {
    "natural": [
        ("cifar", "cifar100", "CIFAR-100"),
        ("caltech101", "caltech101", "Caltech101"),
        ("dtd", "dtd", "DTD"),
        ("oxford_flowers102", "oxford_flowers102", "Flowers102"),
        ("oxford_iiit_pet", "oxford_iiit_pet", "Pets"),
        ("svhn", "svhn", "SVHN"),
        ("sun397", "sun397", "Sun397"),
    ],
    "specialized": [
        ("patch_camelyon", "patch_camelyon", "Camelyon"),
        ("eurosat", "eurosat", "EuroSAT"),
        ("resisc45", "resisc45", "Resisc45"),
        ("diabetic_retinopathy", "diabetic_retinopathy", "Retinopathy"),
    ],
    "structured": [
        ("clevr_count", "clevr_count", "Clevr-Count"),
        ("clevr_dist", "clevr_dist", "Clevr-Dist"),
        ("dmlab", "dmlab", "DMLab"),
        ("kitti", "kitti", "KITTI-Dist"),
        ("dsprites_loc", "dsprites_loc", "dSpr-Loc"),
        ("dsprites_ori", "dsprites_ori", "dSpr-Ori"),
        ("smallnorb_azi", "smallnorb_azi", "sNORB-Azim"),
        ("smallnorb_ele", "smallnorb_ele", "sNORB-Elev"),
    ],
}
GROUP_LABELS = {"natural": "Natural", "specialized": "Specialized", "structured": "Structured"}
ALL_TASKS = [folder for tasks in TASKS.values() for folder, _, _ in tasks]
LABELS = {folder: label for tasks in TASKS.values() for folder, _, label in tasks}
OPTION_TO_FOLDER = {option: folder for tasks in TASKS.values() for folder, option, _ in tasks}
BACKBONE_NAMES = {"vit_b16_in21k": "ViT-B/16 IN21k", "dinov2_vitb14": "DINOv2 ViT-B/14"}
PUBLISHED = Path(__file__).parent / "reference" / "published_vtab1k.csv"  # copied from the field survey, with sources
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


def variant_of(record: dict) -> str:
    """Six hex digits of everything that defines a method but the task, seed and run-time settings."""
    config = record.get("config", {})
    defining = {k: config.get(k) for k in ("adapter", "grid", "protocol", "sampling", "trainer", "backbone")}
    for key in NON_IDENTITY_KEYS["trainer"]:
        (defining.get("trainer") or {}).pop(key, None)
    return hashlib.sha256(json.dumps(defining, sort_keys=True, default=str).encode()).hexdigest()[:6]


def load_results(runs_dir: Path) -> pd.DataFrame:
    """One row per result JSON below ``runs_dir`` (missing keys stay empty)."""
    rows = []
    for path in sorted(runs_dir.rglob("*.json")):
        record = json.loads(path.read_text())
        rows.append(
            {key: record.get(key) for key in RUN_COLUMNS}
            | {"variant": variant_of(record), "error": record.get("error"), "path": str(path)}
        )
    return pd.DataFrame(rows, columns=[*RUN_COLUMNS, "variant", "error", "path"])


def summarise(per_task: dict[str, float]) -> dict[str, float]:
    """Group means, mean of 19 and mean of group means, each only when all its tasks are there."""
    summary = {}
    for group, tasks in TASKS.items():
        values = [per_task.get(folder) for folder, _, _ in tasks]
        summary[GROUP_LABELS[group]] = sum(values) / len(values) if None not in values else None
    every = [per_task.get(folder) for folder in ALL_TASKS]
    summary["Mean (19)"] = sum(every) / len(every) if None not in every else None
    groups = [summary[label] for label in GROUP_LABELS.values()]
    summary["Mean (groups)"] = sum(groups) / 3 if None not in groups else None
    return summary


def our_rows(frame: pd.DataFrame) -> list[dict]:
    """One row per method (backbone, protocol, adapter, sampling, variant): per-task mean ± std in %."""
    done = frame[(frame.status == "success") & frame.dataset.isin(ALL_TASKS)]
    rows = []
    keys = ["backbone", "protocol", "adapter", "sampling", "variant"]
    ambiguous = done.groupby(keys[:4]).variant.nunique()
    for key, runs in done.groupby(keys, sort=True):
        backbone, protocol, adapter, sampling, variant = key
        label = adapter + ("" if sampling == "mean" else f" ({sampling})")
        if ambiguous[key[:4]] > 1:
            label += f" [{variant}]"
        stats = runs.groupby("dataset").test_top1.agg(["mean", "std", "count"])
        per_task = {d: 100 * stats.loc[d, "mean"] for d in stats.index}
        rows.append(
            {
                "backbone": backbone,
                "protocol": protocol,
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


def reference_rows(backbones: set[str]) -> list[dict]:
    """Published rows for the backbones we have results for (per-task values, or a reported average)."""
    published = pd.read_csv(PUBLISHED)
    rows = []
    for (method, backbone, source, protocol), values in published.groupby(["method", "backbone", "source", "protocol"]):
        ours = [k for k, name in BACKBONE_NAMES.items() if name == backbone and k in backbones]
        if not ours:
            continue
        per_task = {
            OPTION_TO_FOLDER[t]: v for t, v in zip(values.task, values.top1, strict=True) if t in OPTION_TO_FOLDER
        }
        reported = values[~values.task.isin(OPTION_TO_FOLDER)].top1
        rows.append(
            {
                "backbone": ours[0],
                "protocol": f"published: {protocol}",
                "method": method,
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


SUMMARY_COLUMNS = [*GROUP_LABELS.values(), "Mean (19)", "Mean (groups)"]


def markdown(rows: list[dict], failed: pd.DataFrame, others: pd.DataFrame) -> str:
    header = [
        "Method",
        *[LABELS[t] for t in ALL_TASKS],
        *SUMMARY_COLUMNS,
        "Reported avg",
        "Params (M)",
        "Seeds",
        "Source",
    ]
    lines = [
        "# VTAB-1k test top-1 (%)",
        "",
        "Per task: mean ± std over seeds. Group means and both averages only when every task is present.",
        "",
    ]
    for (backbone, protocol), section in pd.DataFrame(rows).groupby(["backbone", "protocol"], sort=False):
        lines += [f"## {backbone} · {protocol}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for row in section.to_dict("records"):
            values = [
                row["method"],
                *[cell(row, t) for t in ALL_TASKS],
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
    columns = [*[LABELS[t] for t in ALL_TASKS], *SUMMARY_COLUMNS]
    out = []
    for (backbone, protocol), section in pd.DataFrame(rows).groupby(["backbone", "protocol"], sort=False):
        out += [
            f"% {backbone} / {protocol}",
            "\\begin{tabular}{l" + "r" * (len(columns) + 1) + "}",
            "\\toprule",
            " & ".join(["Method", *columns, "Params (M)"]) + " \\\\",
            "\\midrule",
        ]
        for row in section.to_dict("records"):
            values = [
                row["method"],
                *[number(row["per_task"].get(t)) for t in ALL_TASKS],
                *[number(row[c], 2) for c in SUMMARY_COLUMNS],
                number(row["params_m"], 3),
            ]
            out.append(" & ".join(v.replace("_", "\\_").replace("%", "\\%") for v in values) + " \\\\")
        out += ["\\bottomrule", "\\end{tabular}", ""]
    return "\n".join(out)


def long_csv(rows: list[dict]) -> pd.DataFrame:
    records = []
    for row in rows:
        base = {k: row[k] for k in ("backbone", "protocol", "method", "source", "seeds", "params_m")}
        for task in ALL_TASKS:
            records.append({**base, "task": task, "top1": row["per_task"].get(task), "std": row["std"].get(task)})
        for column in SUMMARY_COLUMNS:
            records.append({**base, "task": column, "top1": row[column], "std": None})
        if row.get("reported_average") is not None:
            records.append({**base, "task": "reported average", "top1": row["reported_average"], "std": None})
    return pd.DataFrame(records)


def plot(rows: list[dict], path: Path) -> None:
    """Accuracy against trainable adapter parameters, one marker per method of ours."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5))
    for row in rows:
        if row["params_m"] is None or not row["per_task"]:
            continue
        complete = row["Mean (groups)"] is not None
        accuracy = row["Mean (groups)"] if complete else sum(row["per_task"].values()) / len(row["per_task"])
        label = f"{row['method']} ({row['backbone']}, {row['protocol']})"
        if not complete:
            label += f" [partial: {len(row['per_task'])}/19 tasks]"
        axes.scatter(max(row["params_m"], 1e-4), accuracy, label=label)
    axes.set_xscale("log")
    axes.set_xlabel("trainable adapter parameters (M, log scale; linear probe at 1e-4)")
    axes.set_ylabel("VTAB-1k top-1 (%), mean of group means")
    axes.grid(alpha=0.3)
    if axes.collections:
        axes.legend(fontsize=7, loc="best")
    figure.tight_layout()
    figure.savefig(path, dpi=150)
    plt.close(figure)


def to_markdown(frame: pd.DataFrame, float_format: str = "{:.4f}") -> str:
    """A GitHub Markdown table; empty cells for missing values."""

    def text(value) -> str:
        if value is None or (isinstance(value, float) and pd.isna(value)):
            return ""
        return float_format.format(value) if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(frame.columns) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(text(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)


def write_tables(runs_dir: Path, out_dir: Path) -> list[Path]:
    """Write the four table files; returns their paths."""
    frame = load_results(runs_dir)
    rows = our_rows(frame)
    rows = rows + reference_rows({row["backbone"] for row in rows})
    failed = frame[frame.status != "success"][
        ["adapter", "dataset", "backbone", "protocol", "seed", "status", "error", "path"]
    ]
    others = frame[(frame.status == "success") & ~frame.dataset.isin(ALL_TASKS)]
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
    plot([row for row in rows if row["source"].startswith("pvera_bench")], paths[3])
    return paths


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=Path, default=Path("results/runs"), help="folder of result JSONs")
    parser.add_argument("--out", type=Path, default=Path("results/tables"), help="where the tables go")
    parser.add_argument("--print", action="store_true", help="print one row per run instead of writing tables")
    parser.add_argument("--backbone", help="with --print: keep only this backbone id")
    parser.add_argument("--dataset", help="with --print: keep only this dataset")
    args = parser.parse_args(argv)
    if not args.runs.is_dir():
        raise SystemExit(f"error: {args.runs} does not exist; run some experiments first (see README)")
    if args.print:
        frame = load_results(args.runs)
        for column in ("backbone", "dataset"):
            if getattr(args, column):
                frame = frame[frame[column] == getattr(args, column)]
        if frame.empty:
            raise SystemExit(f"error: no result files under {args.runs} match")
        print(to_markdown(frame[RUN_COLUMNS].sort_values(["dataset", "adapter", "seed"])))
        return
    for path in write_tables(args.runs, args.out):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
