"""Tables from synthetic result files: means, std, group means, both averages, missing and failed runs."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from pvera_bench.table import ALL_TASKS, TASKS, main, write_tables


def write_run(root, adapter, dataset, seed, top1, status="success", backbone="vit_b16_in21k", params=1000, rank=8):
    config = {
        "adapter": {"name": adapter, "r": rank},
        "trainer": {"epochs": 10, "device": "cpu"},
        "protocol": {"name": "pvera"},
        "sampling": {"mode": "mean"},
        "grid": {},
        "backbone": {"id": backbone},
    }
    record = {
        "status": status,
        "adapter": adapter,
        "dataset": dataset,
        "backbone": backbone,
        "sampling": "mean",
        "protocol": "pvera",
        "seed": seed,
        "test_top1": top1 if status == "success" else None,
        "adapter_params": params,
        "config": config,
    }
    if status != "success":
        record["error"] = "training loss is nan"
    path = root / backbone / dataset / f"{adapter}__mean__pvera__s{seed}__x.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record))


@pytest.fixture
def runs(tmp_path):
    root = tmp_path / "runs"
    # "full": every task, seeds 0 and 1, task i has accuracies 0.50 + i/100 and 0.52 + i/100
    for i, task in enumerate(ALL_TASKS):
        write_run(root, "lora", task, 0, 0.50 + i / 100, params=294912)
        write_run(root, "lora", task, 1, 0.52 + i / 100, params=294912)
    # "partial": only the natural tasks, one seed; plus a failed run on dtd
    for task, _, _ in TASKS["natural"]:
        write_run(root, "vera", task, 0, 0.60, params=24576)
    write_run(root, "vera", "kitti", 0, None, status="failed")
    write_run(root, "linear", "mnist5k", 0, 0.7)
    return root


def rows_of(tmp_path, runs):
    write_tables(runs, tmp_path / "tables")
    frame = pd.read_csv(tmp_path / "tables" / "vtab1k.csv")
    ours = frame[frame.source == "pvera_bench (this repo)"]
    return {(m, t): (v, s) for m, t, v, s in zip(ours.method, ours.task, ours.top1, ours["std"], strict=True)}


def test_per_task_mean_std_group_means_and_both_averages(tmp_path, runs):
    cells = rows_of(tmp_path, runs)
    mean0, std0 = cells[("lora", "cifar")]
    assert mean0 == pytest.approx(51.0) and std0 == pytest.approx(1.4142135, rel=1e-6)  # std of 50 and 52
    per_task = [51.0 + i for i in range(19)]
    natural, specialized, structured = sum(per_task[:7]) / 7, sum(per_task[7:11]) / 4, sum(per_task[11:]) / 8
    assert cells[("lora", "Natural")][0] == pytest.approx(natural)
    assert cells[("lora", "Specialized")][0] == pytest.approx(specialized)
    assert cells[("lora", "Structured")][0] == pytest.approx(structured)
    assert cells[("lora", "Mean (19)")][0] == pytest.approx(sum(per_task) / 19)
    assert cells[("lora", "Mean (groups)")][0] == pytest.approx((natural + specialized + structured) / 3)
    assert cells[("lora", "Mean (groups)")][0] != pytest.approx(cells[("lora", "Mean (19)")][0])


def test_missing_cells_stay_empty_and_failed_runs_are_not_averaged(tmp_path, runs):
    cells = rows_of(tmp_path, runs)
    assert cells[("vera", "Natural")][0] == pytest.approx(60.0)
    for empty in ("Specialized", "Structured", "Mean (19)", "Mean (groups)", "kitti", "eurosat"):
        assert pd.isna(cells[("vera", empty)][0]), empty
    markdown = (tmp_path / "tables" / "vtab1k.md").read_text()
    failed_section = markdown.split("## Failed runs (not averaged)")[1]
    assert "vera | kitti" in failed_section and "training loss is nan" in failed_section
    assert "| mnist5k |" in markdown.split("## Other tasks")[1]  # the demo task is kept out of VTAB averages


def test_published_rows_sit_beside_ours_with_source_and_protocol(tmp_path, runs):
    write_tables(runs, tmp_path / "tables")
    frame = pd.read_csv(tmp_path / "tables" / "vtab1k.csv")
    petl = frame[(frame.method == "LoRA") & frame.source.str.contains("PETL_Vision")]
    assert petl[petl.task == "cifar"].top1.item() == pytest.approx(70.2)
    assert petl[petl.task == "Mean (groups)"].top1.item() == pytest.approx(75.24, abs=0.01)
    assert petl[petl.task == "Mean (19)"].top1.item() == pytest.approx(72.91, abs=0.01)
    assert frame[frame.source.str.contains("PVeRA")].empty  # DINOv2 rows only beside DINOv2 results
    assert "published: " in (tmp_path / "tables" / "vtab1k.md").read_text()


def test_pvera_paper_averages_beside_dinov2_results(tmp_path):
    write_run(tmp_path / "runs", "pvera", "cifar", 0, 0.8, backbone="dinov2_vitb14")
    write_tables(tmp_path / "runs", tmp_path / "tables")
    frame = pd.read_csv(tmp_path / "tables" / "vtab1k.csv")
    reported = frame[frame.task == "reported average"].set_index("method").top1
    assert reported["PVeRA"] == pytest.approx(71.4) and reported["VeRA"] == pytest.approx(69.9)


def test_writes_four_files_and_latex_is_a_tabular(tmp_path, runs, capsys):
    main(["--runs", str(runs), "--out", str(tmp_path / "tables")])
    written = capsys.readouterr().out.splitlines()
    names = sorted(p.name for p in (tmp_path / "tables").iterdir())
    assert names == ["accuracy_vs_params.png", "vtab1k.csv", "vtab1k.md", "vtab1k.tex"] and len(written) == 4
    assert (tmp_path / "tables" / "accuracy_vs_params.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    tex = (tmp_path / "tables" / "vtab1k.tex").read_text()
    assert tex.count("\\begin{tabular}") == tex.count("\\end{tabular}") >= 1 and "lora" in tex


def test_two_configs_of_one_adapter_are_never_averaged_together(tmp_path):
    write_run(tmp_path / "runs", "lora", "cifar", 0, 0.5)
    write_run(tmp_path / "runs", "lora", "cifar", 1, 0.9, rank=16)
    (tmp_path / "runs" / "vit_b16_in21k" / "cifar" / "lora__mean__pvera__s1__x.json").rename(
        tmp_path / "runs" / "vit_b16_in21k" / "cifar" / "lora__mean__pvera__s1__y.json"
    )
    methods = {
        m for m in pd.read_csv(write_tables(tmp_path / "runs", tmp_path / "t")[1]).method if m.startswith("lora")
    }
    assert len(methods) == 2 and all("[" in m for m in methods)
