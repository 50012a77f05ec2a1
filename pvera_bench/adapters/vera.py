"""VeRA (Kopiczko et al., ICLR 2024): ``W x + α Λ_b B Λ_d A x``.

A and B are frozen random matrices shared by every adapted layer, sized to the largest
adapted layer, which slices them; the trainable vectors are ``d`` and ``b`` (init 0), so
the layer is unchanged at initialisation. The two conventions differ in four ways:

- ``official`` (leofillioux/pvera, ``models/adapters/vera.py`` lines 16-17
  and 65-66; the projections in ``models/models.py`` lines 85-90):
  a separate (A, B) pair for each adapted slice (q and v), drawn from torch's global RNG, i.e.
  from the run seed; Kaiming-uniform bounds computed on the official storage, A as ``(in, r)``
  and B as ``(r, out)`` (bounds ``sqrt(6 / r)`` and ``sqrt(6 / out)``); each ``d`` vector filled
  with one draw of U(1e-5, 1); the update multiplied by ``alpha = 16``.
- ``peft`` (PEFT's ``VeraModel``): one pair for every slice, drawn from ``projection_seed``
  (default 0) with bounds ``sqrt(6 / in)`` and ``sqrt(6 / r)``; ``d`` filled with
  ``d_initial = 0.1``; ``alpha = 1``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from pvera_bench.adapters.layers import InputDropoutConfig, SlicedLinear, find_targets, input_dropout, kaiming_uniform
from pvera_bench.adapters.registry import register_adapter
from pvera_bench.config import Convention

OFFICIAL_D_RANGE = (1e-5, 1.0)  # each d vector starts at one draw of U(1e-5, 1) in the official code


@dataclass
class VeraConfig(InputDropoutConfig):
    """Args:
    r: rank of the shared random projections (may exceed the layer width, as in the paper).
    alpha: factor on the update; None: 16 (``official``) or 1 (``peft``).
    d_initial: value of every entry of ``d`` at init; None: one U(1e-5, 1) draw per vector
        (``official``) or 0.1 (``peft``).
    projection_seed: seed of the random matrices; None: torch's global RNG, which the harness seeds with
        the run seed (``official``), or 0 (``peft``).
    """

    r: int = 256
    alpha: float | None = None
    d_initial: float | None = None
    projection_seed: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.r < 1:
            raise ValueError(f"adapter.r must be >= 1, got {self.r}")
        peft = self.convention == Convention.peft
        if self.alpha is None:
            self.alpha = 1.0 if peft else 16.0
        if self.d_initial is None and peft:
            self.d_initial = 0.1
        if self.projection_seed is None and peft:
            self.projection_seed = 0


class SharedProjections(nn.Module):
    """The frozen random pairs shared by all layers, ``A`` ``(pairs, rows, in)`` and ``B`` ``(pairs, out, r)``.

    Regenerated from the seed (or the run seed), so not saved in checkpoints.
    """

    def __init__(self, in_features: int, out_features: int, rows: int, r: int, pairs: int, config: VeraConfig) -> None:
        super().__init__()
        generator = None if config.projection_seed is None else torch.Generator().manual_seed(config.projection_seed)
        if config.convention == Convention.official:  # drawn on the official (in, rows) / (r, out) storage
            A = kaiming_uniform((pairs, in_features, rows), generator).mT
            B = kaiming_uniform((pairs, r, out_features), generator).mT
        else:
            A = kaiming_uniform((pairs, rows, in_features), generator)
            B = kaiming_uniform((pairs, out_features, r), generator)
        self.register_buffer("A", A.contiguous(), persistent=False)
        self.register_buffer("B", B.contiguous(), persistent=False)


class ProjectionLinear(SlicedLinear):
    """A frozen Linear with the shared random pairs, sliced to its size: ``A`` ``(pairs, rows, in)``, ``B``
    ``(pairs, width, r)``; slice i uses pair i (or the one pair)."""

    latent_factor = 1  # rows of A per rank unit

    def __init__(
        self,
        base_layer: nn.Linear,
        slices: tuple[tuple[int, int], ...],
        projections: SharedProjections,
        config: VeraConfig,
    ) -> None:
        super().__init__(base_layer, slices)
        self.projections = projections
        self.alpha = config.alpha
        self.vera_dropout = input_dropout(config)
        self.create_vectors(config)

    def create_vectors(self, config: VeraConfig) -> None:
        """Create the layer's trainable vectors ``d`` and ``b``."""
        raise NotImplementedError

    @property
    def A(self) -> torch.Tensor:
        return self.projections.A[: len(self.slices), :, : self.in_features]

    @property
    def B(self) -> torch.Tensor:
        return self.projections.B[: len(self.slices), : self.slice_width]

    def initial_d(self, width: int, config: VeraConfig) -> torch.Tensor:
        """``d`` of every slice at init, ``(n_slices, width)``: ``d_initial``, or one U(1e-5, 1) draw per slice."""
        if config.d_initial is not None:
            return torch.full((len(self.slices), width), config.d_initial)
        low, high = OFFICIAL_D_RANGE
        return torch.empty(len(self.slices), 1).uniform_(low, high).expand(-1, width).clone()


