"""Figures drawn from the table rows of :mod:`pvera_bench.table`."""

from __future__ import annotations

from pathlib import Path


def accuracy_vs_params(rows: list[dict], path: Path) -> None:
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
    else:
        axes.text(0.5, 0.5, "no results on the 19 VTAB-1k tasks yet", transform=axes.transAxes, ha="center")
    figure.tight_layout()
    figure.savefig(path, dpi=150)
    plt.close(figure)
