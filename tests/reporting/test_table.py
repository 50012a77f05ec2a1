"""Tables from synthetic result files: means, std, group means, both averages, missing and failed runs."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from helpers import run_cli, squeezed

from pvera_bench.cli.table import main
from pvera_bench.config import TaskGroup
from pvera_bench.core.errors import UserError
from pvera_bench.reporting.accuracy import LONG_CSV_COLUMNS
from pvera_bench.reporting.report import write_report
from pvera_bench.reporting.results import (
    PAPER_QUIRKS,
    PAPER_SETUP,
    folders,
    labels,
    load_results,
    mc_dropout_of,
    method_labels,
)
from pvera_bench.reporting.tables import write_tables as write_frame_tables


def write_run(
    root, adapter, dataset, seed, top1, status="success", backbone="vit_b16_in21k", params=1000, rank=8, quirks=()
):
    config = {
        "adapter": {"name": adapter, "r": rank},
        "trainer": {"epochs": 10, "device": "cpu"},
        "protocol": {"name": "early_stop"},
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
        "protocol": "early_stop",
        "seed": seed,
        "convention": "official",
        "quirks": list(quirks),
        "test_top1": top1 if status == "success" else None,
        "adapter_params": params,
        "config": config,
    }
    if status != "success":
        record["error"] = "training loss is nan"
    path = root / backbone / dataset / f"{adapter}__mean__early_stop__s{seed}__{'q' if quirks else 'x'}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record))


@pytest.fixture
def runs(tmp_path):
    root = tmp_path / "runs"
    # "full": every task, seeds 0 and 1, task i has accuracies 0.50 + i/100 and 0.52 + i/100
    for i, task in enumerate(folders()):
        write_run(root, "lora", task, 0, 0.50 + i / 100, params=294912)
        write_run(root, "lora", task, 1, 0.52 + i / 100, params=294912)
    # "partial": only the natural tasks, one seed; plus a failed run on dtd
    for task in folders(TaskGroup.natural):
        write_run(root, "vera", task, 0, 0.60, params=24576)
    write_run(root, "vera", "kitti", 0, None, status="failed")
    write_run(root, "linear", "mnist5k", 0, 0.7)
    return root


def write_tables(runs, out) -> list:
    """The paths ``make table`` writes for the result files under ``runs``."""
    return write_frame_tables(load_results(runs), out).paths


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
    markdown = squeezed((tmp_path / "tables" / "vtab1k.md").read_text())
    failed_section = markdown.split("## Failed runs (not averaged)")[1]
    assert "vera | kitti" in failed_section and "training loss is nan" in failed_section
    assert "| mnist5k |" in markdown.split("## Other tasks")[1]  # the demo task is kept out of VTAB averages


def test_published_rows_sit_beside_ours_with_source_and_protocol(tmp_path, runs):
    write_tables(runs, tmp_path / "tables")
    frame = pd.read_csv(tmp_path / "tables" / "vtab1k.csv")
    petl = frame[(frame.method == "LoRA = ours: lora") & frame.source.str.contains("PETL_Vision")]
    assert petl[petl.task == "cifar"].top1.item() == pytest.approx(70.2)
    assert petl[petl.task == "Mean (groups)"].top1.item() == pytest.approx(75.24, abs=0.01)
    assert petl[petl.task == "Mean (19)"].top1.item() == pytest.approx(72.91, abs=0.01)
    assert frame[frame.source.str.contains("PVeRA")].empty  # DINOv2 rows only beside DINOv2 results
    assert "published: " in squeezed((tmp_path / "tables" / "vtab1k.md").read_text())


def test_pvera_paper_averages_beside_dinov2_results(tmp_path):
    write_run(tmp_path / "runs", "pvera", "cifar", 0, 0.8, backbone="dinov2_vitb14")
    write_tables(tmp_path / "runs", tmp_path / "tables")
    frame = pd.read_csv(tmp_path / "tables" / "vtab1k.csv")
    reported = frame[frame.task == "reported average"].set_index("method").top1
    assert reported["PVeRA = ours: pvera"] == pytest.approx(71.4) and reported["VeRA = ours: vera"] == pytest.approx(
        69.9
    )


def test_paper_rows_sit_in_the_table_of_a_mock_pvera_paper_sweep(tmp_path):
    paper = sorted(PAPER_QUIRKS)
    for adapter, top1 in (("pvera", 0.72), ("vera", 0.70)):
        for task in folders()[:4]:
            for seed in (0, 1):
                write_run(tmp_path / "runs", adapter, task, seed, top1, backbone="dinov2_vitb14", quirks=paper)
                write_run(tmp_path / "runs", adapter, task, seed, top1 - 0.1, backbone="dinov2_vitb14")
    write_tables(tmp_path / "runs", tmp_path / "tables")
    text = squeezed((tmp_path / "tables" / "vtab1k.md").read_text())
    paper_table = text.split(f"## dinov2_vitb14 · early_stop · {PAPER_SETUP}")[1].split("\n## ")[0]
    rows = [line.split(" | ")[0].strip("| ") for line in paper_table.splitlines() if line.startswith("| ")][1:]
    assert rows == ["pvera", "vera", "PVeRA (published) = ours: pvera", "VeRA (published) = ours: vera"]
    assert "| 72.0 ± 0.0 |" in paper_table and "71.4" in paper_table and "69.9" in paper_table
    plain_table = text.split("## dinov2_vitb14 · early_stop · official convention\n")[1].split("\n## ")[0]
    assert "62.0 ± 0.0" in plain_table and "published" not in plain_table  # the quirk-free runs have no paper rows


def test_writes_the_tables_and_latex_is_a_tabular(tmp_path, runs, capsys):
    main(["--runs", str(runs), "--out", str(tmp_path / "tables")])
    written = capsys.readouterr().out.splitlines()
    names = sorted(p.name for p in (tmp_path / "tables").iterdir())
    tables = ["accuracy_vs_params.png", "calibration.csv", "calibration.md", "hyperparameters.csv", "statistics.csv"]
    tables += ["statistics.md", "validation_curves.csv", "vtab1k.csv", "vtab1k.md", "vtab1k.tex"]
    assert names == tables and len(written) == 10  # no predictions: no calibration figures; 2 methods: no CD diagram
    assert (tmp_path / "tables" / "accuracy_vs_params.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    tex = (tmp_path / "tables" / "vtab1k.tex").read_text()
    assert tex.count("\\begin{tabular}") == tex.count("\\end{tabular}") >= 1 and "lora" in tex


def test_two_configs_of_one_adapter_are_never_averaged_together(tmp_path):
    write_run(tmp_path / "runs", "lora", "cifar", 0, 0.5)
    write_run(tmp_path / "runs", "lora", "cifar", 1, 0.9, rank=16)
    (tmp_path / "runs" / "vit_b16_in21k" / "cifar" / "lora__mean__early_stop__s1__x.json").rename(
        tmp_path / "runs" / "vit_b16_in21k" / "cifar" / "lora__mean__early_stop__s1__y.json"
    )
    methods = {
        m for m in pd.read_csv(write_tables(tmp_path / "runs", tmp_path / "t")[1]).method if m.startswith("lora")
    }
    assert len(methods) == 2 and all("[" in m for m in methods)


def test_the_19_columns_come_from_the_dataset_options():
    assert len(folders()) == 19 and folders()[:2] == ["cifar", "caltech101"]  # cifar100's folder is "cifar"
    assert labels()[0] == "CIFAR-100" and labels()[-1] == "sNORB-Elev"
    assert [len(folders(group)) for group in TaskGroup] == [7, 4, 8, 0]
    assert "mnist5k" not in folders()


def test_demo_results_alone_make_tables_with_an_other_tasks_section(tmp_path, capsys):
    for seed, adapter in enumerate(["linear", "lora", "vera", "pvera"]):
        write_run(tmp_path / "runs", adapter, "mnist5k", 0, 0.7 + seed / 100, backbone="tiny")
    main(["--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "tables")])
    assert len(capsys.readouterr().out.splitlines()) == 10
    markdown = squeezed((tmp_path / "tables" / "vtab1k.md").read_text())
    assert "No results on the 19 VTAB-1k tasks yet." in markdown
    other = markdown.split("## Other tasks")[1].split("## Failed runs")[0]
    assert [line.split(" | ")[4] for line in other.splitlines() if "| tiny |" in line] == sorted(
        ["linear", "lora", "vera", "pvera"]
    )
    assert "| tiny | mnist5k | early_stop | official convention | pvera | mean | 0.7300 |" in other
    csv = pd.read_csv(tmp_path / "tables" / "vtab1k.csv")
    assert csv.empty and list(csv.columns) == [*LONG_CSV_COLUMNS]


def test_print_keeps_one_backbone_and_dataset(tmp_path, runs, capsys):
    write_run(runs, "lora", "mnist5k", 0, 0.8, backbone="tiny")
    main(["--runs", str(runs), "--print", "--backbone", "tiny", "--dataset", "mnist5k"])
    lines = squeezed(capsys.readouterr().out).splitlines()
    assert len(lines) == 3
    assert lines[2].startswith(
        "| lora | mnist5k | tiny | mean | early_stop | official convention | 0 | success | 0.8000 |"
    )


def test_empty_results_folder_is_one_line(tmp_path):
    (tmp_path / "runs").mkdir()
    result = run_cli("--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "tables"), module="pvera_bench.table")
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"error: no result files under {tmp_path / 'runs'}; run some experiments first (see README)"
    ]
    assert not (tmp_path / "tables").exists()


def test_a_corrupt_result_file_is_named_left_out_and_the_rest_tabled(tmp_path, runs):
    broken = runs / "vit_b16_in21k" / "dtd" / "lora__mean__early_stop__s9__x.json"
    broken.write_text('{"status": "succ')
    result = run_cli("--runs", str(runs), "--out", str(tmp_path / "tables"), module="pvera_bench.table")
    assert result.returncode == 0, result.stderr
    [line] = [line for line in result.stderr.splitlines() if line.startswith("warning: ")]
    assert line.startswith(f"warning: {broken}: not a readable result file (") and line.endswith(
        "(left out of the tables)"
    )
    assert str(broken) in (tmp_path / "tables" / "vtab1k.md").read_text().split("Unreadable result files")[1]
    alone = tmp_path / "alone"
    (alone / "x").mkdir(parents=True)
    (alone / "x" / "r.json").write_text("[1, 2]")
    with pytest.raises(UserError, match=r"no readable result file under .*: not a result file \(a JSON object\)"):
        main(["--runs", str(alone), "--out", str(tmp_path / "t")])
    assert not (tmp_path / "t").exists()


def test_method_labels_name_the_sampling_mode_and_the_mc_dropout_rate():
    frame = pd.DataFrame(
        {
            "backbone": ["b"] * 4,
            "protocol": ["p"] * 4,
            "setup": ["s"] * 4,
            "adapter": ["lora", "lora", "pvera", "pvera"],
            "sampling": ["mean", "mc", "mc", "fixed"],
            "variant": ["v1", "v2", "v3", "v4"],
            "mc_dropout": [None, 0.1, None, None],
        }
    )
    assert list(method_labels(frame)) == ["lora", "lora (mc, MC dropout 0.1)", "pvera (mc)", "pvera (fixed)"]
    assert mc_dropout_of({"sampling": "mc", "config": {"adapter": {"dropout": 0.1}}}) == 0.1
    assert mc_dropout_of({"sampling": "mean", "config": {"adapter": {"dropout": 0.1}}}) is None  # dropout off in test
    assert mc_dropout_of({"sampling": "mc", "config": {"adapter": {"name": "pvera"}}}) is None


def test_results_of_the_old_protocol_name_join_the_renamed_one(tmp_path):
    write_run(tmp_path / "runs", "lora", "cifar", 0, 0.5)
    write_run(tmp_path / "runs", "lora", "cifar", 1, 0.7)
    old = tmp_path / "runs" / "vit_b16_in21k" / "cifar" / "lora__mean__early_stop__s1__x.json"
    record = json.loads(old.read_text())
    record["protocol"] = record["config"]["protocol"]["name"] = "pvera"  # written before the rename
    old.write_text(json.dumps(record))
    text = squeezed(write_tables(tmp_path / "runs", tmp_path / "t")[0].read_text())
    assert "## vit_b16_in21k · early_stop · official convention" in text and "· pvera ·" not in text
    assert "| lora | 60.0 ± 14.1 |" in text  # one method, both seeds


def test_the_accuracy_plot_of_a_partial_sweep_says_what_it_averages_and_has_no_offset_notation():
    from pvera_bench.reporting.plots import accuracy_vs_params_figure

    partial = {"params_m": 0.3, "per_task": {"cifar": 62.5, "dtd": 62.5}, "Mean (groups)": None}
    rows = [
        {**partial, "method": "lora", "backbone": "tiny", "protocol": "early_stop · official convention"},
        {**partial, "method": "vera", "backbone": "tiny", "protocol": "early_stop · official convention"},
    ]
    figure = accuracy_vs_params_figure(rows)
    [axes] = figure.axes
    figure.canvas.draw()
    assert axes.get_ylabel() == (
        "VTAB-1k test top-1 (%): mean of the 3 group means\n(partial rows: mean of the tasks they have)"
    )
    assert axes.yaxis.get_offset_text().get_text() == ""  # both points at 62.5: no "1e-7+6.25"
    legend = [text.get_text() for text in axes.get_legend().get_texts()]
    assert legend[0] == "lora (tiny, early_stop · official convention) [partial: mean of 2 of 19 tasks]"


NEW_BASELINES = {  # the published rows of each method added with issue 22, by their CSV name and source
    "vpt_deep": ("VPT-deep", "PETL_Vision", "cifar", 71.6),
    "ssf": ("SSF", "V-PETL", "cifar", 69.0),
    "bitfit": ("BitFit", "PETL_Vision", "cifar", None),
    "fact_tk": ("FacT-TK", "PETL_Vision", "cifar", None),
    "fact_tt": ("FacT-TT", "PETL_Vision", "cifar", None),
    "convpass": ("Convpass", "PETL_Vision", "cifar", None),
    "repadapter": ("RepAdapter", "PETL_Vision", "cifar", None),
}


def test_every_method_on_mock_19_task_results_has_its_published_rows_beside_it(tmp_path):
    root = tmp_path / "runs"
    for name in ["vpt_shallow", "ln_tuning", "adapter_plus", *NEW_BASELINES]:
        for i, task in enumerate(folders()):
            write_run(root, name, task, 0, 0.40 + i / 100)
    write_tables(root, tmp_path / "tables")
    frame = pd.read_csv(tmp_path / "tables" / "vtab1k.csv")
    ours = frame[frame.source == "pvera_bench (this repo)"]
    assert set(ours.method) == {"vpt_shallow", "ln_tuning", "adapter_plus", *NEW_BASELINES}
    csv = pd.read_csv("pvera_bench/reporting/published_vtab1k.csv")
    for adapter, (method, source, task, value) in NEW_BASELINES.items():
        rows = frame[frame.method.str.startswith(f"{method} = ours: {adapter}") & frame.source.str.contains(source)]
        published = csv[(csv.method == method) & csv.source.str.contains(source) & (csv.task == "cifar100")]
        assert rows[rows.task == task].top1.item() == pytest.approx(published.top1.item()), method
        if value is not None:
            assert published.top1.item() == pytest.approx(value)
        assert rows.protocol.str.startswith("published: ").all()
    markdown = squeezed((tmp_path / "tables" / "vtab1k.md").read_text())
    assert "| Houlsby adapter (rand init) = ours: bottleneck |" in markdown
    assert "| Pfeiffer adapter (LoRA init) = ours: bottleneck placement=pfeiffer |" in markdown
    write_report(load_results(root), root, tmp_path / "report_tables", tmp_path / "report.html")
    page = (tmp_path / "report.html").read_text()
    for adapter, (method, _, _, _) in NEW_BASELINES.items():  # the report's table: the same rows, ours beside them
        assert f"{method} = ours: {adapter}" in page and f">{adapter}<" in page, adapter
