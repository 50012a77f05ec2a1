"""Bad input and faults: one line and a non-zero exit, nothing lost or half-written, no code run from files.

Each case is named in its test id. Runs use the demo experiment (tiny backbone, mnist5k) with
a two-epoch trainer, so a case that wrongly trained would still finish quickly.
"""

from __future__ import annotations

import json
import pickle
import shutil
import signal
import time
from pathlib import Path

import pytest
import torch
from conftest import run_cli, start_cli

from pvera_bench import run as run_module
from pvera_bench.errors import UserError
from pvera_bench.results import write_json
from pvera_bench.run import run

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


BAD_CONFIGS = [
    (
        "unknown-adapter",
        ["adapter=nonexistent"],
        "Could not find 'adapter/nonexistent'; available options in 'adapter'",
    ),
    ("wrong-type", ["trainer.lr=abc"], "Value 'abc' of type 'str' could not be converted to Float"),
    ("misspelt-key", ["trainer.lrr=1"], "Key 'lrr' not in 'TrainerConfig'"),
    ("zero-epochs", ["trainer.epochs=0"], "trainer.epochs=0 must be >= 1"),
    ("negative-batch", ["trainer.batch_size=-1"], "trainer.batch_size=-1 must be >= 1"),
    ("negative-lr", ["trainer.lr=-0.1"], "trainer.lr=-0.1 must be positive"),
    ("warmup-not-shorter-than-training", ["trainer.warmup_epochs=2"], "trainer.warmup_epochs=2 must be in [0, trainer"),
    ("unknown-scheduler", ["trainer.scheduler=linear"], "trainer.scheduler=linear must be constant/cosine"),
    ("mc-with-no-samples", ["sampling=mc", "sampling.n=0"], "sampling.n=0 must be >= 1"),
    ("unknown-sampling-mode", ["sampling.mode=median"], "sampling.mode=median must be one of"),
    ("zero-beta", ["dataset.beta=0"], "dataset.beta=0.0 must be positive (the KL weight is 1/beta)"),
    ("negative-beta", ["dataset.beta=-1e6"], "dataset.beta=-1000000.0 must be positive"),
    ("one-class", ["dataset.num_classes=1"], "dataset.num_classes=1 must be >= 2"),
    ("zero-rank", ["adapter=lora", "adapter.r=0"], "adapter=lora: adapter.r must be >= 1, got 0"),
    (
        "lora-rank-above-width",
        ["adapter=lora", "adapter.r=500"],
        "adapter=lora: adapter.r=500 exceeds the width 192 of attn.qkv; use adapter.r <= 192",
    ),
    ("dora-rank-above-width", ["adapter=dora", "adapter.r=193"], "adapter.r=193 exceeds the width 192"),
    (
        "missing-target-layer",
        ["adapter=vera", "adapter.targets=[attn.nope]"],
        "adapter target 'attn.nope' does not exist in block 0",
    ),
    (
        "bad-qkv-slice",
        ["adapter=pvera", "adapter.qkv_slices=[q,x]"],
        "adapter.qkv_slices must be distinct names from q, k, v; got ['q', 'x']",
    ),
    ("negative-dropout", ["adapter=lora", "adapter.dropout=-0.5"], "adapter.dropout must be in [0, 1), got -0.5"),
    (
        "improvement-threshold-out-of-range",
        ["protocol.min_rel_improvement=1.5"],
        "protocol.min_rel_improvement=1.5 must be in [0, 1)",
    ),
    ("negative-seed", ["seed=-1"], "seed=-1 must be >= 0"),
    ("no-decode-workers", ["data.decode_workers=0"], "data.decode_workers=0 must be >= 1"),
    ("zero-image-size", ["backbone.img_size=0"], "backbone.img_size=0 must be >= 1"),
    ("unknown-device", ["trainer.device=gpu"], "trainer.device=gpu is not a device; use auto, cpu, cuda or cuda:N"),
    ("test-split-used-for-selection", ["protocol.val_split=test"], "test data may only test"),
    (
        "code-as-logger",
        ["logger=wandb", "logger._target_=os.system"],
        "logger._target_=os.system is not a class of pvera_bench.loggers.",
    ),
    ("classes-fewer-than-labels", ["dataset.num_classes=5"], "is outside [0, 5) (dataset.num_classes=5)"),
    ("unknown-timm-model", ["backbone.name=vit_nope"], "backbone.name=vit_nope: timm has no such model"),
    (
        "weights-file-missing",
        ["backbone.weights=/nonexistent/model.safetensors"],
        "backbone.weights=/nonexistent/model.safetensors: no such file",
    ),
    ("unwritable-results", ["paths.results=/dev/null/runs"], "paths.results: cannot write to /dev/null/runs"),
]


