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

from pvera_bench.adapters.base import layer_tokens, register_adapter, scale_gradient, slice_view
from pvera_bench.adapters.lora import LoraConfig, LoraLinear, low_rank_targets


@dataclass
class DoraConfig(LoraConfig):
    pass


class RescaleSlices(torch.autograd.Function):
    """``out[..., slice_i] = (out[..., slice_i] + update[..., i, :]) ⊙ scale[i]`` in place (DoRA's output).

    Written in place on a 2-D base output, with no autograd copy of the whole gradient per slice.
    """

    @staticmethod
    def forward(ctx, out, slices, update, scale):
        target = slice_view(out, slices)
        combined = target + update
        torch.mul(combined, scale.to(combined.dtype), out=target)
        ctx.mark_dirty(out)
        ctx.slices = slices
        ctx.save_for_backward(combined, scale)
        return out

    @staticmethod
    def backward(ctx, grad):
        combined, scale = ctx.saved_tensors
        grad_view = slice_view(grad, ctx.slices)
        grad_combined = grad_view * scale.to(grad.dtype)
        grad_out = grad.clone()
        slice_view(grad_out, ctx.slices).copy_(grad_combined)
        grad_scale = scale_gradient(grad_view, combined, scale) if ctx.needs_input_grad[3] else None
        return grad_out, None, grad_combined, grad_scale


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
        with torch.no_grad():
            norms = (self.base_weights() + super().delta_weight()).norm(dim=-1)
        return self.lora_magnitude / norms

    def base_weights(self) -> torch.Tensor:
        """The frozen weight rows of every slice, ``(n_slices, width, in)`` (a view)."""
        return slice_view(self.base_layer.weight.T, self.slices).permute(1, 2, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = layer_tokens(x, self.in_features)
        out = F.linear(tokens, self.base_layer.weight)  # without bias: the scale applies to W x + ΔW x only
        (update,) = self.slice_updates(tokens)
        out = RescaleSlices.apply(out, self.slices, update, self.magnitude_scale())
        if self.base_layer.bias is not None:
            out.add_(self.base_layer.bias)
        return out.view(*x.shape[:-1], self.out_features)

    def delta_weight(self) -> torch.Tensor:
        weights = self.base_weights()
        return self.magnitude_scale().unsqueeze(-1) * (weights + super().delta_weight()) - weights


def inject(model: nn.Module, config: DoraConfig) -> None:
    for t in low_rank_targets(model, config):
        setattr(t.parent, t.attr, DoraLinear(t.layer, t.slices, config.r, config.alpha, config.dropout))


register_adapter("dora", DoraConfig, inject, mergeable=True, prefix="lora_")
