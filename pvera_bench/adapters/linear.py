"""Linear probe: the backbone stays frozen and only the classification head trains."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from pvera_bench.adapters.registry import register_adapter
from pvera_bench.config import AdapterConfig


@dataclass
class LinearConfig(AdapterConfig):
    pass


def inject(model: nn.Module, config: LinearConfig) -> None:
    """Nothing to inject: the head is the only trainable module."""


register_adapter("linear", LinearConfig, inject, prefix=None)
