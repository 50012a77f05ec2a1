"""The figures of ``make table``: accuracy against parameters, reliability diagrams, risk-coverage curves."""

from __future__ import annotations

from pathlib import Path


def pyplot():
    """matplotlib's pyplot on the Agg backend (files only, no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def accuracy_vs_params(rows: list[dict], path: Path) -> None:
    """Save :func:`accuracy_vs_params_figure` as a PNG."""
    plt = pyplot()
    figure = accuracy_vs_params_figure(rows)
    figure.savefig(path, dpi=150)
    plt.close(figure)


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
    figure.savefig(path, dpi=150, bbox_inches="tight")
    plt.close(figure)


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
    figure.savefig(path, dpi=150)
    plt.close(figure)
