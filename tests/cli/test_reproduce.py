"""pvera-bench reproduce: the sweep that reproduces the PVeRA paper's table, and its projected GPU-hours."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from helpers import run_bench

from pvera_bench.config import CONF_DIR

PAPER_ADAPTERS = "linear,lora,dora,vera,pvera,adaptformer,bottleneck,ia3"


def vtab_options() -> list[str]:
    """The 19 VTAB-1k dataset options: those of conf/dataset with an ``order``."""
    paths = sorted(Path(CONF_DIR, "dataset").glob("*.yaml"))
    return [path.stem for path in paths if yaml.safe_load(path.read_text()).get("order") is not None]


def projected_hours(stdout: str) -> float:
    [hours] = re.findall(r"^projected GPU-hours: ([\d.]+)", stdout, flags=re.MULTILINE)
    return float(hours)


def test_prints_the_paper_sweep_and_its_run_count():
    completed = run_bench("reproduce")
    assert completed.returncode == 0, completed.stderr
    out = completed.stdout
    command, cluster = out.split("python -m pvera_bench")[1:]
    tasks = vtab_options()
    assert len(tasks) == 19 and "mnist5k" not in tasks
    for block in (command, cluster):
        assert "experiment=pvera_paper" in block
        assert f"adapter={PAPER_ADAPTERS}" in block
        [datasets] = re.findall(r"dataset=(\S+)", block)
        assert sorted(datasets.split(",")) == sorted(tasks)
        assert "seed=0,1,2" in block
    assert "hydra/launcher=slurm_gpu" in cluster
    assert "8 adapters x 19 tasks x 3 seeds = 456 " in out
    assert "PROJECTION" in out and "not a measurement" in out
    assert out.count("assumed") >= 3
    assert projected_hours(out) > 0


def test_projection_scales_with_the_assumed_throughput():
    base = run_bench("reproduce")
    halved = run_bench("reproduce", "--train-throughput", "175", "--infer-throughput", "350")
    assert base.returncode == 0 and halved.returncode == 0, base.stderr + halved.stderr
    assert "assumed training throughput   175 images/s" in halved.stdout
    ratio = projected_hours(halved.stdout) / projected_hours(base.stdout)
    assert abs(ratio - 2) < 0.01


def test_adapters_and_seeds_narrow_the_sweep():
    completed = run_bench("reproduce", "--adapters", "vera,pvera", "--seeds", "0")
    assert completed.returncode == 0, completed.stderr
    assert "adapter=vera,pvera " in completed.stdout and "seed=0\n" in completed.stdout
    assert "2 adapters x 19 tasks x 1 seeds = 38 " in completed.stdout


def test_an_unknown_adapter_is_a_one_line_error():
    completed = run_bench("reproduce", "--adapters", "lora,nosuch")
    assert completed.returncode == 2
    assert completed.stdout == ""
    [line] = completed.stderr.strip().splitlines()
    assert line.startswith("error:") and "nosuch" in line and PAPER_ADAPTERS in line


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "no such file; run scripts/gpu_bench.py on a GPU first, or give --train-throughput"),
        ("{}", "not a report of scripts/gpu_bench.py (KeyError: 'real_run')"),
    ],
    ids=["missing", "not-a-report"],
)
def test_a_bad_bench_report_is_one_line(tmp_path, content, message):
    report = tmp_path / "gpu-h100.json"
    if content is not None:
        report.write_text(content)
    result = run_bench("reproduce", "--bench", str(report))
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.strip().splitlines() == [f"error: --bench {report}: {message}"]
