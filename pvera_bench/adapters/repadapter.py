"""RepAdapter (Luo et al., "Towards Efficient Visual Adaption via Structural Re-parameterization", arXiv 2302.08106,
2023): a linear adapter in front of a frozen Linear, folded into that Linear's weights after training.

``Linear(x + s · up(dropout(down(x))))``, with ``down`` a dense projection to ``hidden_dim`` channels and ``up`` a
group-wise one: the hidden channels and the output channels are split into ``groups`` blocks and block g of the
output reads block g of the hidden channels only (a grouped 1x1 convolution). Being linear, the adapter folds into
the Linear it feeds: ``W' = W (I + s U D)``, ``b' = b + s W (U b_d + b_u)`` (U: ``up`` as a block-diagonal matrix).

Official implementation followed: luogen1996/RepAdapter ``repadapter.py``: ``RepAdapter`` (lines 147-172;
``conv_A``, a 1x1 Conv1d, is ``down``; ``conv_B``, a 1x1 Conv1d with ``groups=2``, is ``up``; dropout 0.1 between
them), its placement ``set_RepAdapter`` (lines 223-268: ``repblock`` in front of the attention and of the MLP,
``forward_vit_block_adapter`` lines 21-24; ``repattn`` in front of the attention only) and its re-parameterisation
``set_RepWeight`` / ``reparameterize`` / ``sparse2dense`` (lines 201-220, 271-329: into ``attn.qkv`` and
``mlp.fc1``). Initialisation (lines 164-167): ``down`` Xavier-uniform with zero bias, ``up`` weight and bias zero,
so the model is unchanged at init. Both convolutions have a bias (lines 158-159). Hidden width 8
(``train.py --dim``); ``s`` per task in ``configs/repblock/*.yaml``.

Choices: the adapter reads LN(x) in front of the attention (MLP), whose first layer is ``attn.qkv`` (``mlp.fc1``);
it wraps that Linear, which is the same computation for timm's ViT (an attention with a ``gate`` reads x
unadapted). The dropout is on the hidden channels, as in the code. PEFT has no RepAdapter and the paper's equation
is the official code's, so ``official`` and ``peft`` are the same adapter. A target Linear without a bias gets
one when merged (``b' = s W (U b_d + b_u)``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from pvera_bench.adapters.layers import AdaptedLayer, TargetedConfig, check_dropout, dropout_layer, find_targets
from pvera_bench.adapters.registry import register_adapter
from pvera_bench.config import Convention


@dataclass
class RepAdapterConfig(TargetedConfig):
    """Args:
    targets: the Linears whose input is adapted: ``attn.qkv`` and ``mlp.fc1`` (``repblock``, the VTAB setting),
        ``attn.qkv`` alone (``repattn``).
    qkv_slices: must stay None: the adapter transforms the input of the whole fused qkv.
    hidden_dim: width of the adapter (8 in the paper).
    groups: groups of the up projection.
    scale: the factor s on the adapter (searched per task from {0.1, 0.5, 1, 5, 10}).
    dropout: dropout on the hidden channels.
    """

    targets: list[str] = field(default_factory=lambda: ["attn.qkv", "mlp.fc1"])
    qkv_slices: list[str] | None = None
    hidden_dim: int = 8
    groups: int = 2
    scale: float = 1.0
    dropout: float = 0.1

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.qkv_slices is not None:
            raise ValueError(
                f"adapter.qkv_slices must be null for repadapter (it adapts the input of the whole qkv), "
                f"got {self.qkv_slices}"
            )
        if self.hidden_dim < 1:
            raise ValueError(f"adapter.hidden_dim must be >= 1, got {self.hidden_dim}")
        if self.groups < 1 or self.hidden_dim % self.groups:
            raise ValueError(f"adapter.groups must be >= 1 and divide hidden_dim={self.hidden_dim}, got {self.groups}")
        if self.scale <= 0:
            raise ValueError(f"adapter.scale must be positive, got {self.scale}")
        check_dropout(self.dropout)


class RepAdapterLinear(AdaptedLayer):
    """A frozen Linear reading its input through the adapter: ``base_layer(x + s · up(dropout(down(x))))``."""

    def __init__(self, base_layer: nn.Linear, config: RepAdapterConfig) -> None:
        super().__init__(base_layer)
        dim, hidden, groups = base_layer.in_features, config.hidden_dim, config.groups
        self.scale = config.scale
        self.repadapter_down = nn.Linear(dim, hidden)
        # up: group g maps hidden channels [g h/G, (g+1) h/G) to output channels [g d/G, (g+1) d/G)
        self.repadapter_up = nn.Parameter(torch.zeros(groups, dim // groups, hidden // groups))
        self.repadapter_up_bias = nn.Parameter(torch.zeros(dim))
        self.dropout = dropout_layer(config.dropout)
        nn.init.xavier_uniform_(self.repadapter_down.weight)
        nn.init.zeros_(self.repadapter_down.bias)

    def up_weight(self) -> torch.Tensor:
        """The grouped up projection as one block-diagonal ``(dim, hidden)`` matrix U."""
        return torch.block_diag(*self.repadapter_up)

    def adapt_input(self, x: torch.Tensor) -> torch.Tensor:
        """``x + s · up(dropout(down(x)))``, what the base Linear reads."""
        hidden = self.dropout(self.repadapter_down(x))
        return x + (self.scale * F.linear(hidden, self.up_weight(), self.repadapter_up_bias)).to(x.dtype)

    def merged_layer(self) -> nn.Linear:
        """The base Linear with the adapter folded in: ``W' = W (I + s U D)``, ``b' = b + s W (U b_d + b_u)``."""
        layer = self.base_layer
        with torch.no_grad():
            weight = layer.weight
            down, up = (t.to(weight.dtype) for t in (self.repadapter_down.weight, self.up_weight()))
            shift = self.scale * (up @ self.repadapter_down.bias.to(weight.dtype) + self.repadapter_up_bias)
            bias_update = weight @ shift.to(weight.dtype)
            weight += self.scale * (weight @ up @ down)
            if layer.bias is None:
                layer.bias = nn.Parameter(bias_update, requires_grad=False)
            else:
                layer.bias += bias_update
        return layer


def inject(model: nn.Module, config: RepAdapterConfig) -> None:
    targets = find_targets(model, config)
    for t in targets:
        if t.layer.in_features % config.groups:
            raise ValueError(f"adapter.groups={config.groups} must divide the width {t.layer.in_features} of {t.path}")
    for t in targets:
        setattr(t.parent, t.attr, RepAdapterLinear(t.layer, config))


register_adapter(
    "repadapter", RepAdapterConfig, inject, prefix="repadapter_", mergeable=True, identity_at_init=tuple(Convention)
)
