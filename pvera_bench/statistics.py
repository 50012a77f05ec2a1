"""Statistics over per-run results: is a difference between adapters larger than its seed noise?

Input is a DataFrame of successful runs with columns ``method`` (row label), ``task``, ``seed`` and
``score`` (test top-1 in %); one row per run, each (method, task, seed) at most once. Nothing here is
hand-written statistics: tests and intervals come from :mod:`scipy.stats` (``bootstrap``,
``wilcoxon``, ``binomtest``, ``trim_mean``) and the rank test from ``autorank`` (Friedman test,
Nemenyi critical difference, CD diagram).

Bootstrap intervals use the percentile method with a generator seeded from ``seed`` and the
method/task names, so a table is reproducible and adding a method leaves the others' intervals
unchanged. Percentile intervals over few seeds are too narrow: in simulation (normal seed noise) a
95 % interval of one task's mean covers the true mean 48 % of the time with 2 seeds, 75 % with 3,
83 % with 5 and 90 % with 10 (the resampled mean's spread lacks the factor n/(n-1) and the t
quantile). The stratified interval of the mean over 19 tasks fares better: 89 % with 3 seeds and
93 % with 10. Read per-task intervals over 3 seeds as a lower bound on the uncertainty.
"""

from __future__ import annotations

import contextlib
import io
import math
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

COLUMNS = ("method", "task", "seed", "score")
N_RESAMPLES = 5000
MIN_RANK_TASKS = 5  # autorank refuses fewer rows ("requires at least five performance estimations")
NOISE_FACTOR = 2.0  # a per-task difference "exceeds its seed noise" when |diff| > NOISE_FACTOR × its standard error


def _runs(frame: pd.DataFrame) -> pd.DataFrame:
    """The four input columns, checked: all present, scores finite, no (method, task, seed) twice."""
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"results lack the column(s) {', '.join(missing)}; need {', '.join(COLUMNS)}")
    runs = frame.loc[:, list(COLUMNS)].astype({"method": str, "task": str, "score": float})
    if not np.isfinite(runs.score).all():
        raise ValueError("results hold non-finite scores; pass successful runs only")
    twice = runs.duplicated(["method", "task", "seed"], keep=False)
    if twice.any():
        first = runs[twice].iloc[0]
        raise ValueError(f"run ({first.method}, {first.task}, seed {first.seed}) appears more than once")
    return runs


def _rng(seed: int, *names: str) -> np.random.Generator:
    """A generator fixed by ``seed`` and the names it serves (stable when other methods are added)."""
    return np.random.default_rng([seed, zlib.crc32("\0".join(names).encode())])


def _iqm(values: np.ndarray, axis: int = -1) -> np.ndarray:
    """Interquartile mean: scipy's 25 % trimmed mean."""
    return stats.trim_mean(values, 0.25, axis=axis)


def _bootstrap_ci(
    samples: list[np.ndarray],
    reduce: Callable[..., np.ndarray],
    confidence: float,
    n_resamples: int,
    rng: np.random.Generator,
) -> tuple[float, float] | None:
    """Percentile CI of ``reduce`` over per-sample means, each sample (one task's seeds) resampled on its own.

    scipy resamples the samples of a multi-sample ``bootstrap`` independently, which is exactly the
    stratified bootstrap; a sample of one seed resamples to itself, so it enters as a constant.
    None when no sample has two seeds."""
    varying = tuple(s for s in samples if len(s) >= 2)
    fixed = [float(s[0]) for s in samples if len(s) == 1]
    if not varying:
        return None

    def statistic(*resampled: np.ndarray, axis: int = -1) -> np.ndarray:
        means = [r.mean(axis=axis) for r in resampled]
        means += [np.full(np.shape(means[0]), c) for c in fixed]
        return reduce(np.stack(means, axis=-1), axis=-1)

    result = stats.bootstrap(
        varying,
        statistic,
        n_resamples=n_resamples,
        confidence_level=confidence,
        method="percentile",
        vectorized=True,
        rng=rng,
    )
    low, high = result.confidence_interval
    return float(low), float(high)


