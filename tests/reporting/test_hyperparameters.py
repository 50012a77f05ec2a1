"""The hyperparameter report of make table: each run's chosen grid point and epoch, and every point's val curve."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from pvera_bench.pipeline.run import run
from pvera_bench.reporting.hyperparameters import write_hyperparameters
from pvera_bench.reporting.results import load_results


def test_the_csv_lists_each_runs_chosen_point_and_epoch_and_every_val_curve(demo_config, tmp_path):
    records = {}
    for seed in (0, 1):
        cfg = demo_config("adapter=lora", f"seed={seed}", "trainer.epochs=3")
        cfg.grid = {"lora": {"adapter.r": [2, 4]}}
        records[seed] = run(cfg)
    runs = Path(demo_config().paths.results)
    points_csv, curves_csv = write_hyperparameters(load_results(runs), tmp_path).paths
    points, curves = pd.read_csv(points_csv), pd.read_csv(curves_csv)
    assert len(points) == 4 and set(points.seed) == {0, 1} and set(points.task) == {"mnist5k"}
    assert set(points.method) == {"lora"} and set(points.protocol) == {"early_stop"}
    for seed, record in records.items():
        mine = points[points.seed == seed]
        [chosen] = mine[mine.selected].itertuples()
        assert json.loads(chosen.point) == record["grid_point"]
        assert chosen.best_epoch == record["best_epoch"] and chosen.tested_epoch == record["best_epoch"]
        assert not chosen.retrained and mine[~mine.selected].tested_epoch.isna().all()
        assert sorted(json.loads(p)["adapter.r"] for p in mine.point) == [2, 4]
        for index, point in enumerate(record["grid"]):
            curve = curves[(curves.seed == seed) & (curves.point_index == index)]
            assert list(curve.epoch) == list(range(1, point["epochs_run"] + 1))
            assert list(curve.val_loss) == point["val_curve"]
