"""Split conformal prediction: sets of classes calibrated on val200 to hold the true class of 1 - alpha of test images.

Three conformity scores (higher = less conforming) of a candidate class y with probability p_y:

- LAC, a.k.a. THR (Sadinle et al., 2019): ``s(y) = 1 - p_y``;
- APS (Romano et al., 2020), randomized: ``s(y) = (sum of p_k over classes k ranked strictly above y) + u p_y``,
  ``u ~ U(0, 1)`` drawn once per image;
- RAPS (Angelopoulos et al., ICLR 2021): ``s(y) = APS(y) + lambda max(0, rank_y - k_reg)``, rank_y counted from 1.

The threshold q is the ceil((n + 1)(1 - alpha))-th smallest of the n calibration images' scores of their true
class (+inf, every class, when that index exceeds n), and a test image's set holds every class with ``s <= q``.
When calibration and test images are exchangeable, the test score of the true class is as likely to fall at any
rank among the n + 1 scores, hence 1 - alpha <= P(true class in set) <= 1 - alpha + 1/(n + 1) (the upper bound
for continuous scores, which the randomized APS/RAPS ensure). Sets are reported with the size-stratified coverage
of Angelopoulos et al. (2021).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from pvera_bench.config import ConformalConfig
from pvera_bench.evaluation.predict import Predictions

SIZE_BUCKETS = {"0-1": (0, 1), "2-3": (2, 3), "4-10": (4, 10), "11-100": (11, 100), "101+": (101, math.inf)}
Scores = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (probs (N, C), u (N,)) -> scores (N, C)


def lac_scores(probs: torch.Tensor) -> torch.Tensor:
    """LAC score of every class, ``(N, C)``: one minus its probability."""
    return 1 - probs.double()


def ranked(probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image and class, the probability mass of the classes ranked strictly above it and its 1-based rank."""
    probs = probs.double()
    order = probs.argsort(dim=1, descending=True, stable=True)
    ordered = probs.gather(1, order)
    above = torch.empty_like(probs).scatter_(1, order, ordered.cumsum(dim=1) - ordered)
    ranks = torch.arange(1, probs.shape[1] + 1).expand_as(order)
    return above, torch.empty_like(order).scatter_(1, order, ranks)


def aps_scores(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Randomized APS score of every class, ``(N, C)``, with one uniform ``u`` per image."""
    above, _ = ranked(probs)
    return above + u.double().unsqueeze(1) * probs.double()


def raps_scores(probs: torch.Tensor, u: torch.Tensor, raps_lambda: float, raps_k_reg: int) -> torch.Tensor:
    """RAPS score of every class, ``(N, C)``: APS plus ``raps_lambda`` per rank beyond ``raps_k_reg``."""
    _, ranks = ranked(probs)
    return aps_scores(probs, u) + raps_lambda * (ranks - raps_k_reg).clamp_min(0)


def conformal_quantile(scores: torch.Tensor, miscoverage: float) -> float:
    """The ceil((n + 1)(1 - alpha))-th smallest of n calibration scores; +inf when that index exceeds n."""
    n = len(scores)
    index = math.ceil((n + 1) * (1 - miscoverage) - 1e-9)  # tolerance: 10 * (1 - 0.7) is 3.0000000000000004
    return math.inf if index > n else scores.sort().values[index - 1].item()


def at_labels(values: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per image, the entry of ``(N, C)`` values at its true class (its score, or whether its set holds it)."""
    return values.gather(1, labels.unsqueeze(1)).squeeze(1)


def prediction_sets(scores: torch.Tensor, threshold: float) -> torch.Tensor:
    """Boolean ``(N, C)`` mask: class k is in an image's set when its score is at most the threshold."""
    return scores <= threshold


def coverage(sets: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of images whose set holds the true class."""
    return at_labels(sets, labels).float().mean().item()


def set_size(sets: torch.Tensor) -> float:
    """Mean number of classes in a set."""
    return sets.sum(dim=1).float().mean().item()


def worst_class_coverage(sets: torch.Tensor, labels: torch.Tensor) -> float:
    """The lowest coverage among the classes present in ``labels``."""
    hits = at_labels(sets, labels).float()
    return min(hits[labels == c].mean().item() for c in labels.unique())


def by_set_size(sets: torch.Tensor, labels: torch.Tensor) -> dict[str, dict]:
    """Images and coverage per set-size bucket (every bucket, coverage None when empty)."""
    sizes, hits = sets.sum(dim=1), at_labels(sets, labels).float()
    buckets = {}
    for name, (low, high) in SIZE_BUCKETS.items():
        inside = (sizes >= low) & (sizes <= high)
        count = int(inside.sum())
        buckets[name] = {"count": count, "coverage": hits[inside].mean().item() if count else None}
    return buckets


def set_metrics(sets: torch.Tensor, labels: torch.Tensor) -> dict:
    """Coverage, mean set size, worst-class coverage and size-stratified coverage of a set mask."""
    return {
        "coverage": coverage(sets, labels),
        "set_size": set_size(sets),
        "worst_class_coverage": worst_class_coverage(sets, labels),
        "by_set_size": by_set_size(sets, labels),
    }


def conformal_metrics(val: Predictions, test: Predictions, config: ConformalConfig, seed: int = 0) -> dict:
    """LAC, APS and RAPS sets calibrated on ``val`` and measured on ``test``; APS/RAPS's u drawn from ``seed``.

    A method's ``threshold`` is None when val is too small for the miscoverage (every class in every set).
    """
    miscoverage = config.miscoverage
    generator = torch.Generator().manual_seed(seed)
    u_val = torch.rand(len(val.labels), generator=generator, dtype=torch.float64)
    u_test = torch.rand(len(test.labels), generator=generator, dtype=torch.float64)
    methods: dict[str, Scores] = {
        "lac": lambda probs, u: lac_scores(probs),
        "aps": aps_scores,
        "raps": lambda probs, u: raps_scores(probs, u, config.raps_lambda, config.raps_k_reg),
    }
    metrics: dict = {"miscoverage": float(miscoverage), "calibration_size": len(val.labels)}
    for name, scores in methods.items():
        threshold = conformal_quantile(at_labels(scores(val.probs, u_val), val.labels), miscoverage)
        sets = prediction_sets(scores(test.probs, u_test), threshold)
        metrics[name] = {"threshold": threshold if math.isfinite(threshold) else None, **set_metrics(sets, test.labels)}
    return metrics
