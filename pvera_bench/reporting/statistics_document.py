"""``statistics.md`` / ``statistics.csv`` / ``critical_difference.png`` of ``make table``: the numbers of
:mod:`pvera_bench.reporting.statistics` and :mod:`pvera_bench.reporting.ranks` as a document and a long CSV."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from pvera_bench.reporting.document import Document, Figure, Output, number
from pvera_bench.reporting.ranks import RankTest, rank_test
from pvera_bench.reporting.statistics import (
    N_RESAMPLES,
    NOISE_FACTOR,
    aggregate_scores,
    checked_runs,
    default_pairs,
    paired_comparison,
    per_task_summary,
)


def fmt(value: Any, digits: int = 2) -> str:
    """A number for a statistics cell; an em dash for None or NaN."""
    return number(value, digits, missing="—")


def p_value(value: float | None) -> str:
    return "—" if value is None else (f"{value:.2g}" if value < 0.001 else f"{value:.3f}")


def coverage(n: int, total: int) -> str:
    """'all 19 tasks' or '4 of 19 tasks'."""
    return f"all {total} tasks" if n == total else f"{n} of {total} tasks"


def per_task_section(doc: Document, summary: pd.DataFrame, runs: pd.DataFrame, confidence: float, n: int) -> None:
    """Tasks × methods of mean ± std [CI] (n seeds)."""
    methods, tasks = list(runs.method.unique()), list(runs.task.unique())
    doc.heading(f"Per task: mean ± std [{100 * confidence:g} % CI of the mean] of test top-1 (%) over n seeds")
    doc.text(
        f"std with ddof=1; CI: percentile bootstrap over seeds, {n} resamples (too narrow with few seeds: about "
        "75 % coverage with 3); — with one seed."
    )
    cells = summary.set_index(["task", "method"])
    rows = []
    for task in tasks:
        row = [task]
        for method in methods:
            if (task, method) not in cells.index:
                row.append("")
                continue
            c = cells.loc[(task, method)]
            row.append(f"{c['mean']:.2f} ± {fmt(c['std'])} [{fmt(c.ci_low)}, {fmt(c.ci_high)}] (n={int(c.n_seeds)})")
        rows.append(row)
    doc.table(pd.DataFrame(rows, columns=["task", *methods]))


def paired_section(doc: Document, comparisons: list[dict[str, Any]], total: int) -> None:
    """One subsection per compared pair."""
    doc.heading("Paired comparisons: a − b, in points of test top-1, of the per-task means over seeds")
    doc.text(
        f"noise: standard error of the difference, sqrt(sa²/na + sb²/nb); exceeds: |a − b| > {NOISE_FACTOR:g} × "
        "noise (— with one seed). p-values are two-sided, over the per-task differences."
    )
    for c in comparisons:
        doc.heading(f"{c['a']} − {c['b']} over {coverage(c['n_tasks'], total)} both ran", level=3)
        if c["n_tasks"]:
            rows = [
                [r.task, r.n_a, r.n_b, f"{r.mean_a:.2f}", f"{r.mean_b:.2f}", f"{r.diff:+.2f}", fmt(r.noise)]
                + ["—" if r.exceeds_noise is None else ("yes" if r.exceeds_noise else "no")]
                for r in c["per_task"].itertuples()
            ]
            header = ["task", "n a", "n b", "mean a", "mean b", "a − b", "noise", "exceeds"]
            doc.table(pd.DataFrame(rows, columns=header))
        mean_diff = "—" if c["mean_diff"] is None else f"{c['mean_diff']:+.2f}"
        items = [
            f"mean of a − b over {coverage(c['n_tasks'], total)}: {mean_diff} points",
            f"exceeds its seed noise on {c['n_exceeding_noise']} of {c['n_noise_known']} tasks with a known noise",
            f"Wilcoxon signed-rank p = {p_value(c['wilcoxon_p'])}; sign test p = {p_value(c['sign_test_p'])}"
            f" ({c['n_positive']} positive, {c['n_negative']} negative)",
            f"significant (Wilcoxon p < {c['alpha']:g}): {'yes' if c['significant'] else 'no'}",
        ]
        items += [f"not tested: {c['reason']}"] if c["reason"] else []
        items += [f"note: {c['note']}"] if c["note"] else []
        doc.bullets(items)


def rank_section(doc: Document, ranked: RankTest, total: int, figure: Path | None) -> None:
    """Average ranks, Friedman p and CD."""
    doc.heading(
        f"Average rank over {coverage(len(ranked.tasks), total)} every method ran (1 = best; Friedman test and "
        f"Nemenyi CD at α = {ranked.alpha:g}, via autorank)"
    )
    if not ranked.ok:
        doc.text(f"Not tested: {ranked.reason}.")
        return
    ranks = [[method, f"{rank:.2f}"] for method, rank in ranked.average_ranks.items()]
    doc.table(pd.DataFrame(ranks, columns=["method", "average rank"]))
    distinct = ", ".join(f"{m} > {n}" for m, n in ranked.distinct_pairs()) or "none"
    items = [
        f"Friedman p = {p_value(ranked.friedman_p)} over {len(ranked.tasks)} tasks and {ranked.n_methods} methods"
        f" ({'significant' if ranked.significant else 'not significant'} at α = {ranked.alpha:g})",
        f"critical difference of average ranks (Nemenyi, α = {ranked.alpha:g}): {ranked.cd:.2f}",
        f"pairs further apart than the CD: {distinct}",
    ]
    if figure is not None:
        caveat = "" if ranked.significant else " (Friedman not significant: read it as no difference)"
        items.append(f"CD diagram: {figure.name}{caveat}")
    doc.bullets(items)


def aggregate_section(doc: Document, aggregate: pd.DataFrame, confidence: float, n: int, total: int) -> None:
    """Per method mean and IQM over tasks with CIs (``total``: the tasks of a full sweep)."""
    complete = (aggregate.n_tasks == total).all()
    over = f"all {total} tasks" if complete else "each method's tasks (see tasks; partial rows are not comparable)"
    doc.heading(
        f"Aggregate over {over}: mean and IQM (25 % trimmed mean) of the per-task means, [{100 * confidence:g} % CI]"
    )
    doc.text(
        f"CI: stratified percentile bootstrap, seeds resampled within each task, {n} resamples; a task with one "
        "seed is held fixed."
    )
    rows = [
        [r.method, f"{r.n_tasks} of {total}", r.n_single_seed]
        + [f"{r.mean:.2f} [{fmt(r.mean_ci_low)}, {fmt(r.mean_ci_high)}]"]
        + [f"{r.iqm:.2f} [{fmt(r.iqm_ci_low)}, {fmt(r.iqm_ci_high)}]"]
        for r in aggregate.itertuples()
    ]
    doc.table(pd.DataFrame(rows, columns=["method", "tasks", "one-seed tasks", "mean [CI]", "IQM [CI]"]))


def long_rows(
    summary: pd.DataFrame, comparisons: list[dict[str, Any]], ranked: RankTest, aggregate: pd.DataFrame
) -> pd.DataFrame:
    """statistics.csv: one row per number (section, method, versus, task, quantity, value, n, n_of)."""
    rows: list[tuple] = []
    for r in summary.itertuples():
        for quantity in ("mean", "std", "ci_low", "ci_high"):
            rows.append(("per_task", r.method, "", r.task, quantity, getattr(r, quantity), r.n_seeds, "seeds"))
    for c in comparisons:
        for r in c["per_task"].itertuples():
            n = min(r.n_a, r.n_b)
            exceeds = math.nan if r.exceeds_noise is None else float(r.exceeds_noise)
            for quantity, value in (("diff", r.diff), ("noise", r.noise), ("exceeds_noise", exceeds)):
                rows.append(("paired", c["a"], c["b"], r.task, quantity, value, n, "seeds"))
        for quantity in ("mean_diff", "n_exceeding_noise", "wilcoxon_p", "sign_test_p", "significant"):
            value = math.nan if c[quantity] is None else float(c[quantity])
            rows.append(("paired", c["a"], c["b"], "", quantity, value, c["n_tasks"], "tasks"))
    if ranked.ok:
        n = len(ranked.tasks)
        rows += [("rank", m, "", "", "average_rank", r, n, "tasks") for m, r in ranked.average_ranks.items()]
        rows += [("rank", "", "", "", "friedman_p", ranked.friedman_p, n, "tasks")]
        rows += [("rank", "", "", "", "cd", ranked.cd, n, "tasks")]
    for r in aggregate.itertuples():
        for quantity in ("mean", "mean_ci_low", "mean_ci_high", "iqm", "iqm_ci_low", "iqm_ci_high"):
            rows.append(("aggregate", r.method, "", "", quantity, getattr(r, quantity), r.n_tasks, "tasks"))
    return pd.DataFrame(rows, columns=["section", "method", "versus", "task", "quantity", "value", "n", "n_of"])


def statistics_document(
    frame: pd.DataFrame,
    out_dir: Path,
    pairs: list[tuple[str, str]] | None = None,
    *,
    alpha: float = 0.05,
    confidence: float = 0.95,
    n_resamples: int = N_RESAMPLES,
    seed: int = 0,
    n_tasks_total: int | None = None,
) -> tuple[Document, pd.DataFrame, Path | None]:
    """The statistics document, its long CSV frame and (when the rank test runs) the CD diagram, drawn into
    ``out_dir``; pairs default to :func:`default_pairs`. ``n_tasks_total``: the tasks of a full sweep (19 on VTAB-1k;
    default: those present), so that partial coverage is named as such."""
    runs = checked_runs(frame)
    total = max(n_tasks_total or 0, runs.task.nunique())
    summary = per_task_summary(runs, confidence, n_resamples, seed)
    comparisons = [paired_comparison(runs, a, b, alpha) for a, b in (default_pairs(runs) if pairs is None else pairs)]
    ranked = rank_test(runs, alpha)
    aggregate = aggregate_scores(runs, confidence, n_resamples, seed)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    figure = ranked.plot(Path(out_dir) / "critical_difference.png")
    doc = Document("Statistics over seeds").text(
        f"{len(runs)} successful runs: {runs.method.nunique()} methods, {runs.task.nunique()} of {total} tasks, "
        "test top-1 in %."
    )
    if len(runs):
        per_task_section(doc, summary, runs, confidence, n_resamples)
        paired_section(doc, comparisons, total)
        rank_section(doc, ranked, total, figure)
        aggregate_section(doc, aggregate, confidence, n_resamples, total)
    return doc, long_rows(summary, comparisons, ranked, aggregate), figure


def write_statistics(
    frame: pd.DataFrame, out_dir: Path, pairs: list[tuple[str, str]] | None = None, **options
) -> Output:
    """Write statistics.md, statistics.csv and (when the rank test runs) critical_difference.png (options: those of
    :func:`statistics_document`)."""
    out = Output(Path(out_dir))
    doc, table, figure = statistics_document(frame, out.out_dir, pairs, **options)
    out.document("statistics", doc)
    out.csv("statistics.csv", table)
    if figure is not None:
        out.paths.append(figure)
        out.figures.append(Figure(figure, "Critical-difference diagram"))
    return out