def down_project(x: torch.Tensor, A: torch.Tensor) -> torch.Tensor:
    """``A_p x`` for every pair p: ``(..., in)`` -> ``(..., pairs, rows)``."""
    return torch.einsum("...i,pki->...pk", x, A)


def up_project(z: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """``B_s z_s`` for every slice s: ``(..., n_slices, r)`` -> ``(..., n_slices, width)`` (one pair serves all)."""
    return torch.einsum("...sr,swr->...sw", z, B.expand(z.shape[-2], -1, -1))


def scaled_projection_weight(
    b: torch.Tensor, d: torch.Tensor, A: torch.Tensor, B: torch.Tensor, alpha: float
) -> torch.Tensor:
    """``α Λ_b B Λ_d A`` per slice, ``(n_slices, width, in)``, from ``b`` ``(n_slices, width)`` and ``d``."""
    return alpha * b.unsqueeze(-1) * (B @ (d.unsqueeze(-1) * A))


class VeraLinear(ProjectionLinear):
    """A frozen Linear plus ``α b ⊙ B (d ⊙ A dropout(x))`` per output slice, A and B shared by all layers."""

    def create_vectors(self, config: VeraConfig) -> None:
        self.vera_lambda_d = nn.Parameter(self.initial_d(config.r, config))
        self.vera_lambda_b = nn.Parameter(torch.zeros(len(self.slices), self.slice_width))

    def adapt_output(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """``W x + alpha Λ_b B Λ_d A x`` on each adapted slice, ``out`` being ``W x``."""
        d, b = self.vera_lambda_d, self.vera_lambda_b  # (n_slices, r), (n_slices, width)
        z = d * down_project(self.vera_dropout(x), self.A)  # (..., n_slices, r)
        update = self.alpha * b * up_project(z, self.B)  # (..., n_slices, width)
        return self.add_to_slices(out, update)

    def delta_weight(self) -> torch.Tensor:
        return scaled_projection_weight(self.vera_lambda_b, self.vera_lambda_d, self.A, self.B, self.alpha)


def inject_projection_adapter(model: nn.Module, config: VeraConfig, layer_cls: type[ProjectionLinear]) -> None:
    """Wrap every target with ``layer_cls``, all sharing the random pairs (one per slice under ``official``)."""
    targets = find_targets(model, config)
    pairs = max(len(t.slices) for t in targets) if config.convention == Convention.official else 1
    projections = SharedProjections(
        in_features=max(t.layer.in_features for t in targets),
        out_features=max(stop - start for t in targets for start, stop in t.slices),
        rows=layer_cls.latent_factor * config.r,
        r=config.r,
        pairs=pairs,
        config=config,
    )
    for t in targets:
        setattr(t.parent, t.attr, layer_cls(t.layer, t.slices, projections, config))


def inject(model: nn.Module, config: VeraConfig) -> None:
    inject_projection_adapter(model, config, VeraLinear)


register_adapter("vera", VeraConfig, inject, prefix="vera_", mergeable=True)
