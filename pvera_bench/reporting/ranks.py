"""Average ranks of the methods over the tasks they share: Friedman test, Nemenyi critical difference and the
CD diagram, via autorank (nonparametric mode)."""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from pvera_bench.reporting.plots import pyplot, save_figure
from pvera_bench.reporting.statistics import score_matrix

MIN_RANK_TASKS = 5  # autorank refuses fewer rows ("requires at least five performance estimations")


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

        pyplot()  # the file-only backend, before autorank draws
        axis = plot_stats(self.autorank_result, allow_insignificant=True)
        save_figure(axis.figure, path, dpi=150, bbox_inches="tight")
        return Path(path)


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