def per_task_summary(
    frame: pd.DataFrame, confidence: float = 0.95, n_resamples: int = N_RESAMPLES, seed: int = 0
) -> pd.DataFrame:
    """Per (method, task): seeds, mean, std (ddof=1) and bootstrap CI of the mean over seeds (NaN with one seed)."""
    rows = []
    for (method, task), runs in _runs(frame).groupby(["method", "task"], sort=False):
        scores = runs.score.to_numpy()
        ci = _bootstrap_ci([scores], np.mean, confidence, n_resamples, _rng(seed, method, task))
        rows.append(
            {
                "method": method,
                "task": task,
                "n_seeds": len(scores),
                "mean": scores.mean(),
                "std": scores.std(ddof=1) if len(scores) > 1 else math.nan,
                "ci_low": ci[0] if ci else math.nan,
                "ci_high": ci[1] if ci else math.nan,
            }
        )
    columns = ["method", "task", "n_seeds", "mean", "std", "ci_low", "ci_high"]
    return pd.DataFrame(rows, columns=columns)


def paired_comparison(frame: pd.DataFrame, a: str, b: str, alpha: float = 0.05) -> dict[str, Any]:
    """Method ``a`` − method ``b`` per shared task (vs. the standard error of that difference) and across tasks.

    Per task: ``diff`` of the means over seeds, ``noise`` = sqrt(sa²/na + sb²/nb), the standard error of
    that difference (NaN when either side has one seed), and ``exceeds_noise`` = |diff| > 2 × noise.
    Across tasks: two-sided Wilcoxon signed-rank and sign-test (binomtest, ties dropped) p-values of the
    per-task differences; ``significant`` is Wilcoxon p < alpha. ``reason`` says why a p-value is None."""
    cells = _runs(frame).groupby(["method", "task"], sort=False).score.agg(["mean", "std", "count"])
    result: dict[str, Any] = {
        "a": a,
        "b": b,
        "alpha": alpha,
        "per_task": pd.DataFrame(),
        "n_tasks": 0,
        "mean_diff": None,
        "n_noise_known": 0,
        "n_exceeding_noise": 0,
        "n_positive": 0,
        "n_negative": 0,
        "wilcoxon_p": None,
        "sign_test_p": None,
        "significant": False,
        "reason": None,
        "note": None,
    }
    methods = set(cells.index.get_level_values("method"))
    absent = [m for m in (a, b) if m not in methods]
    if absent:
        result["reason"] = f"no runs of {' or '.join(absent)}"
        return result
    left, right = cells.loc[a], cells.loc[b]
    shared = [t for t in left.index if t in right.index]
    left, right = left.loc[shared], right.loc[shared]
    noise = np.sqrt(left["std"] ** 2 / left["count"] + right["std"] ** 2 / right["count"])
    diff = left["mean"] - right["mean"]
    known = noise.notna()
    exceeds = [bool(abs(d) > NOISE_FACTOR * n) if ok else None for d, n, ok in zip(diff, noise, known, strict=True)]
    per_task = pd.DataFrame(
        {
            "task": shared,
            "n_a": left["count"].to_numpy(),
            "n_b": right["count"].to_numpy(),
            "mean_a": left["mean"].to_numpy(),
            "mean_b": right["mean"].to_numpy(),
            "diff": diff.to_numpy(),
            "noise": noise.to_numpy(),
            "exceeds_noise": pd.Series(exceeds, dtype=object),
        }
    )
    result.update(
        per_task=per_task,
        n_tasks=len(shared),
        n_noise_known=int(known.sum()),
        n_exceeding_noise=sum(e is True for e in exceeds),
        n_positive=int((diff > 0).sum()),
        n_negative=int((diff < 0).sum()),
    )
    if not shared:
        result["reason"] = f"no task has runs of both {a} and {b}"
        return result
    result["mean_diff"] = float(diff.mean())
    nonzero = result["n_positive"] + result["n_negative"]
    if len(shared) < 2:
        result["reason"] = f"the tests need >= 2 tasks both methods ran; {len(shared)} here"
    elif nonzero == 0:
        result["reason"] = "every per-task difference is zero"
    else:
        result["wilcoxon_p"] = float(stats.wilcoxon(diff.to_numpy()).pvalue)
        result["sign_test_p"] = float(stats.binomtest(result["n_positive"], nonzero).pvalue)
        result["significant"] = result["wilcoxon_p"] < alpha
        if 2.0 / 2**nonzero >= alpha:
            result["note"] = f"with {nonzero} non-zero differences no test here can reach p < {alpha:g}"
    return result


