"""The one evaluation path: class probabilities (MC-averaged for stochastic adapters), top-1, NLL, ECE and
the training criterion's loss."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from pvera_bench.adapters import mc_dropout, sample_latents
from pvera_bench.config import SamplingConfig
from pvera_bench.data import SplitData
from pvera_bench.models.runtime import Runtime, autocast, batches

ECE_BINS = 15
EPS = 1e-12  # probabilities are clamped to it before a log


def entropy(probs: torch.Tensor) -> torch.Tensor:
    """Shannon entropy (nats) of each row of probabilities."""
    return -torch.special.xlogy(probs, probs).sum(dim=-1)


def mutual_information(per_pass: torch.Tensor) -> torch.Tensor:
    """Per image, over MC passes ``(n, N, C)``: entropy of the mean prediction minus the mean entropy, i.e. the
    information between the prediction and the random draw (0 when every pass agrees)."""
    per_pass = per_pass.float()
    return (entropy(per_pass.mean(dim=0)) - entropy(per_pass).mean(dim=0)).clamp_min(0)


@dataclass
class Predictions:
    """What a model predicted on a split: enough to recompute any metric without the model.

    Args:
        labels: the true class of every image, ``(N,)``.
        probs: class probabilities (float32), ``(N, C)``; in ``mc`` mode the mean over passes.
        per_pass: in ``mc`` mode, every pass's probabilities, ``(n, N, C)``; None otherwise.
    """

    labels: torch.Tensor
    probs: torch.Tensor
    per_pass: torch.Tensor | None = None

    def predictive_std(self) -> torch.Tensor | None:
        """Per image, the std over MC passes of the probability of the predicted class (None: one pass)."""
        if self.per_pass is None:
            return None
        predicted = self.probs.argmax(dim=-1)
        index = predicted.expand(len(self.per_pass), -1).unsqueeze(-1)
        return self.per_pass.float().gather(2, index).squeeze(-1).std(dim=0)


@torch.no_grad()
def predict(
    model: nn.Module, data: SplitData, runtime: Runtime, batch_size: int, sampling: SamplingConfig
) -> Predictions:
    """Class probabilities for every image (float32, CPU), and every pass's in ``mc`` mode.

    In ``mc`` mode each batch goes through the model ``sampling.n`` times, with a fresh latent draw and the
    adapters' dropout on (MC dropout) in every pass, and the probabilities are averaged. In ``mc_layer`` mode
    one pass is made and every stochastic layer averages ``sampling.n`` latent draws.
    """
    model.eval()
    passes = sampling.n if sampling.mode == "mc" else 1
    probs, per_pass = [], []
    bar = tqdm(total=len(data), desc="eval", disable=not runtime.progress or len(data) < 5000, leave=False)
    latent = "random" if sampling.mode == "mc" else sampling.mode
    with sample_latents(model, latent, sampling.n), mc_dropout(model, active=sampling.mode == "mc"):
        for images, _ in batches(data, batch_size, runtime.device):
            inputs = runtime.normalize(images)
            samples = []
            for _ in range(passes):
                with autocast(runtime.device, runtime.bf16):
                    samples.append(model(inputs).float().softmax(dim=-1))
            stacked = torch.stack(samples)
            probs.append(stacked.mean(dim=0).cpu())
            if passes > 1:
                per_pass.append(stacked.cpu())
            bar.update(len(images))
    bar.close()
    return Predictions(data.labels.cpu(), torch.cat(probs), torch.cat(per_pass, dim=1) if per_pass else None)


def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor, n_bins: int = ECE_BINS) -> float:
    """ECE with equal-width confidence bins (torchmetrics, L1)."""
    from torchmetrics.functional.classification import multiclass_calibration_error  # 2 s to import: when needed

    return multiclass_calibration_error(probs, labels, num_classes=probs.shape[1], n_bins=n_bins, norm="l1").item()


def nll(probs: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean negative log-likelihood of the true class."""
    return F.nll_loss(probs.clamp_min(EPS).log(), labels.cpu()).item()


def classification_metrics(probs: torch.Tensor, labels: torch.Tensor, n_bins: int = ECE_BINS) -> dict[str, float]:
    """Top-1 accuracy, negative log-likelihood and expected calibration error (equal-width bins)."""
    labels = labels.cpu()
    correct = (probs.argmax(dim=-1) == labels).float()
    return {
        "top1": correct.mean().item(),
        "nll": nll(probs, labels),
        "ece": expected_calibration_error(probs, labels, n_bins),
    }


def criterion_loss(probs: torch.Tensor, labels: torch.Tensor, double_softmax: bool) -> float:
    """The training criterion on predicted probabilities: the NLL, or with the double-softmax quirk the
    cross-entropy of the probabilities taken as logits (the official code's val loss)."""
    return F.cross_entropy(probs, labels.cpu()).item() if double_softmax else nll(probs, labels)


def prediction_metrics(predictions: Predictions, double_softmax: bool = False) -> dict[str, float]:
    """Top-1, NLL, ECE and the training criterion's ``loss``, plus ``predictive_std`` in MC mode."""
    metrics = classification_metrics(predictions.probs, predictions.labels)
    metrics["loss"] = criterion_loss(predictions.probs, predictions.labels, double_softmax)
    stds = predictions.predictive_std()
    if stds is not None:
        metrics["predictive_std"] = stds.mean().item()
    return metrics


def evaluate(
    model: nn.Module,
    data: SplitData,
    runtime: Runtime,
    batch_size: int,
    sampling: SamplingConfig,
    double_softmax: bool = False,
) -> dict[str, float]:
    """The metrics of :func:`prediction_metrics` on a split."""
    return prediction_metrics(predict(model, data, runtime, batch_size, sampling), double_softmax)