@pytest.mark.parametrize("overrides, message", [c[1:] for c in BAD_CONFIGS], ids=[c[0] for c in BAD_CONFIGS])
def test_bad_input_is_one_line_with_nothing_written(overrides, message, data_root, tmp_path):
    results = tmp_path / "runs"
    args = [*SMOKE, f"data.root={data_root}", f"paths.results={results}", *overrides]
    before = sorted(p.relative_to(data_root) for p in data_root.rglob("*"))
    result = run_cli(*args)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and message in last, last
    assert not list(results.rglob("*.json")) if results.exists() else True
    assert not list(results.rglob("*.ckpt")) if results.exists() else True
    caches = [p for p in data_root.rglob("*") if p.suffix == ".pt"]
    assert all(torch.load(p, weights_only=True)["images"].dtype == torch.uint8 for p in caches)
    assert sorted(p.relative_to(data_root) for p in data_root.rglob("*") if p.suffix != ".pt") == [
        p for p in before if p.suffix != ".pt"
    ]


def test_vera_and_pvera_ranks_may_exceed_the_width(demo_config):
    record = run(demo_config("adapter=vera", "adapter.r=500", "trainer.epochs=1"))
    assert record["status"] == "success" and record["adapter_params"] == 4 * 2 * (500 + 192)


def test_grid_key_that_is_not_a_config_key(demo_config):
    cfg = demo_config("adapter=lora")
    cfg.grid = {"lora": {"adapter.rank": [2, 4]}}
    with pytest.raises(UserError, match=r"^grid.lora: adapter.rank is not a config key$"):
        run(cfg)


def test_task_built_for_another_class_count(mock_root, tmp_path):
    result = run_cli(
        *SMOKE, "dataset=kitti", "dataset.num_classes=5", f"data.root={mock_root}", f"paths.results={tmp_path}"
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: {mock_root / 'kitti' / 'manifest.json'}: the task has 4 classes but dataset.num_classes=5"
    )


def test_full_results_disk_fails_before_training(demo_config, monkeypatch):
    monkeypatch.setattr(run_module.shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10, 9, 1 << 20))
    cfg = demo_config("adapter=linear")
    with pytest.raises(UserError, match=r"^paths.results: only 1 MiB free in .*; free some space"):
        run(cfg)
    assert not list(Path(cfg.paths.results).rglob("*.json"))


def test_pickled_code_in_weights_is_never_run(data_root, tmp_path):
    marker = tmp_path / "pwned"
    weights = malicious_file(tmp_path / "model.pth", marker)
    result = run_cli(*SMOKE, f"backbone.weights={weights}", f"data.root={data_root}", f"paths.results={tmp_path}")
    assert result.returncode == 2
    assert "holds pickled objects other than tensors; refusing to unpickle it" in result.stderr.splitlines()[-1]
    assert not marker.exists()


def test_pickled_code_in_a_checkpoint_is_never_run(demo_config, tmp_path, caplog):
    cfg = demo_config("adapter=lora")
    path = run_module.result_path(Path(cfg.paths.results), run_module.OmegaConf.to_container(cfg, resolve=True))
    path.parent.mkdir(parents=True)
    marker = tmp_path / "pwned"
    malicious_file(path.with_suffix(".ckpt"), marker)
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
    path = run_module.result_path(Path(cfg.paths.results), run_module.OmegaConf.to_container(cfg, resolve=True))
    path.parent.mkdir(parents=True)
    with run_module.exclusive(path) as owner:  # as if another process were running this configuration
        assert owner
        record = run(cfg)
    assert record["status"] == "running elsewhere"
    assert not path.exists() and not path.with_suffix(".ckpt").exists()
    assert run(cfg)["status"] == "success"  # once the other process is done, the run goes ahead


def test_sigterm_mid_epoch_checkpoints_exits_and_resumes_to_the_same_result(uninterrupted, tmp_path):
    args, a = uninterrupted
    results = tmp_path / "interrupted"
    process = start_cli(*args, f"paths.results={results}")
    deadline = time.monotonic() + 300
    while not list(results.rglob("*.ckpt")) and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.02)
    time.sleep(0.05)  # into the next epoch
    sent = time.monotonic()
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert time.monotonic() - sent < 30
    assert process.returncode == 143, stderr
    assert stderr.strip().splitlines()[-1].startswith("preempted: stopped on SIGTERM; checkpoint: ")
    assert list(results.rglob("*.ckpt")) and not list(results.rglob("*.json"))
    resumed = run_cli(*args, f"paths.results={results}")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    [b] = [json.loads(p.read_text()) for p in results.rglob("*.json")]
    assert (b["test_top1"], b["test_nll"]) == (a["test_top1"], a["test_nll"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_asked_for_without_a_gpu(data_root, tmp_path):
    result = run_cli(*SMOKE, "trainer.device=cuda", f"data.root={data_root}", f"paths.results={tmp_path}")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "error: trainer.device=cuda but CUDA is not available; use trainer.device=auto or cpu"
    )
    assert not list(tmp_path.rglob("*.json"))
