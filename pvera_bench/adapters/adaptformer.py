"""AdaptFormer (Chen et al., NeurIPS 2022): a bottleneck parallel to each block's MLP.

``mlp(h) + s · up(ReLU(down(h)))``. The conventions differ in what ``h`` is and how the
adapter starts:

- ``official`` (leofillioux/pvera, ``models/adapters/adaptformer.py``):
  the block's ``norm2`` moves inside the wrapped MLP, so the adapter reads the block's residual
  stream before the LayerNorm (as AdaptFormer's released code does); ``s`` is a learnable scalar
  starting at 1; ``down`` and ``up`` keep ``nn.Linear``'s initialisation, so the adapter is active
  from the first step.
- ``peft`` (the paper's equation; PEFT has no AdaptFormer): ``h = LN(x)``, the MLP's input; ``s`` is
  fixed (0.1 in the paper); ``up`` and the biases start at zero, so the model is unchanged at init.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from pvera_bench.adapters.layers import AdaptedLayer
from pvera_bench.adapters.registry import register_adapter
from pvera_bench.config import AdapterConfig, Convention


@dataclass
class AdaptFormerConfig(AdapterConfig):
    """Args:
    hidden_dim: width of the bottleneck (64 in the paper's VTAB experiments).
    scale: the factor s on the adapter's output (learnable under ``official``); None: 1 (``official``)
        or 0.1 (``peft``).
    """

    hidden_dim: int = 64
    scale: float | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.scale is None:
            self.scale = 0.1 if self.convention == Convention.peft else 1.0
        if self.hidden_dim < 1:
            raise ValueError(f"adapter.hidden_dim must be >= 1, got {self.hidden_dim}")


class ParallelAdapter(AdaptedLayer):
    """Wraps the MLP: ``base_layer(h) + s · up(ReLU(down(h)))``."""

    def __init__(self, base_layer: nn.Module, dim: int, config: AdaptFormerConfig) -> None:
        super().__init__(base_layer)
        self.adaptformer_down = nn.Linear(dim, config.hidden_dim)  # keeps nn.Linear's Kaiming-uniform weight
        self.adaptformer_up = nn.Linear(config.hidden_dim, dim)
        scale = torch.tensor([config.scale])
        if config.convention == Convention.official:
            self.adaptformer_scale = nn.Parameter(scale)
        else:
            self.register_buffer("adaptformer_scale", scale)
            nn.init.zeros_(self.adaptformer_down.bias)
            nn.init.zeros_(self.adaptformer_up.weight)
            nn.init.zeros_(self.adaptformer_up.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.base_layer(h) + self.adaptformer_scale * self.adaptformer_up(torch.relu(self.adaptformer_down(h)))


def inject(model: nn.Module, config: AdaptFormerConfig) -> None:
    for block in model.blocks:
        if config.convention == Convention.official:  # the adapter reads the stream before norm2
            block.mlp = ParallelAdapter(nn.Sequential(block.norm2, block.mlp), model.embed_dim, config)
            block.norm2 = nn.Identity()
        else:
            block.mlp = ParallelAdapter(block.mlp, model.embed_dim, config)


register_adapter("adaptformer", AdaptFormerConfig, inject, prefix="adaptformer_", identity_at_init=(Convention.peft,))
