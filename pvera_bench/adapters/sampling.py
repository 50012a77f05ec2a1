"""Stochastic adapters at training and test time: the KL term of the last forward, the test-time latent, and MC
dropout on the adapters' own dropout layers."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from pvera_bench.adapters.layers import AdaptedLayer
from pvera_bench.config import SamplingMode

# The latent a stochastic layer uses at test time: every sampling mode but ``mc``, which makes several passes
# with ``random`` latents (:func:`pvera_bench.evaluation.predict.predict`).
SAMPLE_MODES = tuple(mode.value for mode in SamplingMode if mode != SamplingMode.mc)


class StochasticLayer(nn.Module):
    """A layer with a sampled latent: training always samples; at test time ``sample_mode`` chooses.

    Subclasses keep what their last training forward needs for :meth:`kl` (an eval forward keeps nothing).
    """

    sample_mode: str = "mean"
    sample_count: int = 1  # draws averaged inside the layer in ``mc_layer`` mode

    def kl(self) -> torch.Tensor | None:
        """The regularisation term of the last training forward (None when there was none)."""
        raise NotImplementedError


def adapter_loss(model: nn.Module) -> torch.Tensor | None:
    """The sum of every stochastic layer's KL term from the last training forward (None: no such term)."""
    terms = [kl for m in model.modules() if isinstance(m, StochasticLayer) and (kl := m.kl()) is not None]
    return torch.stack(terms).sum() if terms else None


@contextlib.contextmanager
def sample_latents(model: nn.Module, mode: str, count: int = 1) -> Iterator[nn.Module]:
    """Within the block, every stochastic layer of ``model`` uses test-time latent ``mode`` (averaging
    ``count`` draws in ``mc_layer`` mode); then it is restored."""
    if mode not in SAMPLE_MODES:
        raise ValueError(f"unknown sampling mode {mode!r}; expected one of {SAMPLE_MODES}")
    layers = [m for m in model.modules() if isinstance(m, StochasticLayer)]
    previous = [(layer.sample_mode, layer.sample_count) for layer in layers]
    for layer in layers:
        layer.sample_mode, layer.sample_count = mode, count
    try:
        yield model
    finally:
        for layer, (mode_before, count_before) in zip(layers, previous, strict=True):
            layer.sample_mode, layer.sample_count = mode_before, count_before


def adapter_dropouts(model: nn.Module) -> list[nn.Dropout]:
    """The dropout layers of the model's adapters (children of the layers that wrap a ``base_layer``)."""
    wrappers = [m for m in model.modules() if isinstance(m, AdaptedLayer)]
    return [child for m in wrappers for child in m.children() if isinstance(child, nn.Dropout)]


@contextlib.contextmanager
def mc_dropout(model: nn.Module, active: bool) -> Iterator[nn.Module]:
    """Within the block, when ``active``, the adapters' dropout layers drop in eval mode too (MC dropout)."""
    layers = adapter_dropouts(model) if active else []
    previous = [layer.training for layer in layers]
    for layer in layers:
        layer.train()
    try:
        yield model
    finally:
        for layer, training in zip(layers, previous, strict=True):
            layer.train(training)
