"""Make a timm ViT adaptable by Hugging Face PEFT the way the papers adapt it (q and v only).

PEFT adapts whole modules, and timm fuses q, k and v into one ``attn.qkv`` Linear, so PEFT
cannot adapt q and v without k there. :func:`split_qkv` replaces every fused qkv by three
Linears named ``q``, ``k``, ``v`` holding the same weights (the output is unchanged), which
PEFT can then target (``target_modules=r".*attn\\.qkv\\.(q|v)"``). Used by the equivalence
tests, the benchmark and the PEFT export (:mod:`pvera_bench.artefacts.export`); pvera_bench's own adapters need
none of this.
"""

from __future__ import annotations

import torch
from torch import nn


class SplitQKV(nn.Module):
    """A fused qkv Linear as three Linears ``q``, ``k``, ``v``; ``forward`` concatenates them as timm expects."""

    def __init__(self, qkv: nn.Linear) -> None:
        super().__init__()
        width = qkv.out_features // 3
        for i, name in enumerate("qkv"):
            linear = nn.Linear(
                qkv.in_features, width, bias=qkv.bias is not None, device=qkv.weight.device, dtype=qkv.weight.dtype
            )
            with torch.no_grad():
                linear.weight.copy_(qkv.weight[i * width : (i + 1) * width])
                if qkv.bias is not None:
                    linear.bias.copy_(qkv.bias[i * width : (i + 1) * width])
            linear.requires_grad_(qkv.weight.requires_grad)
            setattr(self, name, linear)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.q(x), self.k(x), self.v(x)], dim=-1)


def split_qkv(model: nn.Module) -> nn.Module:
    """Replace every block's ``attn.qkv`` by a :class:`SplitQKV`, in place; returns the model."""
    for block in model.blocks:
        block.attn.qkv = SplitQKV(block.attn.qkv)
    return model
