"""Uncertainty metrics on fixed arrays, each against an independent computation (scikit-learn, or by hand)."""

from __future__ import annotations

import math

import pytest
import torch
from sklearn.metrics import brier_score_loss

from pvera_bench.evaluation.predict import Predictions
from pvera_bench.evaluation.uncertainty import (
    adaptive_calibration_error,
    brier_score,
    fit_temperature,
    mc_disagreement,
    risk_coverage_curve,
    selective_risks,
    uncertainty_metrics,
)

PROBS = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.2, 0.8]])
LABELS = torch.tensor([0, 1, 1, 1])  # correct, wrong, correct, correct


def random_predictions(n: int = 500, classes: int = 7, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    probs = torch.randn(n, classes, generator=generator).mul(2).softmax(dim=-1)
    return probs, torch.randint(0, classes, (n,), generator=generator)


def test_brier_score_equals_scikit_learns_multiclass_brier():
    probs, labels = random_predictions()
    expected = brier_score_loss(labels.numpy(), probs.numpy(), labels=list(range(7)), scale_by_half=False)
    assert brier_score(probs, labels) == pytest.approx(expected, rel=1e-5)


def test_selective_risks_by_hand():
    # confidences 0.9 (right), 0.8 (right), 0.7 (right), 0.6 (wrong): errors among the k most confident: 0, 0, 0, 1
    risks = selective_risks(PROBS, LABELS)
    assert risks["aurc"] == pytest.approx((0 + 0 + 0 + 1 / 4) / 4)
    assert risks["augrc"] == pytest.approx((0 + 0 + 0 + 1 / 4) / 4)
    coverage, risk = risk_coverage_curve(PROBS, LABELS)
    torch.testing.assert_close(coverage, torch.tensor([1 / 4, 2 / 4, 3 / 4, 1.0]))
    torch.testing.assert_close(risk, torch.tensor([0, 0, 0, 1 / 4]))
    flipped = selective_risks(PROBS, torch.tensor([1, 0, 1, 1]))  # the most confident is now the wrong one
    assert flipped["aurc"] == pytest.approx((1 + 1 / 2 + 1 / 3 + 1 / 4) / 4)
    assert flipped["augrc"] == pytest.approx((1 / 4) * 4 / 4)


def test_adaptive_calibration_error_by_hand():
    # two equal-mass bins by confidence: {0.6 wrong, 0.7 right} and {0.8 right, 0.9 right}
    expected = (2 * abs(0.5 - 0.65) + 2 * abs(1.0 - 0.85)) / 4
    assert adaptive_calibration_error(PROBS, LABELS, n_bins=2) == pytest.approx(expected)


def test_mutual_information_is_zero_for_agreeing_passes_and_ln2_for_two_opposite_certain_ones():
    same = PROBS.expand(5, -1, -1)
    assert mc_disagreement(same)["mutual_information"] == pytest.approx(0.0, abs=1e-7)
    opposite = torch.stack([torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])])
    measured = mc_disagreement(opposite)
    assert measured["mutual_information"] == pytest.approx(math.log(2), rel=1e-5)
    assert measured["predictive_entropy"] == pytest.approx(math.log(2), rel=1e-5)
    assert measured["expected_entropy"] == pytest.approx(0.0, abs=1e-6)


def test_temperature_scaling_recovers_the_temperature_of_overconfident_predictions():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(20000, 5, generator=generator)
    labels = torch.multinomial(logits.softmax(dim=-1), 1, generator=generator).squeeze(1)  # calibrated at T = 1
    overconfident = (2.0 * logits).softmax(dim=-1)
    assert fit_temperature(overconfident, labels) == pytest.approx(2.0, rel=0.05)


def test_uncertainty_metrics_fit_the_temperature_on_val_and_never_on_test():
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(4000, 5, generator=generator)
    labels = torch.multinomial(logits.softmax(dim=-1), 1, generator=generator).squeeze(1)
    probs = (3.0 * logits).softmax(dim=-1)
    val = Predictions(labels[:2000], probs[:2000])
    test = Predictions(labels[2000:], probs[2000:])
    metrics = uncertainty_metrics({"val": val, "test": test})
    assert metrics["temperature"] == pytest.approx(3.0, rel=0.1)
    assert metrics["nll_after_scaling"] < metrics["nll_before_scaling"]
    assert metrics["ece_after_scaling"] < metrics["ece"]
    assert "temperature" not in uncertainty_metrics({"test": test})  # nothing to fit it on
    assert "mutual_information" not in metrics  # one pass: no disagreement to measure
