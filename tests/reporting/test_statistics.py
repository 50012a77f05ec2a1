"""Statistics over seeds on synthetic results with known effects: tests' power and size, CI coverage, ranks, files."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from helpers import squeezed
from scipy import stats

from pvera_bench.reporting.ranks import rank_test
from pvera_bench.reporting.statistics import aggregate_scores, default_pairs, paired_comparison, per_task_summary
from pvera_bench.reporting.statistics_document import write_statistics

SEED_NOISE = 0.5  # std of test top-1 over seeds, in points


def synthetic(offsets: dict[str, float], n_tasks: int = 19, n_seeds: int = 3, seed: int = 0) -> pd.DataFrame:
    """Runs of methods scoring task baseline + offset + N(0, SEED_NOISE²), baselines uniform in [30, 90]."""
    rng = np.random.default_rng(seed)
    baselines = rng.uniform(30, 90, n_tasks)
    rows = [
        (method, f"task{t:02d}", s, baselines[t] + offset + rng.normal(0, SEED_NOISE))
        for method, offset in offsets.items()
        for t in range(n_tasks)
        for s in range(n_seeds)
    ]
    return pd.DataFrame(rows, columns=["method", "task", "seed", "score"])


def noisy_cells(n_cells: int, n_seeds: int, seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    """One method per cell (one task each): true means uniform in [30, 90], plus seed noise."""
    rng = np.random.default_rng(seed)
    truth = rng.uniform(30, 90, n_cells)
    scores = truth[:, None] + rng.normal(0, SEED_NOISE, (n_cells, n_seeds))
    cell, run = np.divmod(np.arange(scores.size), n_seeds)
    frame = pd.DataFrame({"method": "m", "task": [f"c{c:03d}" for c in cell], "seed": run, "score": scores.ravel()})
    return frame, truth


def test_a_two_point_gain_is_significant_and_exceeds_seed_noise():
    result = paired_comparison(synthetic({"vera": 0.0, "pvera": 2.0}), "pvera", "vera")
    assert result["significant"] and result["reason"] is None
    assert result["n_tasks"] == 19 and result["mean_diff"] == pytest.approx(2.0, abs=0.3)
    assert result["n_exceeding_noise"] >= 16 and result["n_noise_known"] == 19
    assert result["wilcoxon_p"] < 1e-4 and result["sign_test_p"] < 1e-4 and result["n_positive"] == 19


def test_no_effect_is_flagged_at_about_the_nominal_rate():
    results = [paired_comparison(synthetic({"vera": 0.0, "pvera": 0.0}, seed=s), "pvera", "vera") for s in range(50)]
    assert sum(r["significant"] for r in results) / len(results) <= 0.15
    # a single task's difference exceeds 2 standard errors rarely (t with ~4 df: about 12 %)
    assert np.mean([r["n_exceeding_noise"] / r["n_noise_known"] for r in results]) < 0.2


def test_per_task_interval_covers_the_true_mean_with_10_seeds_but_not_3():
    frame, truth = noisy_cells(200, n_seeds=10, seed=1)
    summary = per_task_summary(frame, n_resamples=1000)
    assert list(summary.n_seeds.unique()) == [10]
    covered = ((summary.ci_low <= truth) & (truth <= summary.ci_high)).mean()
    assert 0.85 <= covered <= 0.99
    # the documented finding: a percentile interval over 3 seeds under-covers badly (about 75 %)
    frame, truth = noisy_cells(200, n_seeds=3, seed=2)
    summary = per_task_summary(frame, n_resamples=1000)
    assert 0.6 <= ((summary.ci_low <= truth) & (truth <= summary.ci_high)).mean() < 0.85


def test_stratified_aggregate_interval_covers_the_mean_over_tasks():
    rng = np.random.default_rng(3)
    n_tables, n_tasks, n_seeds = 200, 19, 10
    truth = rng.uniform(30, 90, (n_tables, n_tasks))
    scores = truth[..., None] + rng.normal(0, SEED_NOISE, (n_tables, n_tasks, n_seeds))
    table, task, run = np.unravel_index(np.arange(scores.size), scores.shape)
    frame = pd.DataFrame(
        {"method": [f"t{i:03d}" for i in table], "task": task.astype(str), "seed": run, "score": scores.ravel()}
    )
    aggregate = aggregate_scores(frame, n_resamples=1000)
    assert (aggregate.n_tasks == n_tasks).all() and (aggregate.n_single_seed == 0).all()
    target = truth.mean(axis=1)
    assert 0.85 <= ((aggregate.mean_ci_low <= target) & (target <= aggregate.mean_ci_high)).mean() <= 0.99


def test_three_separated_methods_rank_1_2_3_and_draw_a_cd_diagram(tmp_path):
    ranked = rank_test(synthetic({"vera": 0.0, "pvera": 2.0, "lora": 4.0}))
    assert ranked.ok and len(ranked.tasks) == 19 and ranked.n_methods == 3
    assert ranked.average_ranks.to_dict() == {"lora": 1.0, "pvera": 2.0, "vera": 3.0}
    assert ranked.friedman_p < 0.05 and ranked.significant
    assert 0 < ranked.cd < 1 and ranked.distinct_pairs() == [("lora", "pvera"), ("lora", "vera"), ("pvera", "vera")]
    png = ranked.plot(tmp_path / "cd.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_iqm_is_scipys_25_percent_trimmed_mean_of_task_means():
    task_means = np.array([1.0, 2, 3, 4, 5, 6, 7, 100])
    frame = pd.DataFrame(
        [("m", f"t{i}", s, mean + (1 if s else -1)) for i, mean in enumerate(task_means) for s in range(2)],
        columns=["method", "task", "seed", "score"],
    )
    row = aggregate_scores(frame, n_resamples=200).iloc[0]
    assert row.iqm == pytest.approx(stats.trim_mean(task_means, 0.25)) == pytest.approx(4.5)
    assert row["mean"] == pytest.approx(16.0) and row.n_tasks == 8
    assert row.iqm_ci_low <= row.iqm <= row.iqm_ci_high


def test_degenerate_inputs_give_reasons_not_exceptions(tmp_path):
    one_run = pd.DataFrame({"method": ["vera"], "task": ["cifar"], "seed": [0], "score": [70.0]})
    summary = per_task_summary(one_run)
    assert summary.n_seeds.tolist() == [1] and summary[["std", "ci_low", "ci_high"]].isna().all(axis=None)
    aggregate = aggregate_scores(one_run).iloc[0]
    assert aggregate.iqm == 70.0 and np.isnan(aggregate.mean_ci_low) and aggregate.n_single_seed == 1
    assert "needs >= 3 methods; 1 here" in rank_test(one_run).reason and default_pairs(one_run) == []
    assert paired_comparison(one_run, "pvera", "vera")["reason"] == "no runs of pvera"

    two = pd.concat([one_run, one_run.assign(method="pvera", score=71.0)])
    single = paired_comparison(two, "pvera", "vera")
    assert single["reason"].startswith("the tests need >= 2 tasks") and single["wilcoxon_p"] is None
    assert single["mean_diff"] == 1.0 and single["per_task"].exceeds_noise.tolist() == [None]
    assert not single["significant"] and single["n_noise_known"] == 0

    tied = synthetic({"vera": 0.0}, n_tasks=6)
    tied = pd.concat([tied, tied.assign(method="pvera"), tied.assign(method="lora")])
    assert paired_comparison(tied, "pvera", "vera")["reason"] == "every per-task difference is zero"
    assert "all tied" in rank_test(tied).reason
    assert "needs >= 5 tasks" in rank_test(synthetic({"a": 0, "b": 1, "c": 2}, n_tasks=4)).reason

    empty = write_statistics(one_run.iloc[:0], tmp_path / "empty").paths[0].read_text()
    assert "0 successful runs" in empty and "##" not in empty
    written = write_statistics(one_run, tmp_path).paths
    assert [p.name for p in written] == ["statistics.md", "statistics.csv"]
    assert "Not tested: the Friedman test needs >= 3 methods" in written[0].read_text()


def test_bad_input_is_refused():
    frame = synthetic({"vera": 0.0}, n_tasks=2)
    with pytest.raises(ValueError, match="lack the column"):
        per_task_summary(frame.drop(columns="seed"))
    with pytest.raises(ValueError, match="more than once"):
        per_task_summary(pd.concat([frame, frame.iloc[:1]]))


def test_intervals_are_reproducible_and_independent_of_other_methods():
    frame = synthetic({"vera": 0.0, "pvera": 2.0})
    alone = per_task_summary(frame[frame.method == "vera"], n_resamples=500)
    both = per_task_summary(frame, n_resamples=500)
    pd.testing.assert_frame_equal(alone, both[both.method == "vera"].reset_index(drop=True))
    pd.testing.assert_frame_equal(both, per_task_summary(frame, n_resamples=500))


def test_write_statistics_names_partial_coverage(tmp_path):
    frame = synthetic({"vera": 0.0, "pvera": 2.0, "lora": 4.0})
    partial = frame[(frame.method != "lora") | frame.task.isin(["task00", "task01", "task02", "task03"])]
    assert default_pairs(partial) == [("pvera", "vera"), ("lora", "vera"), ("lora", "pvera")]
    written = write_statistics(partial, tmp_path / "partial", n_resamples=500).paths
    assert [p.name for p in written] == ["statistics.md", "statistics.csv"]  # 4 shared tasks: no rank test
    text = squeezed(written[0].read_text())
    assert "### pvera − vera over all 19 tasks both ran" in text
    assert "### lora − vera over 4 of 19 tasks both ran" in text
    assert "## Average rank over 4 of 19 tasks every method ran" in text and "needs >= 5 tasks" in text
    assert "| lora | 4 of 19 |" in text and "partial rows are not comparable" in text
    table = pd.read_csv(written[1], keep_default_na=False)
    assert list(table.columns) == ["section", "method", "versus", "task", "quantity", "value", "n", "n_of"]
    assert set(table.section) == {"per_task", "paired", "aggregate"}

    written = write_statistics(frame, tmp_path / "full", n_resamples=500).paths
    assert [p.name for p in written] == ["statistics.md", "statistics.csv", "critical_difference.png"]
    text = squeezed(written[0].read_text())
    assert "## Average rank over all 19 tasks every method ran" in text and "## Aggregate over all 19 tasks" in text
    assert "- significant (Wilcoxon p < 0.05): yes" in text
    assert written[2].read_bytes()[:4] == b"\x89PNG"
