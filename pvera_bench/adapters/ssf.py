"""SSF (Lian, Zhou, Feng and Wang, NeurIPS 2022, "Scaling & Shifting Your Features"): ``y = γ ⊙ x + β`` per
channel after each frozen operation.

Official code: ``dongzelian/SSF`` ``models/vision_transformer.py`` (``init_ssf_scale_shift`` and ``ssf_ada``,
lines 378-395). It scales and shifts the output of, in every block, ``norm1``, the fused ``attn.qkv`` (all of q, k
and v), ``attn.proj``, ``norm2``, ``mlp.fc1`` (before the GELU) and ``mlp.fc2``; of the patch embedding's
projection (and of its norm, when it has one: not in ViT-B/16 or DINOv2); and of the final ``norm``. Each pair is
``γ ~ N(1, 0.02²)``, ``β ~ N(0, 0.02²)``, so the model is not the backbone at init. Trainable numbers: ``2 (D + depth
(D + 3 D + D + D + m + D) + D)`` for width ``D`` and MLP width ``m``: 205,824 on ViT-B/16 (0.21 M in V-PETL Bench).

Each adapted module becomes an :class:`SsfLayer` around it (``base_layer``: the Linear, LayerNorm or patch Conv2d);
the pair folds into that module's weight and bias (``W ← diag(γ) W``, ``b ← γ ⊙ b + β``), so SSF merges. Choices:
the draws follow this module's order, not the official construction order (which only matters for reproducing the
official random numbers); the official code knows no LayerScale, and here ``proj`` and ``fc2`` are scaled before
DINOv2's ``ls1`` / ``ls2``, where the official code would put them (inside attention and MLP). PEFT has no SSF:
``peft`` is the paper's equation and initialisation, which are the official code's, so the conventions are the same.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from pvera_bench.adapters.layers import AdaptedLayer
from pvera_bench.adapters.registry import register_adapter
from pvera_bench.config import AdapterConfig

BLOCK_TARGETS = {  # module path in a block: the type it must be
    "norm1": nn.LayerNorm,
    "attn.qkv": nn.Linear,
    "attn.proj": nn.Linear,
    "norm2": nn.LayerNorm,
    "mlp.fc1": nn.Linear,
    "mlp.fc2": nn.Linear,
}


@dataclass
class SsfConfig(AdapterConfig):
    """Args:
    init_std: standard deviation of the initial scales (around 1) and shifts (around 0); 0 starts at the identity.
    """

    init_std: float = 0.02

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (math.isfinite(self.init_std) and self.init_std >= 0):
            raise ValueError(f"adapter.init_std must be a finite number >= 0, got {self.init_std}")


class SsfLayer(AdaptedLayer):
    """A frozen Linear, LayerNorm or Conv2d whose output channels are scaled by ``ssf_scale`` and shifted by
    ``ssf_shift``."""

    def __init__(self, base_layer: nn.Module, init_std: float) -> None:
        super().__init__(base_layer)
        if base_layer.weight is None:
            raise ValueError(f"adapter=ssf: {base_layer} has no weight to fold the scale into")
        channels = base_layer.weight.shape[0]  # output features, LayerNorm width or output channels
        self.channel_shape = (-1, 1, 1) if isinstance(base_layer, nn.Conv2d) else (-1,)  # where channels sit
        self.ssf_scale = nn.Parameter(torch.empty(channels).normal_(1.0, init_std))
        self.ssf_shift = nn.Parameter(torch.empty(channels).normal_(0.0, init_std))

    def adapt_output(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        scale, shift = self.ssf_scale.view(self.channel_shape), self.ssf_shift.view(self.channel_shape)
        return out * scale.to(out.dtype) + shift.to(out.dtype)  # γ ⊙ op(x) + β, in the base output's dtype

    def merged_layer(self) -> nn.Module:
        """The base module with ``W ← diag(γ) W`` and ``b ← γ ⊙ b + β`` (a bias is created if it had none)."""
        layer = self.base_layer
        with torch.no_grad():
            scale = self.ssf_scale.to(layer.weight.dtype)
            shift = self.ssf_shift.to(layer.weight.dtype)
            layer.weight.mul_(scale.view(-1, *[1] * (layer.weight.ndim - 1)))
            if layer.bias is None:
                layer.bias = nn.Parameter(shift.clone(), requires_grad=False)
            else:
                layer.bias.mul_(scale).add_(shift)
        return layer


def ssf_targets(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The modules SSF adapts, by path in ``model``, in the official code's places (each checked for its type)."""
    blocks = getattr(model, "blocks", None)
    if blocks is None:
        raise TypeError(f"{type(model).__name__} has no .blocks: apply_adapter expects a timm VisionTransformer")
    wanted = [("patch_embed.proj", nn.Conv2d)]
    if isinstance(getattr(model.patch_embed, "norm", None), nn.LayerNorm):
        wanted.append(("patch_embed.norm", nn.LayerNorm))
    wanted += [(f"blocks.{i}.{path}", kind) for i in range(len(blocks)) for path, kind in BLOCK_TARGETS.items()]
    wanted.append(("norm", nn.LayerNorm))
    targets = []
    for path, kind in wanted:
        try:
            module = model.get_submodule(path)
        except AttributeError:
            raise ValueError(f"adapter=ssf: {type(model).__name__} has no {path}") from None
        if isinstance(module, AdaptedLayer) or not isinstance(module, kind):
            raise ValueError(f"adapter=ssf: {path} must be a {kind.__name__}, got {type(module).__name__}")
        targets.append((path, module))
    return targets


def inject(model: nn.Module, config: SsfConfig) -> None:
    for path, module in ssf_targets(model):
        parent_path, _, attr = path.rpartition(".")
        setattr(model.get_submodule(parent_path), attr, SsfLayer(module, config.init_std))


register_adapter("ssf", SsfConfig, inject, prefix="ssf_", mergeable=True, identity_at_init=())