@dataclass
class RankTest:
    """Average ranks (1 = best), Friedman p-value and Nemenyi critical difference over the tasks every method has."""

    alpha: float
    n_methods: int
    tasks: list[str]
    average_ranks: pd.Series | None = None
    friedman_p: float | None = None
    cd: float | None = None
    reason: str | None = None
    autorank_result: Any = field(default=None, repr=False)

    @property
    def ok(self) -> bool:
        """Whether the test ran."""
        return self.reason is None

    @property
    def significant(self) -> bool:
        """Whether the Friedman test rejects equal ranks at ``alpha``."""
        return self.friedman_p is not None and self.friedman_p < self.alpha

    def distinct_pairs(self) -> list[tuple[str, str]]:
        """Pairs (better, worse) whose average ranks differ by more than the CD (Nemenyi)."""
        if self.average_ranks is None or self.cd is None:
            return []
        ranks = self.average_ranks
        return [
            (m, n) for i, m in enumerate(ranks.index) for n in ranks.index[i + 1 :] if ranks[n] - ranks[m] > self.cd
        ]

    def plot(self, path: Path) -> Path | None:
        """Write autorank's CD diagram as PNG (even when Friedman is not significant); None if the test did not run."""
        if not self.ok:
            return None
        from autorank import plot_stats

        from pvera_bench.plots import pyplot

        plt = pyplot()
        axis = plot_stats(self.autorank_result, allow_insignificant=True)
        axis.figure.savefig(path, dpi=150, bbox_inches="tight")
        plt.close(axis.figure)
        return Path(path)


def score_matrix(frame: pd.DataFrame) -> pd.DataFrame:
    """Tasks × methods of the mean score over seeds, only tasks every method has, in order of first appearance."""
    runs = _runs(frame)
    means = runs.groupby(["task", "method"], sort=False).score.mean().unstack("method")
    return means.reindex(index=runs.task.unique(), columns=runs.method.unique()).dropna()


def rank_test(frame: pd.DataFrame, alpha: float = 0.05) -> RankTest:
    """Friedman test and Nemenyi CD of the methods over shared tasks, via autorank (nonparametric mode)."""
    matrix = score_matrix(frame)
    result = RankTest(alpha=alpha, n_methods=matrix.shape[1], tasks=list(matrix.index))
    if matrix.shape[1] < 3:
        result.reason = (
            f"the Friedman test needs >= 3 methods; {matrix.shape[1]} here (compare two with the paired comparison)"
        )
    elif len(matrix) < MIN_RANK_TASKS:
        result.reason = f"autorank needs >= {MIN_RANK_TASKS} tasks that every method has; {len(matrix)} here"
    elif (matrix.nunique(axis=1) == 1).all():
        result.reason = "every method scores the same on every shared task: ranks are all tied"
    if not result.ok:
        return result
    from pvera_bench.plots import pyplot

    pyplot()  # autorank imports pyplot: make it the file-only backend first
    from autorank import autorank

    with contextlib.redirect_stdout(io.StringIO()):  # autorank prints its rank table and mode even when not verbose
        ranked = autorank(
            matrix.reset_index(drop=True),
            alpha=float(alpha),
            verbose=False,
            order="descending",
            force_mode="nonparametric",
        )
    result.autorank_result = ranked
    # rankdf comes worst first with order="descending": sort best (rank 1) first
    result.average_ranks = ranked.rankdf["meanrank"].astype(float).sort_values().rename("average_rank")
    result.friedman_p = float(ranked.pvalue)
    result.cd = float(ranked.cd)
    return result


