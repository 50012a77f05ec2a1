"""LoRA (Hu et al., ICLR 2022): ``W x + (alpha / r) * B A x`` with A random and B zero at init."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from pvera_bench.adapters.base import SlicedUpdate, Target, TargetedConfig, find_targets, register_adapter


@dataclass
class LoraConfig(TargetedConfig):
    """Args:
    r: rank of the update.
    alpha: the update is scaled by ``alpha / r``.
    dropout: dropout on the adapter's input.
    """

    r: int = 8
    alpha: float = 8.0
    dropout: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.r < 1:
            raise ValueError(f"adapter.r must be >= 1, got {self.r}")
        if self.alpha <= 0:
            raise ValueError(f"adapter.alpha must be positive, got {self.alpha}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"adapter.dropout must be in [0, 1), got {self.dropout}")


class LoraLinear(SlicedUpdate):
    """A frozen Linear plus one rank-r update per output slice."""

    def __init__(
        self, base_layer: nn.Linear, slices: tuple[tuple[int, int], ...], r: int, alpha: float, dropout: float = 0.0
    ) -> None:
        super().__init__(base_layer, slices)
        n = len(slices)
        self.r = r
        self.scaling = alpha / r
        self.lora_A = nn.Parameter(torch.empty(n, r, self.in_features))
        self.lora_B = nn.Parameter(torch.zeros(n, self.slice_width, r))
        for a in self.lora_A:  # as nn.Linear and the LoRA reference code: kaiming-uniform, a = sqrt(5)
            nn.init.kaiming_uniform_(a, a=math.sqrt(5))
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def down(self, x: torch.Tensor) -> torch.Tensor:
        """``(alpha / r) · A x`` for all slices at once, ``(..., n_slices · r)``: one matmul, scaled at rank r."""
        return F.linear(self.lora_dropout(x), self.lora_A.flatten(0, 1)) * self.scaling

    def slice_updates(self, x: torch.Tensor) -> tuple[torch.Tensor]:
        h = self.down(x)  # (..., n · r)
        lead = h.shape[:-1]
        per_slice = h.reshape(-1, len(self.slices), self.r).transpose(0, 1)  # (n, tokens, r)
        update = torch.bmm(per_slice, self.lora_B.transpose(1, 2).to(per_slice.dtype))  # (n, tokens, width)
        return (update.transpose(0, 1).unflatten(0, lead),)

    def delta_weight(self) -> torch.Tensor:
        return torch.matmul(self.lora_B, self.lora_A) * self.scaling


def low_rank_targets(model: nn.Module, config: LoraConfig) -> list[Target]:
    """The targets, after checking that the rank fits each of them (a LoRA rank cannot exceed min(in, out))."""
    targets = find_targets(model, config)
    for t in targets:
        width = min(t.layer.in_features, *(stop - start for start, stop in t.slices))
        if config.r > width:
            raise ValueError(f"adapter.r={config.r} exceeds the width {width} of {t.path}; use adapter.r <= {width}")
    return targets


def inject(model: nn.Module, config: LoraConfig) -> None:
    for t in low_rank_targets(model, config):
        setattr(t.parent, t.attr, LoraLinear(t.layer, t.slices, config.r, config.alpha, config.dropout))


register_adapter("lora", LoraConfig, inject, mergeable=True, prefix="lora_")
