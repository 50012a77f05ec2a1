"""scripts/gpu_bench.py runs end to end on CPU with small shapes (so that it runs first time on a GPU), and
``pvera-bench reproduce`` takes its training throughput from the report it writes."""

from __future__ import annotations

import json
import shlex

from helpers import run_bench, run_script


def test_gpu_bench_runs_on_cpu_and_reproduce_reads_its_throughput(tmp_path, data_root):
    args = ["--device", "cpu", "--adapters", "lora", "--dtypes", "bf16", "--steps", "1", "--repeats", "1"]
    args += ["--warmup", "1"]
    args += ["--overrides", "backbone=tiny", f"data.root={data_root}", "--out", str(tmp_path / "results/bench")]
    result = run_script("scripts/gpu_bench.py", *args, "--budget-s", "0")  # one compiled cell, then the budget is spent
    assert result.returncode == 0, result.stderr[-3000:]
    [report_file] = (tmp_path / "results/bench").glob("gpu-*.json")
    report = json.loads(report_file.read_text())
    assert report_file.name == "gpu-cpu.json" and report["device"] == "cpu"
    assert report["command"] == shlex.join(["python", "scripts/gpu_bench.py", *args, "--budget-s", "0"])
    assert set(report) >= {"commit", "dirty", "versions"}
    cells = {(c["mode"], c["compile"]): c for c in report["cells"]}
    assert set(cells) == {(mode, compiled) for mode in ("alone", "in_turn", "packed") for compiled in (False, True)}
    assert [cells[mode, False]["points"] for mode in ("alone", "in_turn", "packed")] == [1, 3, 3]  # grid=pvera: r
    measured = [c for c in cells.values() if "skipped" not in c]
    assert len(measured) == 4 and cells["alone", True] in measured  # the eager cells and one compiled cell
    assert all(c["train_images_per_s"] > 0 and c["mfu"] is None for c in measured)  # no CPU peak is known
    assert all(c["host_page_faults"] >= 0 for c in measured)
    assert len(cells["packed", False]["time_over_first_pairs"]) == 1  # one timed pair
    assert cells["packed", False]["model_tflops_per_s"] > 0
    real = report["real_run"]
    assert real["points"] == 3 and real["packed"] and real["train_images_per_s"] > 0
    markdown = (tmp_path / "results/bench/gpu-cpu.md").read_text()
    assert markdown.startswith(f"`{report['command']}` on cpu") and "| lora " in markdown and "nan" not in markdown
    projected = run_bench("reproduce", "--adapters", "lora", "--bench", str(report_file))
    assert projected.returncode == 0, projected.stderr
    line = f"  measured training throughput {real['train_images_per_s']:.1f} images/s on cpu (one epoch of a packed run"
    assert line in projected.stdout
