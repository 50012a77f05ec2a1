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

AdaptFormer's released code (ShoufaChen/AdaptFormer ``models/adapter.py`` ``Adapter``; ``models/custom_modules.py``
``Block``; ``main_image.py`` lines 185-191) is neither exactly: it reads the stream before ``norm2`` (as
``official``), fixes ``s = 0.1`` and starts ``up`` and both biases at zero (as ``peft``: its ``init_option="lora"``
keeps ``down``'s ``nn.Linear`` weight), drops its hidden units with p = 0.1 in training and adds the adapter
outside the MLP branch's drop path; neither convention (nor the PVeRA code) does these two.

The bottleneck is ``hidden_dim`` wide, or ``width // reduction``: the official code's ``reduction_ratios``
4/8/16 and ``int(fc1.in_features / reduction_ratio)``
(:class:`~pvera_bench.adapters.bottleneck.BottleneckWidthConfig`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from pvera_bench.adapters.bottleneck import BottleneckWidthConfig
from pvera_bench.adapters.layers import AdaptedLayer
from pvera_bench.adapters.registry import register_adapter
from pvera_bench.config import Convention

SCALES = {Convention.official: 1.0, Convention.peft: 0.1}  # s when ``scale`` is None


@dataclass
class AdaptFormerConfig(BottleneckWidthConfig):
    """Args:
    hidden_dim: width of the bottleneck (64 in the paper's VTAB experiments).
    scale: the factor s on the adapter's output (learnable under ``official``); None: 1 (``official``)
        or 0.1 (``peft``), resolved when the adapter is built, so that the convention chosen decides it.
    """

    scale: float | None = None


class ParallelAdapter(AdaptedLayer):
    """Wraps the MLP: ``base_layer(h) + s · up(ReLU(down(h)))``."""

    def __init__(self, base_layer: nn.Module, dim: int, hidden: int, config: AdaptFormerConfig) -> None:
        super().__init__(base_layer)
        self.adaptformer_down = nn.Linear(dim, hidden)  # keeps nn.Linear's Kaiming-uniform weight
        self.adaptformer_up = nn.Linear(hidden, dim)
        scale = torch.tensor([SCALES[config.convention] if config.scale is None else config.scale])
        if config.convention == Convention.official:
            self.adaptformer_scale = nn.Parameter(scale)
        else:
            self.register_buffer("adaptformer_scale", scale)
            nn.init.zeros_(self.adaptformer_down.bias)
            nn.init.zeros_(self.adaptformer_up.weight)
            nn.init.zeros_(self.adaptformer_up.bias)

    def adapt_output(self, h: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        return out + (self.adaptformer_scale * self.adaptformer_up(torch.relu(self.adaptformer_down(h)))).to(out.dtype)


def inject(model: nn.Module, config: AdaptFormerConfig) -> None:
    hidden = config.hidden_width(model.embed_dim)
    for block in model.blocks:
        if config.convention == Convention.official:  # the adapter reads the stream before norm2
            block.mlp = ParallelAdapter(nn.Sequential(block.norm2, block.mlp), model.embed_dim, hidden, config)
            block.norm2 = nn.Identity()
        else:
            block.mlp = ParallelAdapter(block.mlp, model.embed_dim, hidden, config)


register_adapter("adaptformer", AdaptFormerConfig, inject, prefix="adaptformer_", identity_at_init=(Convention.peft,))
