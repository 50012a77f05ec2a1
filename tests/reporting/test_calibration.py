"""The calibration table and figures from synthetic result files and predictions: per-run means, seed
ensembles computed by hand, task means, notes for unusable predictions, and --plot-task."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
import torch
from helpers import squeezed

from pvera_bench.artefacts.predictions import write_predictions
from pvera_bench.cli.table import main
from pvera_bench.core.errors import UserError
from pvera_bench.evaluation.predict import Predictions, expected_calibration_error
from pvera_bench.reporting.calibration import reliability_bins
from pvera_bench.reporting.results import load_results
from pvera_bench.reporting.tables import write_tables

PNG = b"\x89PNG\r\n\x1a\n"
LABELS = [0, 1, 2, 0]
SEED_PROBS = {  # two seeds' test probabilities of four images; their mean is worked out by hand below
    0: [[0.8, 0.1, 0.1], [0.2, 0.6, 0.2], [0.5, 0.3, 0.2], [0.3, 0.3, 0.4]],
    1: [[0.6, 0.2, 0.2], [0.7, 0.2, 0.1], [0.1, 0.0, 0.9], [0.7, 0.1, 0.2]],
}
MEAN_PROBS = [[0.7, 0.15, 0.15], [0.45, 0.4, 0.15], [0.3, 0.15, 0.55], [0.5, 0.2, 0.3]]
VAL_LABELS = [1, 0, 2]
VAL_PROBS = [[0.2, 0.7, 0.1], [0.6, 0.3, 0.1], [0.2, 0.2, 0.6]]


def record(adapter, dataset, seed, top1, backbone, uncertainty, with_predictions):
    """A result JSON as a run writes it, with only the keys the tables read."""
    return {
        "status": "success",
        "adapter": adapter,
        "dataset": dataset,
        "backbone": backbone,
        "sampling": "mean",
        "protocol": "early_stop",
        "convention": "official",
        "quirks": [],
        "seed": seed,
        "test_top1": top1,
        "test_nll": 1.0 + seed,
        "test_ece": 0.1 * (seed + 1),
        "adapter_params": 1000,
        "uncertainty": uncertainty,
        **({"predictions": f"{adapter}__s{seed}.predictions.safetensors"} if with_predictions else {}),
        "config": {
            "adapter": {"name": adapter},
            "trainer": {"epochs": 10},
            "protocol": {"name": "early_stop"},
            "sampling": {"mode": "mean"},
            "grid": {},
            "backbone": {"id": backbone},
        },
    }


def write_run(root, adapter, dataset, seed, top1, *, probs=None, labels=LABELS, backbone="vit_b16_in21k", **metrics):
    """A run's JSON and, when ``probs`` is given, its predictions file (test and val)."""
    folder = root / backbone / dataset
    folder.mkdir(parents=True, exist_ok=True)
    uncertainty = {
        "brier": metrics.get("brier", 0.2),
        "ece": 0.1 * (seed + 1),
        "aurc": metrics.get("aurc", 0.05),
        "nll_after_scaling": 0.9,
        "conformal": {
            "miscoverage": 0.1,
            "lac": {"coverage": metrics.get("coverage", 0.9), "set_size": 1.5},
            "aps": {"coverage": 0.92, "set_size": 2.0},
        },
        "ood": {"mean": {"msp": {"auroc": metrics.get("auroc", 0.8), "aupr": 0.8, "fpr95": 0.5}}},
    }
    (folder / f"{adapter}__s{seed}.json").write_text(
        json.dumps(record(adapter, dataset, seed, top1, backbone, uncertainty, probs is not None))
    )
    if probs is not None:
        splits = {
            "test": Predictions(torch.tensor(labels), torch.tensor(probs)),
            "val": Predictions(torch.tensor(VAL_LABELS), torch.tensor(VAL_PROBS)),
        }
        write_predictions(
            folder / f"{adapter}__s{seed}.predictions.safetensors", splits, {"sampling": "mean", "n": "1"}
        )


