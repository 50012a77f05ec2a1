"""What a run's stored predictions say beyond top-1: calibration, selective prediction, MC disagreement,
and temperature scaling fitted on val (never test).

Every function reads probabilities, so everything here can be recomputed later from a run's
predictions file (:mod:`pvera_bench.artefacts.predictions`) without the model. ECE is torchmetrics'
(:func:`pvera_bench.evaluation.expected_calibration_error`);
the others are short, each checked against an independent computation in the tests.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from pvera_bench.config import ConformalConfig
from pvera_bench.evaluation.conformal import conformal_metrics
from pvera_bench.evaluation.ood import ood_metrics
from pvera_bench.evaluation.predict import (
    ECE_BINS,
    EPS,
    Predictions,
    entropy,
    expected_calibration_error,
    mutual_information,
    nll,
)


def adaptive_calibration_error(probs: torch.Tensor, labels: torch.Tensor, n_bins: int = ECE_BINS) -> float:
    """ECE with equal-mass bins: images sorted by confidence, split into ``n_bins`` groups of (nearly) equal size."""
    confidence, predicted = probs.max(dim=-1)
    correct = (predicted == labels).float()
    bins = [b for b in confidence.argsort().tensor_split(n_bins) if len(b)]
    gaps = [len(b) * (correct[b].mean() - confidence[b].mean()).abs() for b in bins]
    return (torch.stack(gaps).sum() / len(labels)).item()


def brier_score(probs: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean over images of the squared distance between the probabilities and the one-hot label."""
    return (probs - F.one_hot(labels, probs.shape[1]).to(probs.dtype)).square().sum(dim=1).mean().item()


def risk_coverage_curve(probs: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Coverage k/N and selective risk (the error rate among the k accepted) for k = 1..N, the most confident
    images accepted first."""
    confidence, predicted = probs.max(dim=-1)
    errors = (predicted != labels).float()[confidence.argsort(descending=True, stable=True)].cumsum(0)
    accepted = torch.arange(1, len(labels) + 1, dtype=errors.dtype)
    return accepted / len(labels), errors / accepted


def selective_risks(probs: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Areas under the risk-coverage curve when the most confident images are accepted first.

    AURC averages the error rate among the k accepted images over k = 1..N; AUGRC (Traub et al., 2024)
    averages the errors among them counted over all N images (the generalized risk).
    """
    coverage, risk = risk_coverage_curve(probs, labels)
    return {"aurc": risk.mean().item(), "augrc": (risk * coverage).mean().item()}


def mc_disagreement(per_pass: torch.Tensor) -> dict[str, float]:
    """Predictive entropy H[E p], expected entropy E H[p] and their difference, the mutual information."""
    per_pass = per_pass.float()
    return {
        "predictive_entropy": entropy(per_pass.mean(dim=0)).mean().item(),
        "expected_entropy": entropy(per_pass).mean().item(),
        "mutual_information": mutual_information(per_pass).mean().item(),
    }


def fit_temperature(probs: torch.Tensor, labels: torch.Tensor) -> float:
    """The temperature T minimising the NLL of ``softmax(log p / T)`` on these predictions (LBFGS on log T)."""
    log_probs = probs.clamp_min(EPS).log()
    log_t = torch.zeros((), requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.1, max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(log_probs / log_t.exp(), labels)
        loss.backward()
        return loss

    optimizer.step(closure)
    return math.exp(log_t.item())


def scaled(probs: torch.Tensor, temperature: float) -> torch.Tensor:
    return (probs.clamp_min(EPS).log() / temperature).softmax(dim=-1)


def uncertainty_metrics(predictions: dict[str, Predictions], conformal: ConformalConfig | None = None) -> dict:
    """The test split's calibration, selective-prediction and (MC) disagreement metrics; when the run has val
    predictions, temperature scaling and conformal sets calibrated on val; when it has OOD sets, OOD detection."""
    conformal = conformal or ConformalConfig()
    test = predictions["test"]
    probs, labels = test.probs.float(), test.labels
    metrics = {
        "brier": brier_score(probs, labels),
        "ece": expected_calibration_error(probs, labels),
        "adaptive_ece": adaptive_calibration_error(probs, labels),
        **selective_risks(probs, labels),
    }
    if test.per_pass is not None:
        metrics.update(mc_disagreement(test.per_pass))
    if "val" in predictions:
        val = predictions["val"]
        temperature = fit_temperature(val.probs.float(), val.labels)
        calibrated = scaled(probs, temperature)
        metrics.update(
            {
                "temperature": temperature,
                "nll_before_scaling": nll(probs, labels),
                "nll_after_scaling": nll(calibrated, labels),
                "ece_after_scaling": expected_calibration_error(calibrated, labels),
                "conformal": conformal_metrics(val, test, conformal),
            }
        )
    if ood := ood_metrics(predictions):
        metrics["ood"] = ood
    return metrics
