"""FacT (Jie & Deng, "FacT: Factor-Tuning for Lightweight Adaptation on Vision Transformer", AAAI 2023).

The d × d weights of every block (q, k, v, the attention output, and fc1 and fc2 each cut into four d × d
pieces) form one 12L × d × d tensor whose increment is factorised with factors shared by all weights. In the
paper's ``x W`` layout, for weight i (eqs. 8-11):

- ``fact_tt`` (Tensor-Train): ``ΔW_i = s · U Σ_i Vᵀ``; U, V (d × r) shared, a core Σ_i (r × r) per weight;
  ``2dr + 12L r²`` parameters.
- ``fact_tk`` (Tucker): ``ΔW_i = s · U (C ×₁ p_i) Vᵀ``; U, V and C (r × r × r) shared, a row p_i of P (r) per
  weight; ``2dr + 12L r + r³`` parameters.

Each adapted Linear adds, per d × d block, ``s · V dropout(Σ_iᵀ Uᵀ x)`` to ``W x + b`` (x the block's input
chunk, the result placed in the block's output rows); the update folds into W.

Official implementation: JieShibo/PETL-ViT, ``FacT/fact_tt.py`` (``set_FacT`` lines 103-128, forwards 60-100)
and ``FacT/fact_tk.py`` (``set_FacT`` 107-136, forwards 59-104). Its initialisation, kept here: U as
``nn.Linear(d, r)`` (U(±1/√d)); V zero, so ΔW = 0 at init; TT cores as ``nn.Linear`` weights (U(±1/√fan_in),
fan_in = r, 4r for fc2's); C and P Xavier-uniform on the official (r, r, r) and (r, 12L) storage (bounds √3 / r
and √(6 / (12L + r))). Defaults: ``set_FacT``'s r = 8 and s = 1, and its dropout of 0.1 on the r-wide core
output (before V); the per-task r and s are in ``FacT/configs/{tt,tk}/*.yaml``.

Conventions (PEFT has no FacT, so ``peft`` is the paper's equation): the same for ``fact_tt``. For ``fact_tk``
the official code builds fc1's and fc2's four cores by reshaping their (r, r, 4) stack of cores ``C ×₁ p_i`` to
(r, 4r) and cutting it into four r-wide blocks (``fact_tk.py`` lines 90-92), so each block's core interleaves
entries of all four, and it applies fc2's with C's U and V modes swapped (line 102); ``peft`` gives every
d × d block its own ``C ×₁ p_i``.

Choices: d is ``model.embed_dim`` (the official code hard-codes 768) and 12L the number of d × d blocks of the
targets; every wrapped Linear has its own dropout (the official one per attention and MLP module: the same, as
dropout has no state); ``qkv_slices=None`` treats the fused qkv as fc1 (one 3d-wide weight). timm's newer
Attention and Mlp feed the wrapped Linears what the official (timm 0.4.12) forwards feed them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from pvera_bench.adapters.layers import (
    QKV_NAMES,
    SlicedLinear,
    Target,
    TargetedConfig,
    check_dropout,
    dropout_layer,
    find_targets,
)
from pvera_bench.adapters.registry import register_adapter
from pvera_bench.config import Convention

OFFICIAL_TARGETS = ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")


@dataclass
class FactConfig(TargetedConfig):
    """Args:
    rank: r, the rank of every factor (r1 = r2 = r3, as in the paper).
    scale: s, the factor on every update.
    dropout: dropout on each r-wide core output, before V.
    """

    targets: list[str] = field(default_factory=lambda: list(OFFICIAL_TARGETS))
    qkv_slices: list[str] | None = field(default_factory=lambda: list(QKV_NAMES))
    rank: int = 8
    scale: float = 1.0
    dropout: float = 0.1

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.rank < 1:
            raise ValueError(f"adapter.rank must be >= 1, got {self.rank}")
        if not self.scale > 0:
            raise ValueError(f"adapter.scale must be positive, got {self.scale}")
        check_dropout(self.dropout)


def uniform(shape: tuple[int, ...], bound: float) -> torch.Tensor:
    return torch.empty(shape).uniform_(-bound, bound)


class SharedFactors(nn.Module):
    """The factors every adapted weight shares: ``fact_u`` = Uᵀ (r, d), ``fact_v`` = V (d, r), zero, and for
    Tucker ``fact_core`` = C (r, r, r), indexed (P's mode, U's, V's).

    ``n_weights`` is the number of d × d weights they serve (12L), which sets P's initial bound.
    """

    def __init__(self, dim: int, rank: int, n_weights: int, tucker: bool) -> None:
        super().__init__()
        self.n_weights = n_weights
        self.fact_u = nn.Parameter(uniform((rank, dim), dim**-0.5))
        self.fact_v = nn.Parameter(torch.zeros(dim, rank))
        if tucker:
            self.fact_core = nn.Parameter(uniform((rank, rank, rank), 3**0.5 / rank))


class FactLinear(SlicedLinear):
    """A frozen Linear cut into d × d blocks, each updated by ``s · V Σᵀ U`` with its core Σ (r_in × r_out).

    Each output slice (q, k, v of a fused qkv; the whole output otherwise) is one official weight of
    ``out_chunks × in_chunks`` blocks, one of the two being 1: fc1 is 4 × 1, fc2 1 × 4.
    """

    def __init__(
        self, base_layer: nn.Linear, slices: tuple[tuple[int, int], ...], factors: SharedFactors, config: FactConfig
    ) -> None:
        super().__init__(base_layer, slices)
        rank, dim = factors.fact_u.shape
        self.factors = factors
        self.rank, self.scale = rank, config.scale
        self.out_chunks, self.in_chunks = self.slice_width // dim, self.in_features // dim
        self.n_blocks = len(slices) * self.out_chunks * self.in_chunks
        self.fact_dropout = dropout_layer(config.dropout)

    def cores(self) -> torch.Tensor:
        """Every block's core in the paper's (r_in, r_out) layout, ``(n_slices, out_chunks, in_chunks, r, r)``."""
        raise NotImplementedError

    def adapt_output(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """``W x + s · V Σᵀ U x`` per d × d block of each adapted slice, ``out`` being ``W x``."""
        u = F.linear(x.unflatten(-1, (self.in_chunks, -1)), self.factors.fact_u)  # U x per input chunk: (..., K, r)
        z = torch.einsum("...ka,nokab->...nob", u, self.cores())  # summed over input chunks: (..., n, O, r)
        update = F.linear(self.fact_dropout(z), self.factors.fact_v).flatten(-2)  # (..., n, O·d)
        return self.add_to_slices(out, self.scale * update)

    def delta_weight(self) -> torch.Tensor:
        blocks = torch.einsum("db,nokab,ae->nodke", self.factors.fact_v, self.cores(), self.factors.fact_u)
        return self.scale * blocks.reshape(len(self.slices), self.slice_width, self.in_features)


class FactTTLinear(FactLinear):
    """Tensor-Train: a trainable core Σ_i per block, ``fact_sigma`` ``(n_blocks, r_in, r_out)``."""

    def __init__(
        self, base_layer: nn.Linear, slices: tuple[tuple[int, int], ...], factors: SharedFactors, config: FactConfig
    ) -> None:
        super().__init__(base_layer, slices, factors, config)
        bound = (self.rank * self.in_chunks) ** -0.5  # nn.Linear(K r, O r)'s default init, as the official cores
        self.fact_sigma = nn.Parameter(uniform((self.n_blocks, self.rank, self.rank), bound))

    def cores(self) -> torch.Tensor:
        return self.fact_sigma.view(len(self.slices), self.out_chunks, self.in_chunks, self.rank, self.rank)


class FactTKLinear(FactLinear):
    """Tucker: a trainable row p_i of P per block, ``fact_p`` ``(n_blocks, r)``; the cores come from the shared C."""

    def __init__(
        self, base_layer: nn.Linear, slices: tuple[tuple[int, int], ...], factors: SharedFactors, config: FactConfig
    ) -> None:
        super().__init__(base_layer, slices, factors, config)
        self.official = config.convention == Convention.official
        bound = (6 / (factors.n_weights + self.rank)) ** 0.5  # Xavier on the official P, (r, 12L)
        self.fact_p = nn.Parameter(uniform((self.n_blocks, self.rank), bound))

    def cores(self) -> torch.Tensor:
        n, per_weight, r = len(self.slices), self.out_chunks * self.in_chunks, self.rank
        sigma = torch.einsum("ip,pab->iab", self.fact_p, self.factors.fact_core).view(n, per_weight, r, r)
        if self.official:  # each weight's (r, r, blocks) stack as (r, blocks · r), cut into r-wide blocks
            sigma = sigma.permute(0, 2, 3, 1).reshape(n, r, per_weight, r).transpose(1, 2)
            if self.in_chunks > 1:  # fc2: the official code applies these cores transposed
                sigma = sigma.mT
        return sigma.reshape(n, self.out_chunks, self.in_chunks, r, r)


def weight_blocks(target: Target, dim: int) -> int:
    """The number of d × d blocks of ``target``, after checking that it cuts into them along one side."""
    width = target.slices[0][1] - target.slices[0][0]
    in_features = target.layer.in_features
    if width % dim or in_features % dim or (width > dim and in_features > dim):
        raise ValueError(
            f"FacT cuts each weight into {dim} × {dim} blocks along one side; adapter target {target.path!r} "
            f"has {width} × {in_features} weights: target attn.qkv, attn.proj, mlp.fc1 or mlp.fc2"
        )
    return len(target.slices) * (width // dim) * (in_features // dim)


def inject_fact(model: nn.Module, config: FactConfig, layer_cls: type[FactLinear]) -> None:
    """Wrap every target with ``layer_cls``, all sharing one set of factors."""
    targets = find_targets(model, config)
    dim = model.embed_dim
    n_weights = sum(weight_blocks(t, dim) for t in targets)
    tucker = layer_cls is FactTKLinear
    factors = SharedFactors(dim, config.rank, n_weights, tucker)
    for t in targets:
        setattr(t.parent, t.attr, layer_cls(t.layer, t.slices, factors, config))


def inject_tt(model: nn.Module, config: FactConfig) -> None:
    inject_fact(model, config, FactTTLinear)


def inject_tk(model: nn.Module, config: FactConfig) -> None:
    inject_fact(model, config, FactTKLinear)


register_adapter("fact_tt", FactConfig, inject_tt, prefix="fact_", mergeable=True)
register_adapter("fact_tk", FactConfig, inject_tk, prefix="fact_", mergeable=True)
