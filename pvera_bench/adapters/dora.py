"""DoRA (Liu et al., ICML 2024): weight-decomposed LoRA.

``W' = m ⊙ (W + ΔW) / ||W + ΔW||`` with ΔW the LoRA update, the norm taken per output
row and treated as a constant in the backward pass (paper §4.3), and the magnitude ``m``
trainable and initialised to ``||W||``, so the layer is unchanged at initialisation.
ΔW's initialisation and ``alpha`` follow the LoRA convention (:mod:`pvera_bench.adapters.lora`).
The official PVeRA code's DoRA (leofillioux/pvera ``models/adapters/dora.py``, frozen by ``Model.freeze`` in
``models/models.py``) keeps ``m`` frozen (``frozen_magnitude``) and does not scale ΔW (``unscaled``): both off
unless their quirk is on.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from pvera_bench.adapters.layers import take_slices
from pvera_bench.adapters.lora import LoraConfig, LoraLinear, inject_low_rank
from pvera_bench.adapters.registry import register_adapter


@dataclass
class DoraConfig(LoraConfig):
    """Args:
    frozen_magnitude: ``m`` stays at ``||W||`` (the official code's bug E2a).
    unscaled: ΔW is ``B A``, without ``alpha / r`` (the official code's bug E2b).
    """

    frozen_magnitude: bool = False
    unscaled: bool = False


class DoraLinear(LoraLinear):
    """LoRA per output slice plus a magnitude per output row of the slice."""

    def __init__(self, base_layer: nn.Linear, slices: tuple[tuple[int, int], ...], config: DoraConfig) -> None:
        super().__init__(base_layer, slices, config)
        if config.unscaled:
            self.scaling = 1.0
        with torch.no_grad():
            norms = self.base_weights().norm(dim=-1).float()
        if config.frozen_magnitude:
            self.register_buffer("lora_magnitude", norms)
        else:
            self.lora_magnitude = nn.Parameter(norms)

    def base_weights(self) -> torch.Tensor:
        """The frozen weight rows of every slice, ``(n_slices, width, in)``."""
        return torch.stack([self.base_layer.weight[start:stop] for start, stop in self.slices])

    def magnitude_scale(self) -> torch.Tensor:
        """``m / ||W + ΔW||`` per slice and output row, ``(n_slices, width)``; the norm is detached (paper §4.3)."""
        norm = (self.base_weights() + super().delta_weight()).norm(dim=-1).detach()
        return self.lora_magnitude / norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        wx = F.linear(x, self.base_layer.weight)  # W x; the bias is added after the rescaling
        wx_slices = take_slices(wx, self.slices)
        adapted = self.magnitude_scale() * (wx_slices + self.update(x))  # m (W + ΔW) x / ||W + ΔW||, per slice
        out = self.add_to_slices(wx, adapted - wx_slices)
        return out if self.base_layer.bias is None else out + self.base_layer.bias.to(out.dtype)

    def delta_weight(self) -> torch.Tensor:
        weights = self.base_weights()
        return self.magnitude_scale().unsqueeze(-1) * (weights + super().delta_weight()) - weights


def inject(model: nn.Module, config: DoraConfig) -> None:
    inject_low_rank(model, config, DoraLinear)


register_adapter("dora", DoraConfig, inject, mergeable=True, prefix="lora_")
