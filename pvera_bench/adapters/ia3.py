"""IA3 (Liu et al., NeurIPS 2022): learned vectors rescale keys, values and the MLP's hidden activation.

``k ← l_k ⊙ k``, ``v ← l_v ⊙ v`` (the k and v slices of the fused qkv output, bias included)
and ``h ← l_ff ⊙ act(fc1 x)`` (the input of ``mlp.fc2``). All vectors start at one, so the
model is unchanged at initialisation, and all fold into the weights.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from pvera_bench.adapters.layers import AdaptedLayer, TargetedConfig, find_targets, spread_slices
from pvera_bench.adapters.registry import register_adapter


@dataclass
class Ia3Config(TargetedConfig):
    """Args:
    feedforward: targets whose *input* is rescaled (the MLP activation); the others rescale their output.
    """

    targets: list[str] = field(default_factory=lambda: ["attn.qkv", "mlp.fc2"])
    qkv_slices: list[str] | None = field(default_factory=lambda: ["k", "v"])
    feedforward: list[str] = field(default_factory=lambda: ["mlp.fc2"])

    def __post_init__(self) -> None:
        super().__post_init__()
        stray = sorted(set(self.feedforward) - set(self.targets))
        if stray:
            raise ValueError(f"adapter.feedforward {stray} must also be in adapter.targets {self.targets}")


class Ia3Linear(AdaptedLayer):
    """A frozen Linear whose input (feed-forward) or output slices are rescaled by ``ia3_l``."""

    def __init__(self, base_layer: nn.Linear, slices: tuple[tuple[int, int], ...], feedforward: bool) -> None:
        super().__init__(base_layer)
        self.feedforward = feedforward
        self.slices = tuple(sorted(slices))  # ia3_l follows the slices in output order
        width = base_layer.in_features if feedforward else sum(stop - start for start, stop in slices)
        self.ia3_l = nn.Parameter(torch.ones(width))

    def full_scale(self) -> torch.Tensor:
        """The scale of every output row: ``ia3_l`` on the adapted slices, 1 elsewhere."""
        per_slice = self.ia3_l.view(len(self.slices), -1)
        return spread_slices(per_slice, self.slices, self.base_layer.out_features, fill=1.0)

    def adapt_input(self, x: torch.Tensor) -> torch.Tensor:
        return self.ia3_l * x if self.feedforward else x  # W (l ⊙ x) + b

    def adapt_output(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        if self.feedforward:
            return out
        return self.full_scale().to(out.dtype) * out  # l ⊙ (W x + b), in the base layer's dtype

    def merged_layer(self) -> nn.Linear:
        layer = self.base_layer
        with torch.no_grad():
            if self.feedforward:
                layer.weight *= self.ia3_l.to(layer.weight.dtype)
            else:
                scale = self.full_scale().to(layer.weight.dtype)
                layer.weight *= scale.unsqueeze(1)
                if layer.bias is not None:
                    layer.bias *= scale
        return layer


def inject(model: nn.Module, config: Ia3Config) -> None:
    for t in find_targets(model, config):
        setattr(t.parent, t.attr, Ia3Linear(t.layer, t.slices, feedforward=t.path in config.feedforward))


register_adapter("ia3", Ia3Config, inject, mergeable=True, prefix="ia3_")
