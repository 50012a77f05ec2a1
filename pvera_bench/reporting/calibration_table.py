"""``calibration.{md,csv}`` and the reliability and risk-coverage figures of ``make table``, from the runs and
seed ensembles of :mod:`pvera_bench.reporting.calibration`."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import pandas as pd

from pvera_bench.artefacts.predictions import read_predictions
from pvera_bench.core.errors import UserError
from pvera_bench.reporting.calibration import (
    Group,
    Run,
    conformal_config,
    curve_entry,
    ensemble,
    ensemble_record,
    grouped,
    mean,
    successful_runs,
    value,
)
from pvera_bench.reporting.document import Document, Output, number
from pvera_bench.reporting.plots import reliability_diagrams, risk_coverage_plot
from pvera_bench.reporting.results import backbone_label, sections, task_label, task_order


@dataclass(frozen=True)
class Column:
    """One number of the table: where a result record keeps it, and how it is shown."""

    name: str  # CSV column
    header: str  # Markdown column
    keys: tuple[str, ...]  # path into the result record
    scale: float = 1.0  # 100: shown in percent
    digits: int = 4


COLUMNS = (
    Column("top1_pct", "Top-1 (%)", ("test_top1",), 100, 2),
    Column("nll", "NLL", ("test_nll",)),
    Column("ece", "ECE", ("test_ece",)),
    Column("brier", "Brier", ("uncertainty", "brier")),
    Column("aurc", "AURC", ("uncertainty", "aurc")),
    Column("nll_after_scaling", "NLL (TS)", ("uncertainty", "nll_after_scaling")),
    Column("mutual_information", "MI", ("uncertainty", "mutual_information")),
    Column("aps_coverage_pct", "APS cov. (%)", ("uncertainty", "conformal", "aps", "coverage"), 100, 1),
    Column("aps_set_size", "APS size", ("uncertainty", "conformal", "aps", "set_size"), 1, 3),
    Column("lac_coverage_pct", "LAC cov. (%)", ("uncertainty", "conformal", "lac", "coverage"), 100, 1),
    Column("lac_set_size", "LAC size", ("uncertainty", "conformal", "lac", "set_size"), 1, 3),
    Column("ood_auroc_msp", "OOD AUROC (MSP)", ("uncertainty", "ood", "mean", "msp", "auroc"), 1, 3),
    Column("ood_auroc_mi", "OOD AUROC (MI)", ("uncertainty", "ood", "mean", "mutual_information", "auroc"), 1, 3),
)
CSV_COLUMNS = ("backbone", "protocol", "method", "kind", "task", "seeds", *(c.name for c in COLUMNS))

TITLE = "Calibration and uncertainty on the test split"
HEADER = """Recomputed from what each run stored (its result JSON and its predictions file), never retrained.
One row per method and task: the mean over seeds of each run's value (a column's mean is over the seeds that
recorded it; empty where none did). Seeds: successful runs. Top-1: test accuracy. NLL: mean negative log-likelihood
of the true class. ECE: expected calibration error, 15 equal-width confidence bins. Brier: multi-class
Brier score (squared distance to the one-hot label, summed over classes). AURC: area under the risk-coverage
curve (error rate among the accepted images, most confident accepted first; lower is better). NLL (TS): test
NLL after temperature scaling fitted on val200. MI: mean mutual information between the prediction and the
random draw over the MC passes (sampling=mc only; 0 when the passes agree). APS / LAC cov. and size:
test coverage (share of images whose set holds the true class) and mean set size of split-conformal prediction
sets calibrated on val200{target}. OOD AUROC: how well the maximum softmax probability (MSP), or the MC
mutual information (MI, sampling=mc only), tells the test images from other tasks' images, averaged over the
OOD sets (0.5: chance). Rows "· ensemble of k seeds" average the k seeds' stored probabilities (and val, when
every seed stored it) and compute every column from the average; their MI and OOD cells stay empty (the passes
and the OOD sets are not averaged). "mean (k tasks)" averages the k task rows of a method with two or more
tasks (or of its ensembles); a column's mean needs every task.
"""


def plotted_tasks(runs: list[Run], requested: list[str] | None) -> list[str]:
    """The tasks that get figures: those requested (each must have stored predictions), else every such task."""
    available = sorted({run.task for run in runs if run.predictions is not None}, key=task_order)
    if requested is None:
        return available
    missing = [task for task in requested if task not in available]
    if missing:
        raise UserError(
            f"--plot-task {', '.join(missing)}: no stored predictions of a successful run on "
            f"{'that task' if len(missing) == 1 else 'those tasks'}; tasks with predictions: "
            f"{', '.join(available) or 'none'}"
        )
    return list(dict.fromkeys(requested))


def row(group: Group, kind: str, method: str, task: str, seeds: str, records: list[dict]) -> dict:
    backbone, protocol = group.first.section
    numbers = {}
    for c in COLUMNS:
        seed_mean = mean(value(r, c.keys) for r in records)
        numbers[c.name] = None if seed_mean is None else seed_mean * c.scale
    identity = {"backbone": backbone, "protocol": protocol, "method": method, "kind": kind, "task": task}
    return {**identity, "seeds": seeds, **numbers}


def task_mean(rows: list[dict], kind: str, method: str) -> dict:
    """The mean over a method's task rows; a column's mean needs every task."""
    counts = sorted({int(r["seeds"]) for r in rows})
    means = {}
    for c in COLUMNS:
        values = [r[c.name] for r in rows]
        means[c.name] = None if None in values else sum(values) / len(values)
    return {
        **{k: rows[0][k] for k in ("backbone", "protocol")},
        "method": method,
        "kind": kind,
        "task": f"mean ({len(rows)} tasks)",
        "seeds": str(counts[0]) if len(counts) == 1 else f"{counts[0]}–{counts[-1]}",
        **means,
    }


def calibration_rows(runs: list[Run], plot_tasks: Iterable[str] = ()) -> tuple[list[dict], list[str], dict]:
    """Table rows, notes, and per (backbone, task) in ``plot_tasks`` the figures' entries of every method."""
    plot_tasks = set(plot_tasks)
    rows, notes, curves = [], [], {}
    for groups in grouped(runs).values():
        per_run, ensembles = [], []
        for task, group in groups.items():
            label = group.first.label
            per_run.append(row(group, "runs", label, task, str(len(group.runs)), [r.record for r in group.runs]))
            rows.append(per_run[-1])
            averaged, used = ensemble(group)
            if averaged is not None:
                record = ensemble_record(averaged, conformal_config(used[0].record))
                name = f"{label} · ensemble of {len(used)} seeds"
                ensembles.append(row(group, "ensemble", name, task, str(len(used)), [record]))
                rows.append(ensembles[-1])
            if task in plot_tasks and used:
                if averaged is not None:
                    entry = curve_entry(label, f"ensemble of {len(used)} seeds", averaged["test"])
                else:
                    run = used[0]
                    entry = curve_entry(label, f"seed {run.seed}", read_predictions(run.predictions)["test"])
                backbone, protocol = group.first.section
                curves.setdefault((backbone, task), []).append({**entry, "section": protocol})
            notes += group.notes
        label = next(iter(groups.values())).first.label
        if len(per_run) > 1:
            rows.append(task_mean(per_run, "runs mean", label))
        if len(ensembles) > 1:
            rows.append(task_mean(ensembles, "ensemble mean", f"{label} · seed ensembles"))
    return rows, notes, curves


