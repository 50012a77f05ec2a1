"""DoRA (Liu et al., ICML 2024): weight-decomposed LoRA.

``W' = m ⊙ (W + ΔW) / ||W + ΔW||`` with ΔW the LoRA update and the norm taken per output row; the magnitude
``m`` is trainable and initialised to ``||W||``, so the layer is unchanged at initialisation. ΔW's initialisation
and ``alpha`` follow the LoRA convention (:mod:`pvera_bench.adapters.lora`). The conventions differ in the backward
pass of the norm:

- ``official`` (leofillioux/pvera ``models/adapters/dora.py``, ``DoRA.forward``): the norm of the adapted weight
  is differentiated like every other term.
- ``peft`` (PEFT's ``DoraLinearLayer``, ``weight_norm.detach()``, as the DoRA paper's §4.3 advises): the norm is
  treated as a constant in the backward pass.

The official code's DoRA departs from the paper in four more ways, each a field here and a ``quirks.dora_*``
switch, all off unless asked for (``experiment=pvera_paper`` turns them on; docs/reproduction.md, E2):
``frozen_magnitude`` (its ``Model.freeze`` in ``models/models.py`` leaves ``m`` frozen), ``unscaled`` (ΔW is
``B A``, without ``alpha / r``), ``transposed_update`` (it adds the ``(in, r) @ (r, out)`` product to the
``(out, in)`` weight: ΔW is ``(B A)ᵀ``, so the zero-initialised factor acts as the down-projection) and
``column_norm`` (its norm is over dim 0 of the weight: one norm and one magnitude per input column).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from pvera_bench.adapters.layers import take_slices
from pvera_bench.adapters.lora import LoraConfig, LoraLinear, inject_low_rank
from pvera_bench.adapters.registry import register_adapter
from pvera_bench.config import Convention


@dataclass
class DoraConfig(LoraConfig):
    """Args:
    detach_norm: the norm is a constant in the backward pass; None: False (``official``) or True (``peft``).
    frozen_magnitude: ``m`` stays at ``||W||`` (the official code's bug E2a).
    unscaled: ΔW is ``B A``, without ``alpha / r`` (the official code's bug E2b).
    transposed_update: ΔW is ``(B A)ᵀ`` (the official code's bug E2c; square weights only, as q and v are).
    column_norm: the norm and the magnitude are per input column (the official code's bug E2e).
    """

    detach_norm: bool | None = None
    frozen_magnitude: bool = False
    unscaled: bool = False
    transposed_update: bool = False
    column_norm: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.detach_norm is None:
            self.detach_norm = self.convention == Convention.peft
        if self.column_norm and self.dropout > 0:
            raise ValueError(
                "adapter.column_norm (the official code's E2e) scales the input of W + ΔW, which leaves no place for "
                f"the update's input dropout: set adapter.dropout=0 (got {self.dropout})"
            )


class DoraLinear(LoraLinear):
    """LoRA per output slice plus a magnitude per output row (or input column) of the slice."""

    def __init__(self, base_layer: nn.Linear, slices: tuple[tuple[int, int], ...], config: DoraConfig) -> None:
        super().__init__(base_layer, slices, config)
        if config.transposed_update and self.slice_width != self.in_features:
            raise ValueError(
                f"adapter.transposed_update needs square adapted weights, got {self.slice_width} x {self.in_features}"
            )
        if config.unscaled:
            self.scaling = 1.0
        self.detach_norm = config.detach_norm
        self.transposed_update = config.transposed_update
        self.norm_dim = -2 if config.column_norm else -1
        with torch.no_grad():
            norms = self.base_weights().norm(dim=self.norm_dim).float()
        if config.frozen_magnitude:
            self.register_buffer("lora_magnitude", norms)
        else:
            self.lora_magnitude = nn.Parameter(norms)

    def factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.transposed_update:  # (B A)ᵀ = Aᵀ Bᵀ: Bᵀ projects down, Aᵀ up
            return self.lora_B.mT, self.lora_A.mT
        return super().factors()

    def base_weights(self) -> torch.Tensor:
        """The frozen weight rows of every slice, ``(n_slices, width, in)``."""
        return torch.stack([self.base_layer.weight[start:stop] for start, stop in self.slices])

    def magnitude_scale(self) -> torch.Tensor:
        """``m / ||W + ΔW||`` per slice and output row ``(n_slices, width)``, or input column ``(n_slices, in)``."""
        norm = (self.base_weights() + super().delta_weight()).norm(dim=self.norm_dim)
        return self.lora_magnitude / (norm.detach() if self.detach_norm else norm)

    def adapted_weights(self) -> torch.Tensor:
        """``W' = m ⊙ (W + ΔW) / ||W + ΔW||`` of every slice, ``(n_slices, width, in)``."""
        scale = self.magnitude_scale().unsqueeze(self.norm_dim)
        return scale * (self.base_weights() + super().delta_weight())

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # its own: the frozen W x is rescaled before the bias
        wx = F.linear(x, self.base_layer.weight)  # W x; the bias is added after the rescaling
        wx_slices = take_slices(wx, self.slices)
        if self.norm_dim == -1:  # m (W x + ΔW dropout(x)) / ||W + ΔW||, per slice and output row
            adapted = self.magnitude_scale() * (wx_slices + self.update(x))
        else:  # W' x, W' scaled per input column
            adapted = torch.stack([F.linear(x, weight) for weight in self.adapted_weights()], dim=-2)
        out = self.add_to_slices(wx, adapted - wx_slices)
        return out if self.base_layer.bias is None else out + self.base_layer.bias.to(out.dtype)

    def delta_weight(self) -> torch.Tensor:
        return self.adapted_weights() - self.base_weights()


def inject(model: nn.Module, config: DoraConfig) -> None:
    inject_low_rank(model, config, DoraLinear)


register_adapter("dora", DoraConfig, inject, mergeable=True, prefix="lora_")
