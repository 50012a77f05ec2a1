"""The one evaluation path: class probabilities (MC-averaged for stochastic adapters), top-1, NLL, ECE and
the training criterion's loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from pvera_bench.adapters import sample_latents
from pvera_bench.config import SamplingConfig
from pvera_bench.data import SplitData
from pvera_bench.runtime import Runtime, autocast, batches

ECE_BINS = 15


@torch.no_grad()
def predict(
    model: nn.Module, data: SplitData, runtime: Runtime, batch_size: int, sampling: SamplingConfig
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Class probabilities for every image (float32, CPU) and, for MC sampling, their per-image std.

    In ``mc`` mode each batch goes through the model ``sampling.n`` times with a fresh latent
    draw per pass; the probabilities are averaged and the std (over passes) of the probability
    of the predicted class is returned per image. In ``mc_layer`` mode one pass is made and every
    stochastic layer averages ``sampling.n`` latent draws.
    """
    model.eval()
    passes = sampling.n if sampling.mode == "mc" else 1
    probs, stds = [], []
    bar = tqdm(total=len(data), desc="eval", disable=not runtime.progress or len(data) < 5000, leave=False)
    latent = "random" if sampling.mode == "mc" else sampling.mode
    with sample_latents(model, latent, sampling.n):
        for images, _ in batches(data, batch_size, runtime.device):
            inputs = runtime.normalize(images)
            samples = []
            for _ in range(passes):
                with autocast(runtime.device, runtime.bf16):
                    samples.append(model(inputs).float().softmax(dim=-1))
            stacked = torch.stack(samples)
            mean = stacked.mean(dim=0)
            probs.append(mean.cpu())
            if passes > 1:
                predicted = mean.argmax(dim=-1)
                per_pass = stacked.gather(2, predicted.expand(passes, -1).unsqueeze(-1)).squeeze(-1)
                stds.append(per_pass.std(dim=0).cpu())
            bar.update(len(images))
    bar.close()
    return torch.cat(probs), (torch.cat(stds) if stds else None)


def classification_metrics(probs: torch.Tensor, labels: torch.Tensor, n_bins: int = ECE_BINS) -> dict[str, float]:
    """Top-1 accuracy, negative log-likelihood and expected calibration error (equal-width bins)."""
    labels = labels.cpu()
    confidence, predicted = probs.max(dim=-1)
    correct = (predicted == labels).float()
    nll = -torch.log(probs.gather(1, labels.unsqueeze(1)).squeeze(1).clamp_min(1e-12)).mean()
    bins = torch.clamp((confidence * n_bins).ceil().long() - 1, 0, n_bins - 1)
    ece = torch.zeros(())
    for b in range(n_bins):
        in_bin = bins == b
        if in_bin.any():
            ece += in_bin.float().mean() * (correct[in_bin].mean() - confidence[in_bin].mean()).abs()
    return {"top1": correct.mean().item(), "nll": nll.item(), "ece": ece.item()}


def criterion_loss(probs: torch.Tensor, labels: torch.Tensor, double_softmax: bool) -> float:
    """The training criterion on predicted probabilities: the NLL, or with the double-softmax quirk the
    cross-entropy of the probabilities taken as logits (the official code's val loss)."""
    scores = probs if double_softmax else probs.clamp_min(1e-12).log()
    return F.cross_entropy(scores, labels.cpu()).item()


def evaluate(
    model: nn.Module,
    data: SplitData,
    runtime: Runtime,
    batch_size: int,
    sampling: SamplingConfig,
    double_softmax: bool = False,
) -> dict[str, float]:
    """Top-1, NLL, ECE and the training criterion's ``loss`` on a split, plus ``predictive_std`` in MC mode."""
    probs, stds = predict(model, data, runtime, batch_size, sampling)
    metrics = classification_metrics(probs, data.labels)
    metrics["loss"] = criterion_loss(probs, data.labels, double_softmax)
    if stds is not None:
        metrics["predictive_std"] = stds.mean().item()
    return metrics