@pytest.fixture
def runs(tmp_path):
    root = tmp_path / "runs"
    # lora on cifar: two seeds with predictions (the hand-computed ensemble)
    write_run(root, "lora", "cifar", 0, 0.50, probs=SEED_PROBS[0], brier=0.3, coverage=0.9, auroc=0.7)
    write_run(root, "lora", "cifar", 1, 0.75, probs=SEED_PROBS[1], brier=0.5, coverage=0.8, auroc=0.9)
    # lora on dtd: three seeds, the last an older run without a predictions file
    write_run(root, "lora", "dtd", 0, 0.60, probs=SEED_PROBS[0], brier=0.1)
    write_run(root, "lora", "dtd", 1, 0.70, probs=SEED_PROBS[1], brier=0.2)
    write_run(root, "lora", "dtd", 2, 0.80, brier=0.3)
    # vera on cifar: two seeds whose test labels differ, so no ensemble
    write_run(root, "vera", "cifar", 0, 0.40, probs=SEED_PROBS[0])
    write_run(root, "vera", "cifar", 1, 0.45, probs=SEED_PROBS[1], labels=[0, 1, 2, 1])
    # the demo task on the tiny backbone: one seed, no ensemble, its own section
    write_run(root, "pvera", "mnist5k", 0, 0.90, probs=SEED_PROBS[0], backbone="tiny")
    return root


def table(tmp_path, runs, *plot_tasks):
    write_tables(load_results(runs), tmp_path / "tables", list(plot_tasks) or None)
    frame = pd.read_csv(
        tmp_path / "tables" / "calibration.csv", keep_default_na=False, na_values=[""], dtype={"seeds": str}
    )
    return {(m, t): r for m, t, r in zip(frame.method, frame.task, frame.to_dict("records"), strict=True)}


def test_ensemble_row_is_computed_from_the_averaged_probabilities(tmp_path, runs):
    ensemble = table(tmp_path, runs)[("lora · ensemble of 2 seeds", "cifar")]
    assert ensemble["seeds"] == "2" and ensemble["kind"] == "ensemble"
    # predicted classes of the mean probabilities: 0, 0, 2, 0 against labels 0, 1, 2, 0
    assert ensemble["top1_pct"] == pytest.approx(75.0)
    true_class = [MEAN_PROBS[i][y] for i, y in enumerate(LABELS)]
    assert ensemble["nll"] == pytest.approx(-sum(math.log(p) for p in true_class) / 4, rel=1e-5)
    brier = (
        sum(sum((p - (c == y)) ** 2 for c, p in enumerate(row)) for row, y in zip(MEAN_PROBS, LABELS, strict=True)) / 4
    )
    assert ensemble["brier"] == pytest.approx(brier, rel=1e-5)
    # most confident first: images 0, 2, 3 right, then image 1 wrong -> risks 0, 0, 0, 1/4
    assert ensemble["aurc"] == pytest.approx(1 / 16, rel=1e-5)
    assert not math.isnan(ensemble["nll_after_scaling"])  # every seed stored val: temperature scaling on it
    assert math.isnan(ensemble["ood_auroc_msp"])  # OOD sets are not averaged


def test_per_run_rows_are_means_over_seeds_of_the_result_values(tmp_path, runs):
    cells = table(tmp_path, runs)
    lora = cells[("lora", "cifar")]
    assert lora["kind"] == "runs" and lora["seeds"] == "2"
    assert lora["top1_pct"] == pytest.approx(62.5)
    assert lora["nll"] == pytest.approx(1.5) and lora["ece"] == pytest.approx(0.15)
    assert lora["brier"] == pytest.approx(0.4) and lora["lac_coverage_pct"] == pytest.approx(85.0)
    assert lora["aps_coverage_pct"] == pytest.approx(92.0) and lora["lac_set_size"] == pytest.approx(1.5)
    assert lora["ood_auroc_msp"] == pytest.approx(0.8) and math.isnan(lora["ood_auroc_mi"])
    assert cells[("pvera", "mnist5k")]["top1_pct"] == pytest.approx(90.0)  # non-VTAB tasks are covered too


