"""The figures of ``make table``: accuracy against parameters, reliability diagrams, risk-coverage curves."""

from __future__ import annotations

import io
from pathlib import Path

import pandas as pd

from pvera_bench.core.files import write_atomically
from pvera_bench.data.tasks import dataset_configs
from pvera_bench.reporting.results import task_order


def pyplot():
    """matplotlib's pyplot on the Agg backend (files only, no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(figure, path: Path, **savefig) -> None:
    """Write ``figure`` as a PNG atomically, then close it."""
    write_atomically(path, lambda file: figure.savefig(file, format="png", **savefig))
    pyplot().close(figure)


def accuracy_vs_params(rows: list[dict], path: Path) -> None:
    """Save :func:`accuracy_vs_params_figure` as a PNG."""
    save_figure(accuracy_vs_params_figure(rows), path, dpi=150)


def accuracy_vs_params_figure(rows: list[dict]):
    """Accuracy against trainable adapter parameters, one marker per method of ours.

    A method with all 19 tasks is placed at its mean of the three group means; one with fewer at the plain
    mean of the tasks it has, and its legend entry and the y axis say so.
    """
    plt = pyplot()
    figure, axes = plt.subplots(figsize=(7, 4.5))
    partial = False
    for row in rows:
        if row["params_m"] is None or not row["per_task"]:
            continue
        complete = row["Mean (groups)"] is not None
        accuracy = row["Mean (groups)"] if complete else sum(row["per_task"].values()) / len(row["per_task"])
        label = f"{row['method']} ({row['backbone']}, {row['protocol']})"
        if not complete:
            label += f" [partial: mean of {len(row['per_task'])} of 19 tasks]"
            partial = True
        axes.scatter(max(row["params_m"], 1e-4), accuracy, label=label)
    axes.set_xscale("log")
    axes.ticklabel_format(axis="y", useOffset=False, style="plain")  # no "1e-7+6.25" when the points are equal
    axes.set_xlabel("trainable adapter parameters (M, log scale; linear probe at 1e-4)")
    ylabel = "VTAB-1k test top-1 (%): mean of the 3 group means"
    axes.set_ylabel(ylabel + ("\n(partial rows: mean of the tasks they have)" if partial else ""))
    axes.grid(alpha=0.3)
    if axes.collections:
        axes.legend(fontsize=7, loc="best")
    else:
        axes.text(0.5, 0.5, "no results on the 19 VTAB-1k tasks yet", transform=axes.transAxes, ha="center")
    figure.tight_layout()
    return figure


def reliability_diagrams(entries: list[dict], title: str, path: Path) -> None:
    """One small reliability diagram per method: the accuracy of the test images in each equal-width confidence
    bin against the diagonal of perfect calibration (entries from :func:`pvera_bench.calibration.curve_entry`)."""
    import textwrap

    plt = pyplot()
    columns = min(3, len(entries))
    rows = -(-len(entries) // columns)
    figure, grid = plt.subplots(
        rows, columns, figsize=(3.6 * columns, 4.0 * rows + 0.4), sharey=True, squeeze=False, layout="constrained"
    )
    for axes in grid.flat[len(entries) :]:
        axes.set_visible(False)
    for axes, entry in zip(grid.flat, entries, strict=False):
        bins = entry["bins"]
        edges, width = bins["edges"], bins["edges"][1] - bins["edges"][0]
        filled = [(lo, acc) for lo, acc in zip(edges[:-1], bins["accuracy"], strict=True) if acc is not None]
        axes.bar(
            [lo for lo, _ in filled],
            [acc for _, acc in filled],
            width=width,
            align="edge",
            edgecolor="black",
            linewidth=0.5,
            alpha=0.8,
            label=f"{entry['source']}, ECE {entry['ece']:.3f}",
        )
        axes.plot([0, 1], [0, 1], "k--", linewidth=1, label="perfect calibration")
        axes.set_xlim(0, 1)
        axes.set_ylim(0, 1)
        axes.set_aspect("equal")
        axes.ticklabel_format(useOffset=False)
        axes.set_title("\n".join(textwrap.wrap(entry["label"], 40)), fontsize=8)
        axes.legend(fontsize=6.5, loc="upper left")
        axes.grid(alpha=0.3)
    for column in range(columns):  # the lowest panel of each column
        lowest = max(r for r in range(rows) if r * columns + column < len(entries))
        grid[lowest, column].set_xlabel("confidence (max. class probability),\n15 equal-width bins", fontsize=8)
    for axes in grid[:, 0]:
        axes.set_ylabel("accuracy of the test images in the bin", fontsize=8)
    figure.get_layout_engine().set(wspace=0.08)  # room between the panels' tick labels
    figure.suptitle(f"Reliability on {title} (test split)", fontsize=10)
    save_figure(figure, path, dpi=150, bbox_inches="tight")


def risk_coverage_plot(entries: list[dict], title: str, path: Path) -> None:
    """Selective risk against coverage, one line per method, the most confident test images accepted first
    (entries from :func:`pvera_bench.calibration.curve_entry`)."""
    plt = pyplot()
    figure, axes = plt.subplots(figsize=(7, 4.5))
    for entry in entries:
        axes.plot(
            entry["coverage"],
            entry["risk"],
            linewidth=1.2,
            label=f"{entry['label']} ({entry['source']}), AURC {entry['aurc']:.4f}",
        )
    axes.set_xlim(0, 1)
    axes.set_ylim(bottom=0)
    axes.ticklabel_format(useOffset=False)
    axes.set_xlabel("coverage: fraction of test images accepted, most confident first")
    axes.set_ylabel("selective risk: error rate among accepted images")
    axes.set_title(f"Risk-coverage on {title}", fontsize=10)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7, loc="best")
    figure.tight_layout()
    save_figure(figure, path, dpi=150)


def seed_bar_chart(runs: pd.DataFrame, title: str) -> bytes:
    """PNG of a grouped bar chart: per task and method, the mean test top-1 (%) over seeds, an error bar of
    ± one standard deviation over seeds (none with one seed) and a dot per seed."""
    plt = pyplot()
    labels = {config.name: config.label for config in dataset_configs().values()}
    tasks = sorted(runs.dataset.unique(), key=task_order)
    methods = sorted(runs.label.unique())
    width = 0.8 / len(methods)
    figure, axes = plt.subplots(figsize=(min(24.0, max(7.0, 1.6 + 0.35 * len(tasks) * max(2, len(methods)))), 4.6))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for m, method in enumerate(methods):
        mine = runs[runs.label == method]
        colour = colours[m % len(colours)]
        xs, means, stds = [], [], []
        for t, task in enumerate(tasks):
            values = 100 * mine[mine.dataset == task].test_top1.astype(float)
            if values.empty:
                continue
            x = t - 0.4 + width * (m + 0.5)
            xs.append(x)
            means.append(values.mean())
            stds.append(values.std() if len(values) > 1 else 0.0)
            axes.scatter([x] * len(values), values, s=10, color="black", zorder=3, linewidths=0)
        seeds = mine.groupby("dataset").seed.nunique()
        seed_text = f"{seeds.min()}" if seeds.min() == seeds.max() else f"{seeds.min()}-{seeds.max()}"
        axes.bar(xs, means, width=width * 0.92, color=colour, label=f"{method} ({seed_text} seeds)", zorder=2)
        axes.errorbar(xs, means, yerr=stds, fmt="none", ecolor="#333333", capsize=3, linewidth=1, zorder=4)
    axes.set_xticks(range(len(tasks)))
    rotate = len(tasks) > 6
    axes.set_xticklabels(
        [labels.get(t, t) for t in tasks], rotation=35 if rotate else 0, ha="right" if rotate else "center"
    )
    axes.set_xlim(-0.6, len(tasks) - 0.4)
    axes.set_ylabel("test top-1 (%)")
    axes.set_title(title, fontsize=9)
    axes.grid(axis="y", alpha=0.3, zorder=0)
    axes.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    plt.close(figure)
    return buffer.getvalue()