def aggregate_scores(
    frame: pd.DataFrame, confidence: float = 0.95, n_resamples: int = N_RESAMPLES, seed: int = 0
) -> pd.DataFrame:
    """Per method: mean and IQM of its per-task means, with stratified bootstrap CIs (seeds resampled per task).

    ``n_tasks`` of ``n_tasks_total`` (tasks in the results) are covered; tasks with one seed are held
    fixed in the resamples (``n_single_seed``), and the CIs are NaN when no task has two seeds. The IQM
    is of the per-task means (rliable pools runs × tasks instead)."""
    runs = _runs(frame)
    total = runs.task.nunique()
    rows = []
    for method, own in runs.groupby("method", sort=False):
        samples = [task_runs.score.to_numpy() for _, task_runs in own.groupby("task", sort=False)]
        task_means = np.array([s.mean() for s in samples])
        row: dict[str, Any] = {
            "method": method,
            "n_tasks": len(samples),
            "n_tasks_total": total,
            "n_single_seed": sum(len(s) == 1 for s in samples),
        }
        for name, reduce in (("mean", np.mean), ("iqm", _iqm)):
            ci = _bootstrap_ci(samples, reduce, confidence, n_resamples, _rng(seed, method, name))
            row[name] = float(reduce(task_means, axis=-1))
            row[f"{name}_ci_low"], row[f"{name}_ci_high"] = ci if ci else (math.nan, math.nan)
        rows.append(row)
    columns = ["method", "n_tasks", "n_tasks_total", "n_single_seed"]
    columns += [f"{n}{s}" for n in ("mean", "iqm") for s in ("", "_ci_low", "_ci_high")]
    return pd.DataFrame(rows, columns=columns)


def default_pairs(frame: pd.DataFrame) -> list[tuple[str, str]]:
    """``(pvera, vera)`` first when both labels exist (any case), then every other method vs. the best one.

    The best method has the highest mean over the tasks every method has (over all its tasks when no task is shared)."""
    matrix = score_matrix(frame)
    runs = _runs(frame)
    means = matrix.mean() if len(matrix) else runs.groupby("method", sort=False).score.mean()
    if len(means) < 2:
        return []
    best = str(means.idxmax())
    by_lower = {m.lower(): m for m in runs.method.unique()}
    pairs = [(by_lower["pvera"], by_lower["vera"])] if {"pvera", "vera"} <= by_lower.keys() else []
    for method in runs.method.unique():
        if method != best and not any({best, method} == set(pair) for pair in pairs):
            pairs.append((best, method))
    return pairs


