"""VeRA (Kopiczko et al., ICLR 2024): ``W x + Λ_b B Λ_d A x``.

A and B are frozen random matrices shared by every adapted layer, drawn once
(Kaiming-uniform) from ``projection_seed`` and sized to the largest adapted layer, which
slices them; the trainable vectors are ``d`` (init ``d_initial``) and ``b`` (init 0), so
the layer is unchanged at initialisation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from pvera_bench.adapters.base import (
    SlicedLinear,
    TargetedConfig,
    find_targets,
    kaiming_uniform,
    register_adapter,
)


@dataclass
class VeraConfig(TargetedConfig):
    """Args:
    r: rank of the shared random projections (may exceed the layer width, as in the paper).
    d_initial: initial value of every entry of ``d``.
    projection_seed: seed of the shared random matrices (recorded in every result).
    """

    r: int = 256
    d_initial: float = 0.1
    projection_seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.r < 1:
            raise ValueError(f"adapter.r must be >= 1, got {self.r}")


class SharedProjections(nn.Module):
    """The frozen random pair shared by all layers; regenerated from the seed, so not saved."""

    def __init__(self, in_features: int, out_features: int, r: int, latent_factor: int, seed: int) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.register_buffer("A", kaiming_uniform((latent_factor * r, in_features), generator), persistent=False)
        self.register_buffer("B", kaiming_uniform((out_features, r), generator), persistent=False)


class ProjectionLinear(SlicedLinear):
    """A frozen Linear with the shared random pair, sliced to its size: ``A`` ``(rows, in)``, ``B`` ``(width, r)``."""

    latent_factor = 1  # rows of A per rank unit

    def __init__(self, base_layer: nn.Linear, slices: tuple[tuple[int, int], ...], projections: SharedProjections):
        super().__init__(base_layer, slices)
        self.projections = projections

    @property
    def A(self) -> torch.Tensor:
        return self.projections.A[:, : self.in_features]

    @property
    def B(self) -> torch.Tensor:
        return self.projections.B[: self.slice_width]


def scaled_projection_weight(b: torch.Tensor, d: torch.Tensor, A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """``Λ_b B Λ_d A`` per slice, ``(n_slices, width, in)``, from ``b`` (``(n_slices, width)``) and ``d``."""
    return b.unsqueeze(-1) * (B @ (d.unsqueeze(-1) * A))


class VeraLinear(ProjectionLinear):
    """A frozen Linear plus ``b ⊙ B (d ⊙ A x)`` per output slice, A and B shared."""

    def __init__(
        self,
        base_layer: nn.Linear,
        slices: tuple[tuple[int, int], ...],
        projections: SharedProjections,
        r: int,
        d_initial: float,
    ) -> None:
        super().__init__(base_layer, slices, projections)
        self.vera_lambda_d = nn.Parameter(torch.full((len(slices), r), d_initial))
        self.vera_lambda_b = nn.Parameter(torch.zeros(len(slices), self.slice_width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d, b = self.vera_lambda_d, self.vera_lambda_b  # (n_slices, r), (n_slices, width)
        update = b * F.linear(d * F.linear(x, self.A).unsqueeze(-2), self.B)  # (..., n_slices, width)
        return self.add_to_slices(self.base_layer(x), update)

    def delta_weight(self) -> torch.Tensor:
        return scaled_projection_weight(self.vera_lambda_b, self.vera_lambda_d, self.A, self.B)


def inject_projection_adapter(model: nn.Module, config: VeraConfig, layer_cls: type[ProjectionLinear]) -> None:
    """Wrap every target with ``layer_cls``, all sharing one pair of random matrices."""
    targets = find_targets(model, config)
    projections = SharedProjections(
        in_features=max(t.layer.in_features for t in targets),
        out_features=max(stop - start for t in targets for start, stop in t.slices),
        r=config.r,
        latent_factor=layer_cls.latent_factor,
        seed=config.projection_seed,
    ).to(device=targets[0].layer.weight.device)
    for t in targets:
        setattr(t.parent, t.attr, layer_cls(t.layer, t.slices, projections, config.r, config.d_initial))


def inject(model: nn.Module, config: VeraConfig) -> None:
    inject_projection_adapter(model, config, VeraLinear)


register_adapter("vera", VeraConfig, inject, prefix="vera_", mergeable=True)
