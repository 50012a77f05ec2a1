"""Adapter+ (Steitz & Roth, "Adapters Strike Back", CVPR 2024): one bottleneck adapter after each block, its
output scaled per channel.

    y = block(x);    y ← y + s ⊙ DropPath(up(Dropout(GELU(down(y)))))

The official implementation it follows: visinf/adapter_plus ``adapter_plus/vit_adapter.py`` (``Adapter``, lines
19-102; ``AdapterBlock.forward_post``, lines 269-273) with ``conf/adapter/adapter_plus.yaml`` over
``conf/adapter/base_adapter.yaml``: ``config: post``, ``scaling: channel``, ``init: houlsby``, ``dim: 8``,
``norm_layer: false``, ``bias: true``, ``act_layer: true`` (the ViT's GELU), ``dropout: 0``, ``drop_path: 0.1``.

- Position ``post``: after the block's MLP *and its residual addition*: the adapter reads the residual stream
  (the block's output) and adds to it, that stream being its skip connection; LayerScale and the block's own
  stochastic depth act inside the block, before it.
- ``s`` ∈ R^d (``adapter_plus_scale``), learnable, starts at ones.
- Initialisation ``houlsby``: both projections N(0, 0.01²) truncated at ±2 std, biases zero (the official comment:
  the Houlsby paper's value; Houlsby's code used 1e-3). The adapter then starts near, not at, the identity.
- ``dropout`` acts after the activation (the official ``pre_dropout: false``); ``drop_path`` drops the whole
  adapter branch per sample in training, rescaled by 1/(1-p): timm's ``DropPath``, the official ``drop_path_a``.

What the official code does differently from the Houlsby (ICML 2019) and Pfeiffer (EACL 2021) adapters (our
``bottleneck`` adapter, ``placement=houlsby`` / ``pfeiffer``): one adapter per block where Houlsby has two; after
the block's residual addition, where Houlsby's sit on each sub-layer's output before it, and VPT's ViT port of
Pfeiffer's (KMnP/vpt ``src/models/vit_adapter/vit.py``) on the MLP's output before it; a learnable per-channel
scale on its output, where both add it unscaled; stochastic depth on the adapter branch. (GELU, where our
``bottleneck`` defaults to the PVeRA code's ReLU.) The official code's own ``pfeiffer`` config
(``forward_pfeiffer``, lines 281-287) is this ``post`` position plus a LayerNorm on the adapter's input
(``conf/adapter/pfeiffer.yaml``: ``norm_layer: true``), run in its ablation with BERT initialisation N(0, 0.02²)
and no scale (``conf/experiment/ablations/other_configs/pfeiffer.yaml``).

Conventions: PEFT has no Adapter+, so ``peft`` is the paper's equation, which is what the official code computes:
both conventions build the same adapter. The official runs also keep stochastic depth 0.1 in the frozen backbone
(``conf/config.yaml`` ``vit.drop_path``): a backbone setting (``backbone.model_kwargs.drop_path_rate=0.1``), not
part of this adapter. The bottleneck is ``hidden_dim`` wide (8) or ``width // reduction``, as for ``bottleneck``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from timm.layers import DropPath
from torch import nn

from pvera_bench.adapters.bottleneck import BottleneckWidthConfig, near_identity_init_
from pvera_bench.adapters.layers import AdaptedLayer, check_dropout, dropout_layer
from pvera_bench.adapters.registry import register_adapter

HOULSBY_STD = 0.01  # visinf/adapter_plus adapter_plus/vit_adapter.py line 53


@dataclass
class AdapterPlusConfig(BottleneckWidthConfig):
    """Args:
    hidden_dim: width of the bottleneck (the official default 8; its VTAB runs use 1 to 32).
    dropout: dropout after the activation, in training (and at test time under ``sampling=mc``).
    drop_path: probability of dropping the adapter's branch per sample in training (stochastic depth).
    """

    hidden_dim: int | None = 8
    dropout: float = 0.0
    drop_path: float = 0.1

    def __post_init__(self) -> None:
        super().__post_init__()
        check_dropout(self.dropout)
        if not 0 <= self.drop_path < 1:
            raise ValueError(f"adapter.drop_path must be in [0, 1), got {self.drop_path}")


class PostBlockAdapter(AdaptedLayer):
    """Wraps a transformer block: ``y = block(x)``, then ``y + s ⊙ DropPath(up(Dropout(GELU(down(y)))))``."""

    def __init__(self, block: nn.Module, dim: int, hidden: int, config: AdapterPlusConfig) -> None:
        super().__init__(block)
        self.adapter_plus_down = nn.Linear(dim, hidden)
        self.adapter_plus_up = nn.Linear(hidden, dim)
        self.adapter_plus_scale = nn.Parameter(torch.ones(dim))
        self.activation = nn.GELU()
        self.dropout = dropout_layer(config.dropout)
        self.drop_path = DropPath(config.drop_path) if config.drop_path > 0 else nn.Identity()
        for layer in (self.adapter_plus_down, self.adapter_plus_up):
            near_identity_init_(layer, HOULSBY_STD)

    def adapt_output(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``y + s ⊙ DropPath(up(Dropout(GELU(down(y)))))``, ``y`` being ``block(x)``."""
        update = self.adapter_plus_up(self.dropout(self.activation(self.adapter_plus_down(y))))
        return y + (self.drop_path(update) * self.adapter_plus_scale).to(y.dtype)


def inject(model: nn.Module, config: AdapterPlusConfig) -> None:
    hidden = config.hidden_width(model.embed_dim)
    for index, block in enumerate(model.blocks):
        model.blocks[index] = PostBlockAdapter(block, model.embed_dim, hidden, config)


register_adapter("adapter_plus", AdapterPlusConfig, inject, prefix="adapter_plus_", identity_at_init=())
