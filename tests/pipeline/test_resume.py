"""Resume: a run stopped by SIGTERM (preemption) or SIGKILL ends with the uninterrupted result; the run state
round-trips through a weights-only checkpoint, and a damaged one starts the run over."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

import pytest
import torch
from helpers import results, run_cli, start_cli

from pvera_bench.models.runtime import rng_state
from pvera_bench.pipeline.guards import stop_on_sigterm
from pvera_bench.training.checkpoint import Checkpoint, GridRecord, RunState
from pvera_bench.training.loop import FitResult


def checkpoint_epoch(folder: Path) -> int:
    """The last epoch in the checkpoint of the run writing under ``folder`` (0: none readable yet)."""
    for checkpoint in folder.rglob("*.ckpt"):
        try:
            fit = torch.load(checkpoint, weights_only=True)["fit"]
            return min(member["loop"]["epoch"] for member in fit.get("members", [fit]))  # a pack: every point's
        except Exception:  # noqa: BLE001  (replaced while being read: try again)
            pass
    return 0


@pytest.mark.slow
@pytest.mark.parametrize(
    "stop, grid, epochs",
    [(signal.SIGTERM, "none", 8), (signal.SIGKILL, "none", 8), (signal.SIGKILL, "pvera", 5)],
    ids=["sigterm", "sigkill", "sigkill-packed-grid"],
)
def test_a_run_stopped_mid_training_resumes_to_the_uninterrupted_result(stop, grid, epochs, uninterrupted, tmp_path):
    args, straight = uninterrupted(grid, epochs)
    folder = tmp_path / "runs"
    process = start_cli(*args, f"paths.results={folder}")
    deadline = time.monotonic() + 300
    epoch = 0
    while epoch < 2 and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
        epoch = checkpoint_epoch(folder)
    sent = time.monotonic()
    process.send_signal(stop)
    _, stderr = process.communicate(timeout=60)
    assert 2 <= epoch < epochs, "the run was not caught mid-training"
    if stop == signal.SIGTERM:  # preemption: the run stops at the next batch and exits as schedulers expect
        assert time.monotonic() - sent < 30
        assert process.returncode == 143, stderr
        assert stderr.strip().splitlines()[-1].startswith("preempted: stopped on SIGTERM; checkpoint: ")
    else:
        assert process.returncode == -signal.SIGKILL
    assert list(folder.rglob("*.ckpt")) and not list(folder.rglob("*.json"))
    again = run_cli(*args, f"paths.results={folder}")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming after epoch" in again.stdout + again.stderr
    [resumed] = results(folder).values()
    assert (resumed["test_top1"], resumed["test_nll"]) == (straight["test_top1"], straight["test_nll"])
    assert resumed["history"] == straight["history"] and resumed["grid"] == straight["grid"]
    assert resumed["packed"] == (grid == "pvera")
    assert not list(folder.rglob("*.ckpt"))


def test_run_state_round_trips_through_a_weights_only_checkpoint(tmp_path):
    state = RunState(
        grid=[
            GridRecord({"adapter.r": 2}, 0.5, 0.5, 0.75, 3, 4, [0.7, 0.6, 0.5, 0.55], selected=True),
            GridRecord({"adapter.r": 4}, 0.6, 0.6, 0.7, 2, 4),
        ],
        chosen_weights={"head.weight": torch.randn(3, 2)},
        chosen_fit=FitResult(4, 3, 100.0, [{"epoch": 1, "train_loss": 1.5}], {"nll": 0.5, "top1": 0.75}),
        stage="point2",
        fit={"loop": {"epoch": 1}, "rng": rng_state(torch.Generator().manual_seed(0))},
    )
    checkpoint = Checkpoint(tmp_path / "run.ckpt", enabled=True)
    checkpoint.save(state)
    loaded = checkpoint.load()
    assert (loaded.grid, loaded.chosen_fit, loaded.stage) == (state.grid, state.chosen_fit, "point2")
    torch.testing.assert_close(loaded.chosen_weights, state.chosen_weights)
    torch.testing.assert_close(loaded.fit["rng"]["shuffle"], state.fit["rng"]["shuffle"])
    assert loaded.fit["loop"] == {"epoch": 1} and loaded.selected_index() == 0
    assert [record.as_json() for record in loaded.grid] == [
        {
            "point": {"adapter.r": 2},
            "val_loss": 0.5,
            "val_nll": 0.5,
            "val_top1": 0.75,
            "best_epoch": 3,
            "epochs_run": 4,
            "val_curve": [0.7, 0.6, 0.5, 0.55],
            "selected": True,
        },
        {
            "point": {"adapter.r": 4},
            "val_loss": 0.6,
            "val_nll": 0.6,
            "val_top1": 0.7,
            "best_epoch": 2,
            "epochs_run": 4,
            "val_curve": [],
        },
    ]
    assert [p.name for p in tmp_path.iterdir()] == ["run.ckpt"]  # written through a temporary file, then renamed


def test_a_truncated_or_foreign_checkpoint_starts_the_run_over(tmp_path, caplog):
    checkpoint = Checkpoint(tmp_path / "run.ckpt", enabled=True)
    checkpoint.save(RunState(stage="retrain", fit={"loop": {"epoch": 3}}))
    saved = checkpoint.path.read_bytes()
    checkpoint.path.write_bytes(saved[: len(saved) // 2])
    assert checkpoint.load() == RunState()
    torch.save({"epoch": 3, "weights": torch.zeros(2)}, checkpoint.path)  # a checkpoint of another layout
    assert checkpoint.load() == RunState()
    assert caplog.text.count("is unreadable") == 2 and "starting over" in caplog.text


def test_a_disabled_checkpoint_neither_writes_nor_reads(tmp_path):
    Checkpoint(tmp_path / "run.ckpt", enabled=True).save(RunState(stage="retrain"))
    disabled = Checkpoint(tmp_path / "run.ckpt", enabled=False)
    assert disabled.load() == RunState()
    disabled.save(RunState(stage="point0"))
    assert Checkpoint(tmp_path / "run.ckpt", enabled=True).load().stage == "retrain"


def test_sigterm_within_the_block_only_asks_training_to_stop():
    before = signal.getsignal(signal.SIGTERM)
    with stop_on_sigterm() as should_stop:
        assert not should_stop()
        os.kill(os.getpid(), signal.SIGTERM)
        deadline = time.monotonic() + 5
        while not should_stop() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert should_stop()
    assert signal.getsignal(signal.SIGTERM) is before
    with stop_on_sigterm() as should_stop:  # each run starts unstopped
        assert not should_stop()


@pytest.mark.slow
@pytest.mark.parametrize("packed", [False, True], ids=["in-turn", "packed"])
def test_joint_grid_search_stopped_mid_epoch_resumes_to_the_uninterrupted_result(
    packed, data_root, tmp_path, monkeypatch
):
    """The official code's lockstep search (quirks.joint_early_stopping) checkpoints every point every epoch."""
    from helpers import compose_config

    import pvera_bench.pipeline.run as run_module

    def config(folder: Path):
        return compose_config(
            "experiment=pvera_paper",
            "backbone=tiny",
            "dataset=mnist5k",
            "adapter=vera",
            "trainer.epochs=3",
            "trainer.batch_size=100",
            "trainer.progress=false",
            f"trainer.pack={packed}",
            f"data.root={data_root}",
            f"paths.results={folder}",
        )

    straight = run_module.run(config(tmp_path / "straight"))
    assert all(record.get("packed_with") == ([0, 1, 2] if packed else None) for record in straight["grid"])
    batches_seen = []
    # 8 batches per epoch: the first epoch of every point (in turn: 3 x 8 batches; packed: 8), then 3 batches into
    # the second epoch (in turn: of the first point's)
    first_epochs = 8 if packed else 3 * 8

    @contextlib.contextmanager
    def stop_after_four_epochs_and_a_bit():
        yield lambda: batches_seen.append(1) or len(batches_seen) > first_epochs + (3 if packed else 8 + 3)

    monkeypatch.setattr(run_module, "stop_on_sigterm", stop_after_four_epochs_and_a_bit)
    with pytest.raises(SystemExit) as stopped:
        run_module.run(config(tmp_path / "resumed"))
    assert stopped.value.code == 143
    [checkpoint] = (tmp_path / "resumed").rglob("*.ckpt")
    saved = torch.load(checkpoint, weights_only=True)
    assert saved["stage"] == "grid" and [m["loop"]["epoch"] for m in saved["fit"]["members"]] == [1, 1, 1]
    monkeypatch.undo()
    resumed = run_module.run(config(tmp_path / "resumed"))
    assert (resumed["test_top1"], resumed["test_nll"]) == (straight["test_top1"], straight["test_nll"])
    assert resumed["grid"] == straight["grid"] and resumed["history"] == straight["history"]
