"""DoRA (Liu et al., ICML 2024): weight-decomposed LoRA.

``W' = m ⊙ (W + ΔW) / ||W + ΔW||`` with ΔW the LoRA update, the norm taken per output
row and treated as a constant in the backward pass (paper §4.3), and the magnitude ``m``
trainable and initialised to ``||W||``, so the layer is unchanged at initialisation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from pvera_bench.adapters.base import register_adapter
from pvera_bench.adapters.lora import LoraConfig, LoraLinear, low_rank_targets


@dataclass
class DoraConfig(LoraConfig):
    pass


class DoraLinear(LoraLinear):
    """LoRA per output slice plus a trainable magnitude per output row of the slice."""

    def __init__(
        self, base_layer: nn.Linear, slices: tuple[tuple[int, int], ...], r: int, alpha: float, dropout: float = 0.0
    ) -> None:
        super().__init__(base_layer, slices, r, alpha, dropout)
        with torch.no_grad():
            norms = torch.stack([base_layer.weight[start:stop].norm(dim=1) for start, stop in slices])
        self.lora_magnitude = nn.Parameter(norms.float())

    def magnitude_scale(self) -> torch.Tensor:
        """``m / ||W + ΔW||`` per slice and output row, ``(n_slices, width)``; the norm is detached (paper §4.3)."""
        weights = self.base_layer.weight
        update = super().delta_weight()
        norms = torch.stack(
            [(weights[start:stop] + update[i]).norm(dim=1) for i, (start, stop) in enumerate(self.slices)]
        )
        return self.lora_magnitude / norms.detach()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.linear(x, self.base_layer.weight)  # without bias: the scale applies to W x + ΔW x only
        h = self.down(x)
        scale = self.magnitude_scale().to(out.dtype)
        for i, (start, stop) in enumerate(self.slices):
            lora = F.linear(h[..., i * self.r : (i + 1) * self.r], self.lora_B[i])
            out[..., start:stop] = (out[..., start:stop] + lora) * scale[i]
        if self.base_layer.bias is not None:
            out += self.base_layer.bias
        return out

    def delta_weight(self) -> torch.Tensor:
        weights = torch.stack([self.base_layer.weight[start:stop] for start, stop in self.slices])
        return self.magnitude_scale().unsqueeze(-1) * (weights + super().delta_weight()) - weights


def inject(model: nn.Module, config: DoraConfig) -> None:
    for t in low_rank_targets(model, config):
        setattr(t.parent, t.attr, DoraLinear(t.layer, t.slices, config.r, config.alpha, config.dropout))


register_adapter("dora", DoraConfig, inject, prefix="lora_")
