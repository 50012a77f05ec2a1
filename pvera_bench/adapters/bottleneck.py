"""Bottleneck adapters in the Houlsby et al. (ICML 2019) placement.

Two per block: after the attention (behind ``attn.proj``) and after the MLP (behind
``mlp.fc2``), before the residual addition: ``y ← y + up(act(down(y)))``. Conventions:
``peft`` (the paper's; PEFT has no such adapter): the projections start near zero (normal,
std 1e-2, truncated at 2 std), so each adapter starts near the identity; ``official``
(leofillioux/pvera, ``models/adapters/bottleneck.py``): ``nn.Linear``'s initialisation.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from pvera_bench.adapters.layers import AdaptedLayer
from pvera_bench.adapters.registry import register_adapter
from pvera_bench.config import AdapterConfig, Convention

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU}


@dataclass
class BottleneckConfig(AdapterConfig):
    """Args:
    hidden_dim: width of the bottleneck.
    activation: relu or gelu.
    targets: block submodules whose output is adapted.
    init_std: std of the truncated-normal initialisation of both projections; None: ``nn.Linear``'s
        initialisation (``official``) or 1e-2 (``peft``).
    """

    hidden_dim: int = 64
    activation: str = "relu"
    targets: list[str] = field(default_factory=lambda: ["attn", "mlp"])
    init_std: float | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.init_std is None and self.convention == Convention.peft:
            self.init_std = 1e-2
        if self.hidden_dim < 1:
            raise ValueError(f"adapter.hidden_dim must be >= 1, got {self.hidden_dim}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"adapter.activation must be one of {sorted(ACTIVATIONS)}, got {self.activation!r}")
        if self.init_std is not None and self.init_std < 0:
            raise ValueError(f"adapter.init_std must be >= 0, got {self.init_std}")


class SerialAdapter(AdaptedLayer):
    """Wraps a block submodule: ``y = base_layer(x)``, then ``y + up(act(down(y)))``."""

    def __init__(self, base_layer: nn.Module, dim: int, config: BottleneckConfig) -> None:
        super().__init__(base_layer)
        self.bottleneck_down = nn.Linear(dim, config.hidden_dim)
        self.bottleneck_up = nn.Linear(config.hidden_dim, dim)
        self.activation = ACTIVATIONS[config.activation]()
        std = config.init_std
        if std is not None:  # else nn.Linear's own initialisation (the official code's)
            for layer in (self.bottleneck_down, self.bottleneck_up):
                nn.init.trunc_normal_(layer.weight, std=std, a=-2 * std, b=2 * std)
                nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        y = self.base_layer(x, *args, **kwargs)
        return y + self.bottleneck_up(self.activation(self.bottleneck_down(y)))


def inject(model: nn.Module, config: BottleneckConfig) -> None:
    dim = model.embed_dim
    for index, block in enumerate(model.blocks):
        for name in config.targets:
            if not hasattr(block, name):
                raise ValueError(f"adapter target {name!r} does not exist in block {index}")
            setattr(block, name, SerialAdapter(getattr(block, name), dim, config))


register_adapter("bottleneck", BottleneckConfig, inject, prefix="bottleneck_", identity_at_init=())
