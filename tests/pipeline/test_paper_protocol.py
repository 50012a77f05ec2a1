"""``experiment=pvera_paper`` against an independent rewrite of the official PVeRA training loop.

``official_grid_search`` below is written in plain torch from the notes in /work/shared/reference/pvera.md:
§2 (AdamW, lr 1e-4 and weight decay 1e-4, the VeRA/PVeRA adapter at its grid lr, batch 16, the train loader
not shuffled, validation loss every epoch, patience on it with a 0.1 % relative improvement), §2.2 (the
grid-search trick: every config sees the same batch and the summed loss takes one backward step; a global
best saved whenever the lowest per-config best val loss improves on the last saved one; training stops when
every config is stale) and §5.1 E1 (softmax before ``CrossEntropyLoss``, in training and in the val loss).
No code of the official repository is copied, and the harness's training code (``engine``, ``selection``,
``evaluation``) is not called: the harness only builds the same model for each grid point
(``seeded_model``) and loads the same splits (``task_inputs``).

The harness runs the same experiment on the same data and seed; every grid point's per-epoch val loss, the
number of epochs, each point's kept epoch and the selected point must agree. The schedule is cut to a few
epochs with ``protocol.patience=1`` and a 1 % improvement threshold, so that within them some points go stale
(and, under joint early stopping, keep training) while others still improve.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from helpers import compose_config
from torch import Tensor, nn

from pvera_bench.config.grid import grid_points, with_point
from pvera_bench.data import SplitData
from pvera_bench.models.build import seeded_model
from pvera_bench.pipeline.run import run, task_inputs

EPOCHS, PATIENCE = 3, 1  # the paper: up to 500 epochs, patience 20 (and a 0.1 % relative improvement)

# ---- the official training loop (reference/pvera.md §2, §2.2, §5.1 E1) ----
LR, WEIGHT_DECAY, BATCH = 1e-4, 1e-4, 16


@dataclass
class Official:
    curves: list[list[float]]  # val loss of every epoch, per grid config
    best_epochs: list[int]  # 1-based epoch of each config's best val loss
    kept: tuple[int, int]  # (config, 1-based epoch) of the last global save: what gets tested
    epochs: int  # epochs trained (by every config)


def official_val_loss(model: nn.Module, val: SplitData, normalize: Callable[[Tensor], Tensor]) -> float:
    """E1: mean over val images of CrossEntropy(softmax(logits), y); eval mode (a PVeRA latent is its mean)."""
    model.eval()
    total = 0.0
    with torch.no_grad():
        for start in range(0, len(val.labels), BATCH):
            probs = model(normalize(val.images[start : start + BATCH])).softmax(dim=-1)
            total += F.cross_entropy(probs, val.labels[start : start + BATCH], reduction="sum").item()
    return total / len(val.labels)


def official_grid_search(
    models: list[nn.Module],
    adapter_lrs: list[float],
    train: SplitData,
    val: SplitData,
    normalize: Callable[[Tensor], Tensor],
    epochs: int,
    patience: int,
    min_rel: float,
) -> Official:
    """§2.2: the configs train side by side on the same batches, one AdamW with a (head, adapter) group pair per
    config and one backward of the summed loss; each config early-stops on its own val loss, and all stop once
    every one has gone ``patience`` epochs without a relative improvement of ``min_rel``."""
    groups = []
    for model, adapter_lr in zip(models, adapter_lrs, strict=True):
        trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        groups.append({"params": [p for n, p in trainable if n.startswith("head.")], "lr": LR})
        groups.append({"params": [p for n, p in trainable if not n.startswith("head.")], "lr": adapter_lr})
    # torch's default AdamW, as the official code; the harness's fused=True gives the same curves to 1e-7 here
    optimiser = torch.optim.AdamW(groups, weight_decay=WEIGHT_DECAY)
    n = len(models)
    curves: list[list[float]] = [[] for _ in models]
    best, best_epochs, stale = [math.inf] * n, [0] * n, [0] * n
    saved, kept = math.inf, (-1, 0)
    for epoch in range(1, epochs + 1):
        for model in models:
            model.train()
        for start in range(0, len(train.labels), BATCH):  # E7: shuffle=False, the file order every epoch
            images, labels = normalize(train.images[start : start + BATCH]), train.labels[start : start + BATCH]
            loss = sum(F.cross_entropy(model(images).softmax(dim=-1), labels) for model in models)  # E1
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        for i, model in enumerate(models):
            curves[i].append(official_val_loss(model, val, normalize))
            if curves[i][-1] < best[i] * (1 - min_rel):
                best[i], best_epochs[i], stale[i] = curves[i][-1], epoch, 0
            else:
                stale[i] += 1
        leader = min(range(n), key=lambda i: best[i])
        if best[leader] < saved * (1 - min_rel):  # the global best checkpoint is saved
            saved, kept = best[leader], (leader, best_epochs[leader])
        if all(s >= patience for s in stale):
            break
    return Official(curves, best_epochs, kept, epoch)


# ---- the harness on the same experiment ----
@pytest.fixture
def one_thread():
    """One intra-op thread: the tiny model runs several times faster on a shared 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# (adapter, min_rel_improvement, stops early): the improvement threshold is raised from 0.1 % so that the
