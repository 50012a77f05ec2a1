"""AdaptFormer (Chen et al., NeurIPS 2022): a bottleneck parallel to each block's MLP.

``mlp(h) + s · up(ReLU(down(h)))`` where ``h = LN(x)`` is the MLP's normalised input (the
paper's equation), ``s`` is a fixed scale (0.1 in the paper) and ``up`` starts at zero, so
the model is unchanged at initialisation. ``down`` is Kaiming-uniform as ``nn.Linear``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from pvera_bench.adapters.base import AdapterConfig, register_adapter


@dataclass
class AdaptFormerConfig(AdapterConfig):
    """Args:
    hidden_dim: width of the bottleneck (64 in the paper's VTAB experiments).
    scale: the fixed factor s on the adapter's output.
    """

    hidden_dim: int = 64
    scale: float = 0.1

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.hidden_dim < 1:
            raise ValueError(f"adapter.hidden_dim must be >= 1, got {self.hidden_dim}")


class ParallelAdapter(nn.Module):
    """Wraps ``mlp``: ``base_layer(h) + scale · up(ReLU(down(h)))``."""

    def __init__(self, base_layer: nn.Module, dim: int, config: AdaptFormerConfig) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.scale = config.scale
        self.adaptformer_down = nn.Linear(dim, config.hidden_dim)  # keeps nn.Linear's Kaiming-uniform weight
        self.adaptformer_up = nn.Linear(config.hidden_dim, dim)
        nn.init.zeros_(self.adaptformer_down.bias)
        nn.init.zeros_(self.adaptformer_up.weight)
        nn.init.zeros_(self.adaptformer_up.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.base_layer(h) + self.scale * self.adaptformer_up(torch.relu(self.adaptformer_down(h)))


def inject(model: nn.Module, config: AdaptFormerConfig) -> None:
    for block in model.blocks:
        block.mlp = ParallelAdapter(block.mlp, model.embed_dim, config)


register_adapter("adaptformer", AdaptFormerConfig, inject, prefix="adaptformer_")
