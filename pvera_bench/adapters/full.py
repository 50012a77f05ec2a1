"""Full fine-tuning baseline: every backbone parameter trains."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from pvera_bench.adapters.base import AdapterConfig, register_adapter


@dataclass
class FullConfig(AdapterConfig):
    pass


def inject(model: nn.Module, config: FullConfig) -> None:
    """Nothing to inject: :func:`mark_trainable` unfreezes the whole backbone for prefix ``*``."""


register_adapter("full", FullConfig, inject, prefix="*")
