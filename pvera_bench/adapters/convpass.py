"""Convpass (Jie & Deng, "Convolutional Bypasses Are Better Vision Transformer Adapters", arXiv 2207.07039, 2022).

A convolutional bypass parallel to the attention and to the MLP of every block, reading the same normed tokens:
``x ← x + attn(LN1(x)) + s · Convpass(LN1(x))``, then the same with the MLP and ``LN2``, where
``Convpass(h) = up(dropout(act(conv3x3(act(down(h))))))`` and the 3x3 convolution runs on the patch tokens laid
back on the patch grid; each prefix token (the [cls] token) is convolved as an image of its own (1x1, zero padded:
only the kernel's centre tap and the bias reach it). ``act`` is QuickGELU, ``z · sigmoid(1.702 z)``.

Official implementation followed: JieShibo/PETL-ViT ``convpass/vtab/convpass.py`` (``forward_block`` lines 7-10,
``QuickGELU`` 101-103, ``Convpass`` 106-149, ``set_Convpass`` 188-217) with ``train.py`` (``dim=8``, line 69).
Initialisation (lines 110-123): ``down`` Xavier-uniform, its bias zero; ``up`` weight and bias zero, so the model
is unchanged at init; the 3x3 convolution either Xavier-uniform (``conv_init=xavier``) or zero with the identity on
its centre tap (``conv_init=identity``, the code's default; the per-task ``xavier_init`` of
``convpass/vtab/configs/convpass/*.yaml`` picks one), its bias zero. Dropout 0.1 before ``up``.

Choices: the paper's equation and the official code agree (PEFT has no Convpass), so ``official`` and ``peft`` are
the same adapter. The official code fixes width 768, a 14x14 grid and one [cls] token; here the width is the
model's, the grid is ``patch_embed.grid_size`` and every one of ``num_prefix_tokens`` tokens (cls, registers) is its
own 1x1 image. The bypass is added to the attention's (MLP's) output inside the block, so timm's LayerScale
(DINOv2) scales it too, and drop-path drops the sum with one mask where the official block draws one per branch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from pvera_bench.adapters.layers import AdaptedLayer, check_dropout, dropout_layer
from pvera_bench.adapters.registry import register_adapter
from pvera_bench.config import AdapterConfig, Convention

BRANCHES = ("attn", "mlp")
CONV_INITS = ("identity", "xavier")


@dataclass
class ConvpassConfig(AdapterConfig):
    """Args:
    hidden_dim: channels of the bottleneck and of its 3x3 convolution (8 in the paper).
    scale: the factor s on the bypass (searched per task from {0.01, 0.1, 1, 10, 100}).
    targets: the block branches that get a bypass: ``attn`` and ``mlp`` (Convpass), ``attn`` alone (Convpass-attn).
    conv_init: the 3x3 convolution's start: ``identity`` (centre tap = identity) or ``xavier`` (Xavier-uniform).
    dropout: dropout before the up projection.
    """

    hidden_dim: int = 8
    scale: float = 1.0
    targets: list[str] = field(default_factory=lambda: list(BRANCHES))
    conv_init: str = "identity"
    dropout: float = 0.1

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.hidden_dim < 1:
            raise ValueError(f"adapter.hidden_dim must be >= 1, got {self.hidden_dim}")
        if self.scale <= 0:
            raise ValueError(f"adapter.scale must be positive, got {self.scale}")
        if not self.targets or set(self.targets) - set(BRANCHES) or len(set(self.targets)) != len(self.targets):
            raise ValueError(f"adapter.targets must be distinct names from attn, mlp; got {self.targets}")
        if self.conv_init not in CONV_INITS:
            raise ValueError(f"adapter.conv_init must be one of {list(CONV_INITS)}, got {self.conv_init!r}")
        check_dropout(self.dropout)


def quick_gelu(z: torch.Tensor) -> torch.Tensor:
    """CLIP's GELU approximation, the official activation."""
    return z * torch.sigmoid(1.702 * z)


class ConvBypass(AdaptedLayer):
    """Wraps a block's attn or mlp: ``base_layer(h) + s · Convpass(h)``, both reading the normed tokens ``h``."""

    def __init__(
        self, base_layer: nn.Module, dim: int, grid: tuple[int, int], prefix_tokens: int, config: ConvpassConfig
    ) -> None:
        super().__init__(base_layer)
        hidden = config.hidden_dim
        self.grid = grid
        self.prefix_tokens = prefix_tokens
        self.scale = config.scale
        self.convpass_down = nn.Linear(dim, hidden)
        self.convpass_conv = nn.Conv2d(hidden, hidden, kernel_size=3, padding=1)
        self.convpass_up = nn.Linear(hidden, dim)
        self.dropout = dropout_layer(config.dropout)
        nn.init.xavier_uniform_(self.convpass_down.weight)
        nn.init.zeros_(self.convpass_down.bias)
        if config.conv_init == "xavier":
            nn.init.xavier_uniform_(self.convpass_conv.weight)
        else:
            with torch.no_grad():
                self.convpass_conv.weight.zero_()
                self.convpass_conv.weight[:, :, 1, 1] = torch.eye(hidden)
        nn.init.zeros_(self.convpass_conv.bias)
        nn.init.zeros_(self.convpass_up.weight)
        nn.init.zeros_(self.convpass_up.bias)

    def bypass(self, h: torch.Tensor) -> torch.Tensor:
        """``up(dropout(act(conv(act(down(h))))))``, the patches convolved on their grid, each prefix token alone."""
        batch, tokens, _ = h.shape
        rows, cols = self.grid
        prefix_count, hidden = self.prefix_tokens, self.convpass_conv.in_channels
        if tokens != prefix_count + rows * cols:
            raise ValueError(
                f"convpass expects {prefix_count} prefix tokens and a {rows}x{cols} patch grid, got {tokens} tokens: "
                "apply the adapter after the backbone's input size is set"
            )
        z = quick_gelu(self.convpass_down(h))
        prefix, patches = z[:, :prefix_count], z[:, prefix_count:]
        patches = self.convpass_conv(patches.transpose(1, 2).reshape(batch, hidden, rows, cols))
        patches = patches.flatten(2).transpose(1, 2)  # back to row-major tokens, (batch, rows * cols, hidden)
        prefix = self.convpass_conv(prefix.reshape(batch * prefix_count, hidden, 1, 1))  # each one a 1x1 image
        z = torch.cat([prefix.reshape(batch, prefix_count, hidden), patches], dim=1)
        return self.convpass_up(self.dropout(quick_gelu(z)))

    def adapt_output(self, h: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """``block(h) + s · bypass(h)``, ``out`` being the frozen attention or MLP of ``h``."""
        return out + (self.scale * self.bypass(h)).to(out.dtype)


def inject(model: nn.Module, config: ConvpassConfig) -> None:
    if not hasattr(model, "blocks") or not hasattr(model, "patch_embed"):
        raise TypeError(
            f"{type(model).__name__} has no .blocks/.patch_embed: convpass expects a timm VisionTransformer"
        )
    grid = tuple(model.patch_embed.grid_size)
    for block in model.blocks:
        for branch in config.targets:
            bypass = ConvBypass(getattr(block, branch), model.embed_dim, grid, model.num_prefix_tokens, config)
            setattr(block, branch, bypass)


register_adapter("convpass", ConvpassConfig, inject, prefix="convpass_", identity_at_init=tuple(Convention))
