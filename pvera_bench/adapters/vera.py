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
    SlicedUpdate,
    TargetedConfig,
    find_targets,
    kaiming_uniform,
    register_adapter,
    scale_gradient,
    slice_view,
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


class AddScaledProjection(torch.autograd.Function):
    """``out[..., slice_i] += b[i] ⊙ (B z[..., i, :])`` for every slice, in place, in one op.

    Like :class:`~pvera_bench.adapters.base.AddIntoSlices` with the update ``B z``, but the
    backward pass folds ``b`` into the small ``B`` (``(n_slices, width, r)``) instead of
    multiplying the token-sized gradient by it: one pass over ``(tokens, n_slices, width)``
    fewer per layer. Under bf16 autocast the products run in the dtype autocast gives ``B z``.
    """

    @staticmethod
    def forward(ctx, out, slices, latent, projection, scale):
        update = F.linear(latent, projection)  # (tokens, n_slices, width)
        slice_view(out, slices).addcmul_(update, scale.to(update.dtype))
        ctx.mark_dirty(out)
        ctx.slices = slices
        ctx.latent_dtype = latent.dtype
        ctx.save_for_backward(update, projection, scale)
        return out

    @staticmethod
    def backward(ctx, grad):
        update, projection, scale = ctx.saved_tensors
        grad_view = slice_view(grad, ctx.slices)
        grad_latent = grad_scale = None
        if ctx.needs_input_grad[2]:
            scaled = (scale.unsqueeze(-1) * projection).to(update.dtype)  # (n_slices, width, r)
            per_slice = torch.bmm(grad_view.transpose(0, 1), scaled)  # (n_slices, tokens, r)
            grad_latent = per_slice.transpose(0, 1).to(ctx.latent_dtype)
        if ctx.needs_input_grad[4]:
            grad_scale = scale_gradient(grad_view, update, scale)
        return grad, None, grad_latent, None, grad_scale


class VeraLinear(SlicedUpdate):
    """A frozen Linear plus ``b ⊙ B (d ⊙ A x)`` per output slice, A and B shared."""

    prefix = "vera_"
    latent_factor = 1  # rows of A (and entries of d) per rank unit
    add_into_slices = AddScaledProjection

    def __init__(
        self,
        base_layer: nn.Linear,
        slices: tuple[tuple[int, int], ...],
        projections: SharedProjections,
        r: int,
        d_initial: float,
    ) -> None:
        super().__init__(base_layer, slices)
        n = len(slices)
        self.r = r
        setattr(self, f"{self.prefix}projections", projections)
        self.register_parameter(
            f"{self.prefix}lambda_d", nn.Parameter(torch.full((n, self.latent_factor * r), d_initial))
        )
        self.register_parameter(f"{self.prefix}lambda_b", nn.Parameter(torch.zeros(n, self.slice_width)))

    @property
    def lambda_d(self) -> nn.Parameter:
        return getattr(self, f"{self.prefix}lambda_d")

    @property
    def lambda_b(self) -> nn.Parameter:
        return getattr(self, f"{self.prefix}lambda_b")

    def projection_a(self) -> torch.Tensor:
        return getattr(self, f"{self.prefix}projections").A[:, : self.in_features]

    def projection_b(self) -> torch.Tensor:
        return getattr(self, f"{self.prefix}projections").B[: self.slice_width]

    def slice_updates(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        h = F.linear(x, self.projection_a())  # A x once, shared by every slice
        return self.up(h.unsqueeze(-2) * self.lambda_d)

    def up(self, latent: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """What :class:`AddScaledProjection` adds ``b ⊙ B z`` from: the latents ``(tokens, n_slices, r)``, B, b."""
        return latent, self.projection_b(), self.lambda_b

    def delta_weight(self) -> torch.Tensor:
        return self.lambda_b.unsqueeze(-1) * torch.matmul(
            self.projection_b(), self.lambda_d.unsqueeze(-1) * self.projection_a()
        )


def inject_projection_adapter(model: nn.Module, config: VeraConfig, layer_cls: type[VeraLinear]) -> None:
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


register_adapter("vera", VeraConfig, inject, prefix=VeraLinear.prefix, mergeable=True)