# three epochs exercise the joint rules. VeRA at 1 %: lr 1e-5 improves ~0.5 %/epoch, so it is stale from
# epoch 2 and, under joint early stopping, keeps training while lr 1e-3 improves ~5 %/epoch (it would stop
# after epoch 2 on its own). LoRA at 3 %: every rank improves < 3 % in epoch 2, so all are stale and the grid
# stops after epoch 2, keeping rank 32's epoch 1.
CASES = [("vera", 1e-2, False), ("lora", 3e-2, True)]


@pytest.mark.slow
@pytest.mark.parametrize(("adapter", "min_rel", "stops_early"), CASES, ids=[case[0] for case in CASES])
def test_pvera_paper_matches_the_official_training_loop(adapter, min_rel, stops_early, data_root, tmp_path, one_thread):
    cfg = compose_config(
        "experiment=pvera_paper",
        "backbone=tiny",
        "dataset=mnist5k",
        f"adapter={adapter}",
        f"trainer.epochs={EPOCHS}",
        "trainer.progress=false",
        "trainer.device=cpu",
        f"protocol.patience={PATIENCE}",
        f"protocol.min_rel_improvement={min_rel}",
        f"data.root={data_root}",
        f"paths.results={tmp_path / 'runs'}",
    )
    record = run(cfg)
    assert {"double_softmax", "no_shuffle", "joint_early_stopping"} <= set(record["quirks"])

    points = grid_points(cfg)
    inputs = task_inputs(cfg)
    models = [seeded_model(with_point(cfg, point), torch.device("cpu")) for point in points]
    lrs = [point.get("adapter.lr", LR) for point in points]  # VeRA: the lr grid; LoRA: the rank grid at lr 1e-4
    train, val = inputs.split("train800"), inputs.split("val200")
    official = official_grid_search(models, lrs, train, val, inputs.runtime.normalize, EPOCHS, PATIENCE, min_rel)

    assert [entry["point"] for entry in record["grid"]] == points
    for entry, curve in zip(record["grid"], official.curves, strict=True):
        # measured: <= 1.3e-7 relative (one float32 rounding of the val-loss mean); the training itself agrees
        torch.testing.assert_close(torch.tensor(entry["val_curve"]), torch.tensor(curve), rtol=1e-6, atol=1e-7)
    assert [entry["epochs_run"] for entry in record["grid"]] == [official.epochs] * len(points)
    assert record["epochs_run"] == official.epochs
    assert [entry["best_epoch"] for entry in record["grid"]] == official.best_epochs
    index, epoch = official.kept
    assert [bool(entry.get("selected")) for entry in record["grid"]] == [i == index for i in range(len(points))]
    assert record["grid_point"] == points[index] and record["best_epoch"] == epoch
    # what the short schedule exercises (see CASES)
    assert min(official.best_epochs) < official.epochs  # a point trained past its kept epoch
    assert (official.epochs < EPOCHS) == stops_early  # all stale: the joint stop
