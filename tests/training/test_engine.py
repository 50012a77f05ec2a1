"""Metrics, schedule and normalisation of the trainer, against hand-computed values; stopping on request."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from pvera_bench.config import ProtocolConfig, TrainerConfig
from pvera_bench.data import SplitData
from pvera_bench.evaluation.predict import classification_metrics
from pvera_bench.models.runtime import Normalizer, Runtime
from pvera_bench.training.inputs import HeadOnly
from pvera_bench.training.loop import EpochLoop, Objective, Preempted, fit, trainable_state
from pvera_bench.training.optim import build_scheduler


def test_metrics_match_hand_computation():
    probs = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.2, 0.8]])
    labels = torch.tensor([0, 1, 1, 1])
    metrics = classification_metrics(probs, labels, n_bins=10)
    assert metrics["top1"] == pytest.approx(0.75)
    assert metrics["nll"] == pytest.approx(-(math.log(0.9) + math.log(0.4) + math.log(0.7) + math.log(0.8)) / 4)
    # bins: 0.9 -> (0.8, 0.9] acc 1; 0.6 -> (0.5, 0.6] acc 0; 0.7 -> (0.6, 0.7] acc 1; 0.8 -> (0.7, 0.8] acc 1
    expected_ece = (abs(1 - 0.9) + abs(0 - 0.6) + abs(1 - 0.7) + abs(1 - 0.8)) / 4
    assert metrics["ece"] == pytest.approx(expected_ece)


def test_ece_of_a_calibrated_bin_is_zero():
    probs = torch.tensor([[0.5, 0.5]] * 4)
    labels = torch.tensor([0, 1, 0, 1])  # argmax 0 is right half the time at confidence 0.5
    assert classification_metrics(probs, labels)["ece"] == pytest.approx(0.0)


def scheduled_lrs(trainer: TrainerConfig, steps_per_epoch: int) -> list[float]:
    """The learning rate of every step of a whole run under ``build_scheduler``."""
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=trainer.lr)
    scheduler = build_scheduler(optimizer, trainer, steps_per_epoch)
    lrs = []
    for _ in range(trainer.epochs * steps_per_epoch):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


def test_warmup_then_cosine_schedule():
    lrs = scheduled_lrs(TrainerConfig(epochs=10, lr=1.0, scheduler="cosine", warmup_epochs=2), steps_per_epoch=5)
    assert lrs[:10] == pytest.approx([(i + 1) / 10 for i in range(10)])
    assert lrs[10] == pytest.approx(1.0)
    assert lrs[30] == pytest.approx(0.5 * (1 + math.cos(math.pi * 20 / 40)))
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:], strict=False))


def test_a_warmup_as_long_as_training_lasts_the_whole_run_and_says_so(caplog):
    trainer = TrainerConfig(epochs=1, lr=1.0, scheduler="cosine", warmup_epochs=2)  # the demo trainer at 1 epoch
    lrs = scheduled_lrs(trainer, steps_per_epoch=4)
    assert lrs == pytest.approx([1 / 8, 2 / 8, 3 / 8, 4 / 8])
    assert "trainer.warmup_epochs=2 >= trainer.epochs=1" in caplog.text and "reaches 0.5 of trainer.lr" in caplog.text


def test_constant_schedule_stays_at_lr():
    trainer = TrainerConfig(epochs=3, lr=0.1, scheduler="constant")
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    scheduler = build_scheduler(optimizer, trainer, steps_per_epoch=4)
    for _ in range(12):
        optimizer.step()
        scheduler.step()
        assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1)


def test_normalizer_matches_the_formula():
    images = torch.randint(0, 256, (2, 3, 4, 4), dtype=torch.uint8)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    expected = (images.float() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    torch.testing.assert_close(Normalizer(mean, std)(images), expected)


def test_fit_stops_at_the_batch_after_should_stop_turns_true():
    torch.manual_seed(0)
    model = HeadOnly(nn.Linear(4, 3))
    data = SplitData(torch.randn(32, 4), torch.randint(0, 3, (32,)))
    runtime = Runtime(torch.device("cpu"), nn.Identity(), progress=False)
    trainer = TrainerConfig(epochs=2, batch_size=8, progress=False)
    protocol = ProtocolConfig(name="train-only", val_split=None)
    asked = []

    def should_stop() -> bool:
        asked.append(len(asked))
        return len(asked) > 3  # three batches, then stop

    before = trainable_state(model)
    with pytest.raises(Preempted):
        fit(EpochLoop(model, data, None, runtime, trainer, protocol, Objective(), seed=0), should_stop=should_stop)
    assert len(asked) == 4  # asked before every batch; the fourth answer stopped the fit
    assert not torch.equal(model.head.weight, before["head.weight"])  # the first three batches trained
    finished = fit(EpochLoop(model, data, None, runtime, trainer, protocol, Objective(), seed=0))
    assert (finished.epochs_run, len(finished.history)) == (2, 2)  # nothing stops a fit by default
