"""Full fine-tuning baseline: every backbone parameter trains."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from pvera_bench.adapters.registry import register_adapter
from pvera_bench.config import AdapterConfig


@dataclass
class FullConfig(AdapterConfig):
    pass


def inject(model: nn.Module, config: FullConfig) -> None:
    """Nothing to inject: :func:`mark_trainable` unfreezes the whole backbone for prefix ``*``."""


register_adapter("full", FullConfig, inject, prefix="*")
