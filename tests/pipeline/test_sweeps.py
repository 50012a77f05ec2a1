"""Sweeps and selection: Hydra launchers, skipping finished runs, the grid searched on val, loggers."""

from __future__ import annotations

import sys

import pytest
from helpers import results, run_cli

from pvera_bench.pipeline.run import run
from pvera_bench.training.checkpoint import GridRecord
from pvera_bench.training.inputs import TaskInputs
from pvera_bench.training.selection import is_better

SMOKE = ("experiment=demo", "trainer=smoke", "grid=none")


def record_split_reads(monkeypatch) -> list[str]:
    """The names of the splits a run reads, in order (the first read of each loads it)."""
    requested = []
    original = TaskInputs.split
    monkeypatch.setattr(TaskInputs, "split", lambda self, name: requested.append(name) or original(self, name))
    return requested


@pytest.mark.slow
def test_joblib_sweep_writes_8_results_tables_and_a_rerun_skips_them_all(mock_root, tmp_path):
    runs = tmp_path / "runs"
    sweep = (
        "-m",
        *SMOKE,
        "adapter=linear,lora",
        "dataset=mnist5k,kitti",
        "seed=0,1",
        f"data.root={mock_root}",
        f"paths.results={runs}",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        f"hydra.sweep.dir={tmp_path / 'multirun'}",
    )
    first = run_cli(*sweep)
    assert first.returncode == 0, first.stderr[-3000:]
    written = results(runs)
    assert len(written) == 8 and all(r["status"] == "success" for r in written.values())
    assert {(r["adapter"], r["dataset"], r["seed"]) for r in written.values()} == {
        (a, d, s) for a in ("linear", "lora") for d in ("mnist5k", "kitti") for s in (0, 1)
    }
    assert not list(runs.rglob("*.ckpt"))  # checkpoints go once the result is written
    table = run_cli("--runs", str(runs), "--out", str(tmp_path / "tables"), module="pvera_bench.table")
    assert table.returncode == 0, table.stderr
    assert sorted(p.name for p in (tmp_path / "tables").iterdir()) == [
        "accuracy_vs_params.png",
        "calibration.csv",
        "calibration.md",
        "hyperparameters.csv",
        "reliability_tiny_kitti.png",
        "reliability_tiny_mnist5k.png",
        "risk_coverage_tiny_kitti.png",
        "risk_coverage_tiny_mnist5k.png",
        "statistics.csv",
        "statistics.md",
        "validation_curves.csv",
        "vtab1k.csv",
        "vtab1k.md",
        "vtab1k.tex",
    ]
    stamps = {p: p.stat().st_mtime_ns for p in runs.rglob("*.json")}
    second = run_cli(*sweep)
    assert second.returncode == 0
    assert (second.stdout + second.stderr).count("skipped:") == 8
    assert results(runs) == written
    assert {p: p.stat().st_mtime_ns for p in runs.rglob("*.json")} == stamps


@pytest.mark.slow
def test_submitit_local_launcher_runs_a_job(data_root, tmp_path):
    result = run_cli(
        "-m",
        *SMOKE,
        "adapter=linear",
        f"data.root={data_root}",
        f"paths.results={tmp_path / 'runs'}",
        "hydra/launcher=submitit_local",
        "hydra.launcher.timeout_min=10",
        f"hydra.sweep.dir={tmp_path / 'multirun'}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    [record] = results(tmp_path / "runs").values()
    assert record["status"] == "success" and record["adapter"] == "linear"


@pytest.mark.slow
def test_grid_is_searched_on_val_and_the_lowest_val_loss_is_tested(demo_config, monkeypatch):
    requested = record_split_reads(monkeypatch)
    cfg = demo_config("adapter=lora", "grid=pvera")
    cfg.grid = {"lora": {"adapter.r": [2, 4]}}
    record = run(cfg)
    assert [p["point"] for p in record["grid"]] == [{"adapter.r": 2}, {"adapter.r": 4}]
    [chosen] = [p for p in record["grid"] if p.get("selected")]
    assert chosen["val_nll"] == min(p["val_nll"] for p in record["grid"])
    assert record["grid_point"] == chosen["point"] and record["val_nll"] == chosen["val_nll"]
    assert record["adapter_params"] == 4 * 2 * chosen["point"]["adapter.r"] * (192 + 192)
    assert requested[-1] == "test" and requested.count("test") == 1  # test data only at the very end


@pytest.mark.slow
def test_vtab_protocol_selects_on_val_then_retrains_on_train800val200(demo_config, monkeypatch):
    requested = record_split_reads(monkeypatch)
    cfg = demo_config("adapter=vera", "protocol=vtab")
    cfg.grid = {"vera": {"adapter.lr": [1e-2, 1e-4]}}
    record = run(cfg)
    assert len(record["grid"]) == 2
    [chosen] = [p for p in record["grid"] if p.get("selected")]
    assert chosen["val_top1"] == max(p["val_top1"] for p in record["grid"])
    assert record["config"]["protocol"]["retrain_split"] == "train800val200"
    assert record["epochs_run"] == record["best_epoch"] == 2
    assert all("val_nll" not in epoch for epoch in record["history"])  # the retrain has no validation
    assert requested.index("train800val200") > requested.index("val200")
    assert requested[-1] == "test" and requested.count("test") == 1


@pytest.mark.slow
def test_wandb_logger_writes_an_offline_run(data_root, tmp_path):
    # logger.mode beats the WANDB_MODE=disabled that the tests (and CI) run under
    result = run_cli(
        *SMOKE,
        "adapter=linear",
        "logger=wandb",
        "logger.mode=offline",
        f"logger.dir={tmp_path}",
        f"data.root={data_root}",
        f"paths.results={tmp_path / 'runs'}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    [run_dir] = (tmp_path / "wandb").glob("offline-run-*")
    [log_file] = run_dir.glob("run-*.wandb")
    assert log_file.stat().st_size > 0


def test_wandb_logger_sends_config_epochs_and_summary(demo_config, monkeypatch):
    calls = {"log": [], "summary": {}}

    class FakeRun:
        summary = calls["summary"]

        def log(self, metrics):
            calls["log"].append(metrics)

        def finish(self):
            calls["finished"] = True

    fake = type(sys)("wandb")
    fake.init = lambda **kwargs: calls.update(init=kwargs) or FakeRun()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    record = run(demo_config("adapter=linear", "logger=wandb", "logger.mode=offline"))
    assert calls["init"]["mode"] == "offline" and calls["init"]["config"]["adapter"]["name"] == "linear"
    assert [m["point0/epoch"] for m in calls["log"]] == [1, 2]
    assert calls["summary"]["test_top1"] == record["test_top1"] and calls["finished"]


def test_selection_prefers_lower_val_loss_or_higher_top1_with_loss_breaking_ties():
    def scored(nll: float, top1: float) -> GridRecord:
        return GridRecord({}, val_loss=nll, val_nll=nll, val_top1=top1, best_epoch=1, epochs_run=1)

    assert is_better(scored(0.5, 0.1), None, "nll") and is_better(scored(0.5, 0.1), None, "top1")
    assert is_better(scored(0.4, 0.1), scored(0.5, 0.9), "nll")
    assert not is_better(scored(0.5, 0.9), scored(0.5, 0.1), "nll")  # a tie keeps the earlier point
    assert is_better(scored(0.9, 0.8), scored(0.1, 0.7), "top1")
    assert is_better(scored(0.4, 0.7), scored(0.5, 0.7), "top1")
    assert not is_better(scored(0.5, 0.7), scored(0.5, 0.7), "top1")