def coverage_target(runs: list[Run]) -> str:
    """The conformal sets' target coverage for the header, when every run that has sets used the same one."""
    miscoverages = {value(run.record, ("uncertainty", "conformal", "miscoverage")) for run in runs} - {None}
    return f" (target coverage {100 * (1 - miscoverages.pop()):g} %)" if len(miscoverages) == 1 else ""


def calibration_document(rows: list[dict], notes: list[str], target: str = "") -> Document:
    document = Document(TITLE).text(" ".join(HEADER.format(target=target).split()))
    if not rows:
        document.text("No successful runs yet.")
    header = ["Method", "Task", "Seeds", *(c.header for c in COLUMNS)]
    for (backbone, protocol), section in sections(rows):
        cells = [[r["method"], r["task"], r["seeds"], *(number(r[c.name], c.digits) for c in COLUMNS)] for r in section]
        document.heading(f"{backbone} · {protocol}").table(pd.DataFrame(cells, columns=header))
    document.heading("Notes")
    return document.bullets(notes) if notes else document.text("None.")


def write_calibration(frame: pd.DataFrame, out_dir, plot_tasks: list[str] | None = None) -> Output:
    """Write ``calibration.md``, ``calibration.csv`` and the figures of ``plot_tasks`` (default: every task with
    stored predictions) from ``load_results``'s frame."""
    out = Output(out_dir)
    runs = successful_runs(frame)
    chosen = plotted_tasks(runs, plot_tasks)
    rows, notes, curves = calibration_rows(runs, chosen)
    out.document("calibration", calibration_document(rows, notes, coverage_target(runs)))
    out.csv("calibration.csv", pd.DataFrame(rows, columns=list(CSV_COLUMNS)))
    for (backbone, task), entries in sorted(curves.items(), key=lambda item: (item[0][0], task_order(item[0][1]))):
        several = len({entry["section"] for entry in entries}) > 1
        for entry in entries:
            if several:
                entry["label"] += f" ({entry['section']})"
        title, caption = f"{task} · {backbone}", f"{backbone_label(backbone)} · {task_label(task)}"
        reliability = out.figure(f"reliability_{backbone}_{task}.png", f"Reliability diagrams · {caption}")
        reliability_diagrams(entries, title, reliability)
        risk_coverage_plot(
            entries, title, out.figure(f"risk_coverage_{backbone}_{task}.png", f"Risk-coverage · {title}")
        )
    return out
