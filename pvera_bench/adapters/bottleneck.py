"""Bottleneck adapters (Houlsby et al., ICML 2019): ``y ← y + up(act(down(y)))`` behind a block's sub-layers.

``placement`` says which outputs of each block are adapted, before LayerScale and the residual addition:

- ``houlsby`` (default): two per block, behind the attention (after ``attn.proj``) and behind the MLP (after
  ``mlp.fc2``): Houlsby et al.'s placement, and the official PVeRA code's (leofillioux/pvera
  ``models/models.py`` lines 140-152, ``models/adapters/bottleneck.py``). The Adapter+ code's ``houlsby`` config
  (visinf/adapter_plus ``adapter_plus/vit_adapter.py`` ``forward_houlsby``, lines 294-298) puts them after
  LayerScale and the block's drop path (the same at ViT-B, which has no LayerScale, in eval), and its ablation
  trains the LayerNorms too (``conf/experiment/ablations/other_configs/houlsby_dim8.yaml``); not done here.
- ``pfeiffer``: one per block, behind the MLP only: the single adapter of Pfeiffer et al. (EACL 2021,
  AdapterFusion) as VPT's adapter baseline builds it in a ViT (KMnP/vpt ``src/models/vit_adapter/vit.py``,
  ``ADPT_Block.forward``: ``h + (m + up(GELU(down(m))))`` with ``m`` the MLP's output), which Adapter+ calls the
  intermediate position. The official Adapter+ code's own ``pfeiffer`` config (``conf/adapter/pfeiffer.yaml``,
  ``forward_pfeiffer``) is another adapter: it reads the block's output after the MLP's residual addition
  through a LayerNorm of its own (the ``post`` position of :mod:`~pvera_bench.adapters.adapter_plus`, plus that
  norm), BERT-initialised in its ablation (``conf/experiment/ablations/other_configs/pfeiffer.yaml``); not built.

Conventions: ``peft`` (the paper's; PEFT has no such adapter): the projections start near zero (normal, std 1e-2,
truncated at 2 std, biases zero, as Houlsby et al. initialise and Adapter+'s ``init: houlsby`` does), so each
adapter starts near the identity; ``official`` (leofillioux/pvera): ``nn.Linear``'s initialisation. Either
convention takes the activation from ``activation`` (ReLU in the official code's config/adapters.yaml; VPT's
Pfeiffer adapter uses GELU and zero weights and biases, so that only its up bias ever gets a gradient).

The bottleneck width is ``hidden_dim``, or ``width // reduction`` of the backbone it is injected into (the official
PVeRA code's ``reduction_ratios`` 4/8/16, ``hidden_dim = int(in_dim / reduction_factor)``): its grid is 192/96/48
at ViT-B's width 768 only, 96/48/24 at ViT-S's 384. :class:`BottleneckWidthConfig` holds that choice for every
bottleneck-shaped adapter (AdaptFormer and Adapter+ too).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from pvera_bench.adapters.layers import AdaptedLayer
from pvera_bench.adapters.registry import register_adapter
from pvera_bench.config import AdapterConfig, Convention

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU}
PLACEMENTS = {"houlsby": ("attn", "mlp"), "pfeiffer": ("mlp",)}  # the block submodules whose output is adapted


@dataclass
class BottleneckWidthConfig(AdapterConfig):
    """The width of a bottleneck adapter: exactly one of ``hidden_dim`` and ``reduction`` is set, the other null.

    Args:
        hidden_dim: width of the bottleneck, whatever the backbone.
        reduction: the bottleneck is ``width // reduction`` wide, ``width`` the backbone's (the grid's choice:
            ``{adapter.hidden_dim: [null], adapter.reduction: [4, 8, 16]}``).
    """

    hidden_dim: int | None = 64
    reduction: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.hidden_dim is not None and self.reduction is not None:
            raise ValueError(
                f"adapter.hidden_dim must be null when adapter.reduction is set, got hidden_dim={self.hidden_dim} and "
                f"reduction={self.reduction}; set adapter.hidden_dim=null to use the reduction"
            )
        if self.hidden_dim is None and self.reduction is None:
            raise ValueError("adapter.hidden_dim must be set when adapter.reduction is null, got both null")
        if self.hidden_dim is not None and self.hidden_dim < 1:
            raise ValueError(f"adapter.hidden_dim must be >= 1, got {self.hidden_dim}")
        if self.reduction is not None and self.reduction < 1:
            raise ValueError(f"adapter.reduction must be >= 1, got {self.reduction}")

    def hidden_width(self, width: int) -> int:
        """The bottleneck's width in a backbone ``width`` wide."""
        if self.hidden_dim is not None:
            return self.hidden_dim
        if self.reduction > width:
            raise ValueError(f"adapter.reduction must be <= the backbone width {width}, got {self.reduction}")
        return width // self.reduction


def near_identity_init_(layer: nn.Linear, std: float) -> None:
    """Houlsby et al.'s initialisation: weight ~ N(0, std²) truncated at ±2 std, bias zero."""
    nn.init.trunc_normal_(layer.weight, std=std, a=-2 * std, b=2 * std)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)


@dataclass
class BottleneckConfig(BottleneckWidthConfig):
    """Args:
    activation: relu or gelu.
    placement: houlsby (behind the attention and behind the MLP) or pfeiffer (behind the MLP only).
    init_std: std of the truncated-normal initialisation of both projections; None: ``nn.Linear``'s
        initialisation (``official``) or 1e-2 (``peft``).
    """

    activation: str = "relu"
    placement: str = "houlsby"
    init_std: float | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.init_std is None and self.convention == Convention.peft:
            self.init_std = 1e-2
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"adapter.activation must be one of {sorted(ACTIVATIONS)}, got {self.activation!r}")
        if self.placement not in PLACEMENTS:
            raise ValueError(f"adapter.placement must be one of {sorted(PLACEMENTS)}, got {self.placement!r}")
        if self.init_std is not None and self.init_std < 0:
            raise ValueError(f"adapter.init_std must be >= 0, got {self.init_std}")


class SerialAdapter(AdaptedLayer):
    """Wraps a block submodule: ``y = base_layer(x)``, then ``y + up(act(down(y)))``."""

    def __init__(self, base_layer: nn.Module, dim: int, hidden: int, config: BottleneckConfig) -> None:
        super().__init__(base_layer)
        self.bottleneck_down = nn.Linear(dim, hidden)
        self.bottleneck_up = nn.Linear(hidden, dim)
        self.activation = ACTIVATIONS[config.activation]()
        if config.init_std is not None:  # else nn.Linear's own initialisation (the official code's)
            for layer in (self.bottleneck_down, self.bottleneck_up):
                near_identity_init_(layer, config.init_std)

    def adapt_output(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return y + self.bottleneck_up(self.activation(self.bottleneck_down(y)))  # y = base_layer(x)


def inject(model: nn.Module, config: BottleneckConfig) -> None:
    dim = model.embed_dim
    hidden = config.hidden_width(dim)
    for block in model.blocks:
        for name in PLACEMENTS[config.placement]:
            setattr(block, name, SerialAdapter(getattr(block, name), dim, hidden, config))


register_adapter("bottleneck", BottleneckConfig, inject, prefix="bottleneck_", identity_at_init=())
