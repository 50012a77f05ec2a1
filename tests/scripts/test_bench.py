"""scripts/bench.py runs end to end on a tiny ViT and writes its JSON report and Markdown table.

Timings are not asserted here (speed targets live in the benchmark itself, not in tests).
"""

from __future__ import annotations

import json

from helpers import run_script, squeezed


def test_bench_writes_report_and_table(tmp_path):
    args = ["--backbone", "vit_tiny_patch16_224", "--img-size", "32", "--adapters", "lora", "pvera", "linear"]
    args += ["--dtypes", "fp32", "bf16", "--iters", "2", "--eval-iters", "2", "--peft-iters", "2"]
    args += ["--warmup", "0", "--probe-epochs", "0"]
    result = run_script("scripts/bench.py", *args, "--name", "tiny", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "tiny.json").read_text())
    assert report["settings"]["backbone"] == "vit_tiny_patch16_224" and report["linear_probe"] is None
    assert [(row["adapter"], row["dtype"]) for row in report["rows"]] == [
        (name, dtype) for dtype in ("fp32", "bf16") for name in ("lora", "pvera", "linear")
    ]
    assert all(row["step_s"] > 0 and row["floor_s"] > 0 for row in report["rows"])
    lora, pvera, linear = report["rows"][:3]
    # rank 256 with a log-variance branch costs more than rank 8; the head alone needs no backward through the blocks
    assert pvera["flops_over_floor"] > lora["flops_over_floor"] > linear["flops_over_floor"]
    assert "over_peft" in lora and "over_peft_qv" in pvera and "over_peft" not in linear
    assert "merged_eval_over_bare" in lora and "merged_eval_over_bare" not in linear
    table = (tmp_path / "tiny.md").read_text()
    assert squeezed(table).count("\n| lora | ") == 2 and "over_peft_qv" in table
    (tmp_path / "tiny.md").unlink()
    assert run_script("scripts/bench.py", "--render", str(tmp_path / "tiny.json")).returncode == 0
    assert (tmp_path / "tiny.md").read_text() == table