def _fmt(value: Any, digits: int = 2) -> str:
    """A number for a table; an em dash for None or NaN."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{value:.{digits}f}"


def _p(value: float | None) -> str:
    """A p-value for a table."""
    return "—" if value is None else (f"{value:.2g}" if value < 0.001 else f"{value:.3f}")


def _coverage(n: int, total: int) -> str:
    """'all 19 tasks' or '4 of 19 tasks'."""
    return f"all {total} tasks" if n == total else f"{n} of {total} tasks"


def _per_task_section(summary: pd.DataFrame, runs: pd.DataFrame, confidence: float, n_resamples: int) -> list[str]:
    """Markdown: tasks × methods of mean ± std [CI] (n seeds)."""
    methods, tasks = list(runs.method.unique()), list(runs.task.unique())
    pct = f"{100 * confidence:g} %"
    lines = [
        f"## Per task: mean ± std [{pct} CI of the mean] of test top-1 (%) over n seeds",
        "",
        f"std with ddof=1; CI: percentile bootstrap over seeds, {n_resamples} resamples (too narrow with few"
        " seeds: about 75 % coverage with 3); — with one seed.",
        "",
        "| task | " + " | ".join(methods) + " |",
        "|---|" + "---|" * len(methods),
    ]
    cells = summary.set_index(["task", "method"])
    for task in tasks:
        row = []
        for method in methods:
            if (task, method) not in cells.index:
                row.append("")
                continue
            c = cells.loc[(task, method)]
            row.append(f"{c['mean']:.2f} ± {_fmt(c['std'])} [{_fmt(c.ci_low)}, {_fmt(c.ci_high)}] (n={int(c.n_seeds)})")
        lines.append(f"| {task} | " + " | ".join(row) + " |")
    return lines + [""]


def _paired_section(comparisons: list[dict[str, Any]], total: int) -> list[str]:
    """Markdown: one subsection per compared pair."""
    lines = [
        "## Paired comparisons: a − b, in points of test top-1, of the per-task means over seeds",
        "",
        f"noise: standard error of the difference, sqrt(sa²/na + sb²/nb); exceeds: |a − b| > {NOISE_FACTOR:g} × noise"
        " (— with one seed). p-values are two-sided, over the per-task differences.",
        "",
    ]
    for c in comparisons:
        lines += [f"### {c['a']} − {c['b']} over {_coverage(c['n_tasks'], total)} both ran", ""]
        if c["n_tasks"]:
            lines += [
                "| task | n a | n b | mean a | mean b | a − b | noise | exceeds |",
                "|---|---|---|---|---|---|---|---|",
            ]
            for r in c["per_task"].itertuples():
                exceeds = "—" if r.exceeds_noise is None else ("yes" if r.exceeds_noise else "no")
                lines.append(
                    f"| {r.task} | {r.n_a} | {r.n_b} | {r.mean_a:.2f} | {r.mean_b:.2f} | {r.diff:+.2f} "
                    f"| {_fmt(r.noise)} | {exceeds} |"
                )
            lines.append("")
        verdict = "yes" if c["significant"] else "no"
        mean_diff = "—" if c["mean_diff"] is None else f"{c['mean_diff']:+.2f}"
        lines += [
            f"- mean of a − b over {_coverage(c['n_tasks'], total)}: {mean_diff} points",
            f"- exceeds its seed noise on {c['n_exceeding_noise']} of {c['n_noise_known']} tasks with a known noise",
            f"- Wilcoxon signed-rank p = {_p(c['wilcoxon_p'])}; sign test p = {_p(c['sign_test_p'])}"
            f" ({c['n_positive']} positive, {c['n_negative']} negative)",
            f"- significant (Wilcoxon p < {c['alpha']:g}): {verdict}",
        ]
        lines += [f"- not tested: {c['reason']}"] if c["reason"] else []
        lines += [f"- note: {c['note']}"] if c["note"] else []
        lines.append("")
    return lines


def _rank_section(ranked: RankTest, total: int, figure: Path | None) -> list[str]:
    """Markdown: average ranks, Friedman p and CD."""
    over = _coverage(len(ranked.tasks), total)
    lines = [
        f"## Average rank over {over} every method ran (1 = best; Friedman test and Nemenyi CD"
        f" at α = {ranked.alpha:g}, via autorank)",
        "",
    ]
    if not ranked.ok:
        return lines + [f"Not tested: {ranked.reason}.", ""]
    lines += ["| method | average rank |", "|---|---|"]
    lines += [f"| {m} | {r:.2f} |" for m, r in ranked.average_ranks.items()]
    distinct = ", ".join(f"{m} > {n}" for m, n in ranked.distinct_pairs()) or "none"
    lines += [
        "",
        f"- Friedman p = {_p(ranked.friedman_p)} over {len(ranked.tasks)} tasks and {ranked.n_methods} methods"
        f" ({'significant' if ranked.significant else 'not significant'} at α = {ranked.alpha:g})",
        f"- critical difference of average ranks (Nemenyi, α = {ranked.alpha:g}): {ranked.cd:.2f}",
        f"- pairs further apart than the CD: {distinct}",
    ]
    if figure is not None:
        caveat = "" if ranked.significant else " (Friedman not significant: read it as no difference)"
        lines.append(f"- CD diagram: [{figure.name}]({figure.name}){caveat}")
    return lines + [""]


def _aggregate_section(aggregate: pd.DataFrame, confidence: float, n_resamples: int, total: int) -> list[str]:
    """Markdown: per method mean and IQM over tasks with CIs (``total``: the tasks of a full sweep)."""
    pct = f"{100 * confidence:g} %"
    aggregate = aggregate.assign(n_tasks_total=total)
    complete = (aggregate.n_tasks == total).all()
    partial = "each method's tasks (see tasks; partial rows are not comparable)"
    over = f"all {aggregate.n_tasks_total.iloc[0]} tasks" if complete else partial
    lines = [
        f"## Aggregate over {over}: mean and IQM (25 % trimmed mean) of the per-task means, [{pct} CI]",
        "",
        f"CI: stratified percentile bootstrap, seeds resampled within each task, {n_resamples} resamples;"
        " a task with one seed is held fixed.",
        "",
        "| method | tasks | one-seed tasks | mean [CI] | IQM [CI] |",
        "|---|---|---|---|---|",
    ]
    for r in aggregate.itertuples():
        lines.append(
            f"| {r.method} | {r.n_tasks} of {r.n_tasks_total} | {r.n_single_seed} "
            f"| {r.mean:.2f} [{_fmt(r.mean_ci_low)}, {_fmt(r.mean_ci_high)}] "
            f"| {r.iqm:.2f} [{_fmt(r.iqm_ci_low)}, {_fmt(r.iqm_ci_high)}] |"
        )
    return lines + [""]


def _long_rows(
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


def write_statistics(
    frame: pd.DataFrame,
    out_dir: Path,
    pairs: list[tuple[str, str]] | None = None,
    *,
    alpha: float = 0.05,
    confidence: float = 0.95,
    n_resamples: int = N_RESAMPLES,
    seed: int = 0,
    n_tasks_total: int | None = None,
) -> list[Path]:
    """Write statistics.md, statistics.csv and (when the rank test runs) critical_difference.png; pairs default to
    :func:`default_pairs`. ``n_tasks_total``: the tasks of a full sweep (19 on VTAB-1k; default: those present),
    so that partial coverage is named as such."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    runs = _runs(frame)
    total = max(n_tasks_total or 0, runs.task.nunique())
    summary = per_task_summary(runs, confidence, n_resamples, seed)
    comparisons = [paired_comparison(runs, a, b, alpha) for a, b in (default_pairs(runs) if pairs is None else pairs)]
    ranked = rank_test(runs, alpha)
    aggregate = aggregate_scores(runs, confidence, n_resamples, seed)
    written = []
    figure = ranked.plot(out_dir / "critical_difference.png")
    lines = [
        "# Statistics over seeds",
        "",
        f"{len(runs)} successful runs: {runs.method.nunique()} methods, {runs.task.nunique()} of {total} tasks, "
        "test top-1 in %.",
        "",
    ]
    if len(runs):
        lines += _per_task_section(summary, runs, confidence, n_resamples)
        lines += _paired_section(comparisons, total)
        lines += _rank_section(ranked, total, figure)
        lines += _aggregate_section(aggregate, confidence, n_resamples, total)
    markdown = out_dir / "statistics.md"
    markdown.write_text("\n".join(lines))
    table = out_dir / "statistics.csv"
    _long_rows(summary, comparisons, ranked, aggregate).to_csv(table, index=False)
    written += [markdown, table] + ([figure] if figure else [])
    return written
