"""Bad input and faults: one line and a non-zero exit, nothing lost or half-written, no code run from files.

Each case is named in its test id. Runs use the demo experiment (tiny backbone, mnist5k) with
a two-epoch trainer, so a case that wrongly trained would still finish quickly.
"""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from helpers import expected_result_path, run_cli

from pvera_bench.artefacts.layout import RunFiles
from pvera_bench.core.errors import UserError
from pvera_bench.core.files import write_json
from pvera_bench.pipeline.guards import exclusive
from pvera_bench.pipeline.run import run

SMOKE = ("experiment=demo", "trainer=smoke")


class Payload:
    """A pickle that, when unpickled by a trusting loader, creates a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def malicious_file(path: Path, marker: Path) -> Path:
    with open(path, "wb") as f:
        pickle.dump({"state_dict": Payload(marker)}, f)
    return path


def test_task_built_for_another_class_count(mock_root, tmp_path):
    result = run_cli(
        *SMOKE, "dataset=kitti", "dataset.num_classes=5", f"data.root={mock_root}", f"paths.results={tmp_path}"
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: {mock_root / 'kitti' / 'manifest.json'}: the task has 4 classes but dataset.num_classes=5"
    )


def test_full_results_disk_fails_before_training(demo_config, monkeypatch):
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10, 9, 1 << 20))
    cfg = demo_config("adapter=linear")
    with pytest.raises(UserError, match=r"^paths.results: only 1 MiB free in .*; free some space"):
        run(cfg)
    assert not list(Path(cfg.paths.results).rglob("*.json"))


def test_pickled_code_in_weights_is_never_run(data_root, tmp_path):
    marker = tmp_path / "pwned"
    weights = malicious_file(tmp_path / "model.pth", marker)
    result = run_cli(*SMOKE, f"backbone.weights={weights}", f"data.root={data_root}", f"paths.results={tmp_path}")
    assert result.returncode == 2
    *_, last = result.stderr.splitlines()
    assert last.startswith("error: ") and "holds pickled objects other than tensors; refusing to unpickle it" in last
    assert [line for line in result.stderr.splitlines() if "pickle" in line.lower()] == [last]  # no torch warning
    assert not marker.exists()


def test_pickled_code_in_a_checkpoint_is_never_run(demo_config, tmp_path, caplog):
    cfg = demo_config("adapter=lora")
    path = expected_result_path(cfg)
    path.parent.mkdir(parents=True)
    marker = tmp_path / "pwned"
    malicious_file(RunFiles(path).checkpoint, marker)
    record = run(cfg)
    assert record["status"] == "success" and not marker.exists()
    assert "is unreadable" in caplog.text and "starting over" in caplog.text


def test_pickled_code_in_a_decoded_cache_is_never_run(demo_config, data_root, tmp_path, caplog):
    task = shutil.copytree(data_root / "mnist5k", tmp_path / "data" / "mnist5k")
    (task / ".cache").mkdir(exist_ok=True)
    marker = tmp_path / "pwned"
    malicious_file(task / ".cache" / "test-28x28-bicubic.pt", marker)
    record = run(demo_config("adapter=linear", f"data.root={tmp_path / 'data'}"))
    assert record["status"] == "success" and not marker.exists()
    assert "is unreadable" in caplog.text
    assert torch.load(task / ".cache" / "test-28x28-bicubic.pt", weights_only=True)["images"].dtype == torch.uint8


def test_non_finite_loss_records_a_failed_run(demo_config):
    cfg = demo_config("adapter=linear", "trainer.lr=1e30", "trainer.cache_features=false")
    with pytest.raises(UserError, match=r"^run failed: training loss is (nan|inf); lower trainer.lr"):
        run(cfg)
    [path] = Path(cfg.paths.results).rglob("*.json")
    record = json.loads(path.read_text())
    assert record["status"] == "failed" and "training loss is" in record["error"]
    assert record["config"]["trainer"]["lr"] == 1e30
    assert not list(Path(cfg.paths.results).rglob("*.ckpt"))
    assert "test_top1" not in record


def test_a_failed_write_leaves_the_previous_result_intact(tmp_path):
    path = tmp_path / "result.json"
    write_json(path, {"status": "success", "test_top1": 0.5})
    with pytest.raises(TypeError):
        write_json(path, {"status": "success", "bad": object()})
    assert json.loads(path.read_text()) == {"status": "success", "test_top1": 0.5}
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]


def test_a_second_identical_run_in_parallel_does_not_touch_the_first(demo_config):
    cfg = demo_config("adapter=linear")
    path = expected_result_path(cfg)
    path.parent.mkdir(parents=True)
    with exclusive(RunFiles(path).lock) as owner:  # as if another process were running this configuration
        assert owner
        record = run(cfg)
    assert record["status"] == "running elsewhere"
    assert not path.exists() and not RunFiles(path).checkpoint.exists()
    assert run(cfg)["status"] == "success"  # once the other process is done, the run goes ahead


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_asked_for_without_a_gpu(data_root, tmp_path):
    result = run_cli(*SMOKE, "trainer.device=cuda", f"data.root={data_root}", f"paths.results={tmp_path}")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "error: trainer.device=cuda but CUDA is not available; use trainer.device=auto or cpu"
    )
    assert not list(tmp_path.rglob("*.json"))
