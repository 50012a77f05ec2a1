"""Out-of-distribution detection from stored predictions: how well a confidence score tells the run's own
test images (in-distribution, the positives) from other tasks' test images (``ood=near|far|...``).

Scores, higher meaning "in-distribution": the maximum softmax probability (Hendrycks & Gimpel, 2017), the
negative predictive entropy and, when MC passes were stored (``sampling=mc``), the negative mutual
information between the prediction and the latent/dropout draw. Metrics (torchmetrics): AUROC, AUPR with
the in-distribution images as positives (AUPR-In), and FPR@95: the fraction of OOD images accepted at the
threshold that accepts 95 % of the in-distribution ones.
"""

from __future__ import annotations

import torch

from pvera_bench.evaluation.predict import Predictions, entropy, mutual_information

PREFIX = "ood-"  # predictions of an OOD set are stored under "ood-<task folder>"
TPR = 0.95


def ood_key(task: str) -> str:
    return PREFIX + task


def is_ood_key(key: str) -> bool:
    return key.startswith(PREFIX)


def confidence_scores(predictions: Predictions) -> dict[str, torch.Tensor]:
    """Per image, each score (higher: more in-distribution); mutual information only with MC passes."""
    probs = predictions.probs.float()
    scores = {"msp": probs.max(dim=-1).values, "entropy": -entropy(probs)}
    if predictions.per_pass is not None:
        scores["mutual_information"] = -mutual_information(predictions.per_pass)
    return scores


def detection_metrics(in_scores: torch.Tensor, out_scores: torch.Tensor) -> dict[str, float]:
    """AUROC, AUPR-In and FPR@95 of a score that should be higher on the in-distribution images."""
    from torchmetrics.functional.classification import binary_auroc, binary_average_precision, binary_roc

    scores = torch.cat([in_scores, out_scores]).double()
    target = torch.cat([torch.ones(len(in_scores)), torch.zeros(len(out_scores))]).long()
    fpr, tpr, _ = binary_roc(scores, target)
    return {
        "auroc": binary_auroc(scores, target).item(),
        "aupr": binary_average_precision(scores, target).item(),
        "fpr95": fpr[tpr >= TPR][0].item(),
    }


def ood_metrics(predictions: dict[str, Predictions]) -> dict[str, dict]:
    """Per OOD set and averaged over them (``mean``): each score's detection metrics against the test split."""
    test = confidence_scores(predictions["test"])
    per_task = {}
    for key, ood in predictions.items():
        if is_ood_key(key):
            scores = confidence_scores(ood)
            per_task[key.removeprefix(PREFIX)] = {
                name: detection_metrics(test[name], scores[name]) for name in test if name in scores
            }
    if not per_task:
        return {}
    first = next(iter(per_task.values()))
    mean = {
        name: {metric: sum(task[name][metric] for task in per_task.values()) / len(per_task) for metric in values}
        for name, values in first.items()
    }
    return {"mean": mean, **per_task}
