"""IA3 (Liu et al., NeurIPS 2022): learned vectors rescale keys, values and the MLP's hidden activation.

``k ← l_k ⊙ k``, ``v ← l_v ⊙ v`` (the k and v slices of the fused qkv output, bias included)
and ``h ← l_ff ⊙ act(fc1 x)`` (the input of ``mlp.fc2``). All vectors start at one, so the
model is unchanged at initialisation, and all fold into the weights.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from pvera_bench.adapters.base import TargetedConfig, find_targets, layer_tokens, register_adapter


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


class ScaledFrozenLinear(torch.autograd.Function):
    """A frozen Linear with a scale on its input columns (``W (l ⊙ x) + b``) or output rows (``l ⊙ (W x + b)``).

    No token-sized tensor is multiplied by ``l`` into a new one: on the input side ``l``
    scales the weight in the forward pass, and in the backward pass the gradient
    ``G = grad W`` is rescaled in place once ``l``'s gradient has been taken from it; on the
    output side the backward pass scales the weight (``(out, in)``, smaller than the tokens'
    gradient) instead of the gradient. Products run in ``x``'s dtype (the autocast
    dtype, see :func:`~pvera_bench.adapters.base.layer_tokens`); ``l``'s gradient accumulates
    in ``l``'s dtype.
    """

    @staticmethod
    def forward(ctx, x, scale, weight, bias, on_input):
        weight = weight.to(x.dtype)
        bias = None if bias is None else bias.to(x.dtype)
        if on_input:  # W (l ⊙ x) = (W l) x: l scales the weight, not the tokens
            out = F.linear(x, weight * scale.to(x.dtype), bias)
            ctx.save_for_backward(x, scale, weight)
        else:
            out = F.linear(x, weight, bias)
            ctx.save_for_backward(out, scale, weight)  # W x + b: what l multiplied
            out = out * scale.to(x.dtype)
        ctx.on_input = on_input
        return out

    @staticmethod
    def backward(ctx, grad):
        scaled, scale, weight = ctx.saved_tensors
        needs_x, needs_scale = ctx.needs_input_grad[:2]
        grad_x = grad_scale = None
        grad_scaled = grad @ weight if ctx.on_input else grad  # the gradient of what l multiplied
        if needs_scale:
            grad_scale = (grad_scaled * scaled).sum(0, dtype=scale.dtype)
        if needs_x and ctx.on_input:
            grad_x = grad_scaled.mul_(scale.to(grad_scaled.dtype))
        elif needs_x:
            grad_x = grad @ (scale.unsqueeze(-1) * weight).to(grad.dtype)
        return grad_x, grad_scale, None, None, None


class Ia3Linear(nn.Module):
    """A frozen Linear whose input (feed-forward) or output slices are rescaled by ``ia3_l``."""

    def __init__(self, base_layer: nn.Linear, slices: tuple[tuple[int, int], ...], feedforward: bool) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.feedforward = feedforward
        self.slices = tuple(sorted(slices))  # ia3_l follows the slices in output order
        width = base_layer.in_features if feedforward else sum(stop - start for start, stop in slices)
        self.ia3_l = nn.Parameter(torch.ones(width))

    def full_scale(self) -> torch.Tensor:
        """The scale of every output row (1 outside the adapted slices); a vector, not an activation."""
        if self.slices == ((0, self.base_layer.out_features),):
            return self.ia3_l
        pieces, cursor, offset = [], 0, 0
        for start, stop in self.slices:
            pieces += [self.ia3_l.new_ones(start - cursor), self.ia3_l[offset : offset + stop - start]]
            cursor, offset = stop, offset + stop - start
        pieces.append(self.ia3_l.new_ones(self.base_layer.out_features - cursor))
        return torch.cat(pieces)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        layer = self.base_layer
        if layer.weight.requires_grad or (layer.bias is not None and layer.bias.requires_grad):
            raise RuntimeError("IA3's base layer must be frozen (apply_adapter freezes it)")
        scale = self.ia3_l if self.feedforward else self.full_scale()
        tokens = layer_tokens(x, layer.in_features)
        out = ScaledFrozenLinear.apply(tokens, scale, layer.weight, layer.bias, self.feedforward)
        return out.view(*x.shape[:-1], layer.out_features)

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