def test_task_mean_row_is_the_mean_over_tasks(tmp_path, runs):
    cells = table(tmp_path, runs)
    mean = cells[("lora", "mean (2 tasks)")]
    assert mean["top1_pct"] == pytest.approx((62.5 + 70.0) / 2)
    assert mean["brier"] == pytest.approx((0.4 + 0.2) / 2)
    assert mean["seeds"] == "2–3"
    both = cells[("lora · seed ensembles", "mean (2 tasks)")]
    dtd, cifar = cells[("lora · ensemble of 2 seeds", "dtd")], cells[("lora · ensemble of 2 seeds", "cifar")]
    assert both["nll"] == pytest.approx((dtd["nll"] + cifar["nll"]) / 2)
    markdown = squeezed((tmp_path / "tables" / "calibration.md").read_text())
    assert "| lora | mean (2 tasks) | 2–3 | 66.25 |" in markdown


def test_run_without_predictions_keeps_its_row_and_is_noted(tmp_path, runs):
    cells = table(tmp_path, runs)
    assert cells[("lora", "dtd")]["seeds"] == "3" and cells[("lora", "dtd")]["top1_pct"] == pytest.approx(70.0)
    assert ("lora · ensemble of 2 seeds", "dtd") in cells and not any("3 seeds" in m for m, _ in cells)
    notes = (tmp_path / "tables" / "calibration.md").read_text().split("## Notes")[1]
    assert "lora on dtd: seed 2 stored no predictions file" in notes
    assert "vera on cifar: the seeds' test labels or classes differ; no ensemble" in notes
    assert not any(m.startswith("vera ·") for m, _ in cells)  # no ensemble of mismatched labels


def test_make_table_writes_and_prints_the_calibration_files_and_figures(tmp_path, runs, capsys):
    out = tmp_path / "tables"
    main(["--runs", str(runs), "--out", str(out)])
    printed = {line.removeprefix("wrote ") for line in capsys.readouterr().out.splitlines()}
    expected = ["calibration.md", "calibration.csv"] + [
        f"{kind}_{backbone}_{task}.png"
        for backbone, task in (("vit_b16_in21k", "cifar"), ("vit_b16_in21k", "dtd"), ("tiny", "mnist5k"))
        for kind in ("reliability", "risk_coverage")
    ]
    for name in expected:
        assert str(out / name) in printed and (out / name).stat().st_size > 0, name
        if name.endswith(".png"):
            assert (out / name).read_bytes()[:8] == PNG
    markdown = (out / "calibration.md").read_text()
    assert "## vit_b16_in21k · early_stop · official convention" in markdown and "## tiny · early_stop" in markdown
    assert "(target coverage 90 %)" in markdown


def test_plot_task_limits_the_figures_and_rejects_a_task_without_predictions(tmp_path, runs):
    paths = write_tables(load_results(runs), tmp_path / "tables", ["dtd"]).paths
    assert sorted(p.name for p in paths if p.suffix == ".png" and p.name != "accuracy_vs_params.png") == [
        "reliability_vit_b16_in21k_dtd.png",
        "risk_coverage_vit_b16_in21k_dtd.png",
    ]
    with pytest.raises(UserError) as error:
        main(["--runs", str(runs), "--out", str(tmp_path / "t"), "--plot-task", "kitti"])
    [line] = str(error.value).splitlines()
    assert "kitti" in line and "tasks with predictions: cifar, dtd, mnist5k" in line


def test_reliability_bins_give_torchmetrics_ece():
    generator = torch.Generator().manual_seed(0)
    probs = torch.randn(500, 5, generator=generator).mul(2).softmax(dim=-1)
    labels = torch.randint(0, 5, (500,), generator=generator)
    bins = reliability_bins(probs, labels)
    assert sum(bins["count"]) == 500 and len(bins["accuracy"]) == 15
    gaps = [n * abs(a - c) for n, a, c in zip(bins["count"], bins["accuracy"], bins["confidence"], strict=True) if n]
    assert sum(gaps) / 500 == pytest.approx(expected_calibration_error(probs, labels), abs=1e-5)
