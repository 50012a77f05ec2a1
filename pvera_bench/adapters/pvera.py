"""PVeRA (Fillioux et al., WACV 2026): a probabilistic VeRA.

The shared down-projection has 2r rows and ``d`` has 2r entries, so ``d ⊙ A x`` gives a
mean ``mu`` and a log-variance for an r-dimensional latent. Training draws
``z = mu + eps * exp(logvar / 2)`` for every token; :meth:`PveraLinear.kl` is the KL
divergence of that forward's latent to N(0, I) (mean over latent units, tokens, images and
the adapted slices), which the trainer adds to the loss with weight ``1 / dataset.beta``.
At test time the latent is ``mu`` (``mean``), one draw (``random``), ``mu + sigma``
(``fixed``), the mean of ``sample_count`` draws taken inside the layer (``mc_layer``, the
official code's N-sample mode), or a draw per pass when predictions are averaged over N
passes (``sampling=mc``). The update is ``α b ⊙ B z``. The conventions (α, init of ``d``,
one random pair per slice or one for all) are VeRA's, see :mod:`pvera_bench.adapters.vera`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from pvera_bench.adapters.registry import register_adapter
from pvera_bench.adapters.sampling import SAMPLE_MODES, StochasticLayer
from pvera_bench.adapters.vera import (
    ProjectionLinear,
    VeraConfig,
    down_project,
    inject_projection_adapter,
    scaled_projection_weight,
    up_project,
)


@dataclass
class PveraConfig(VeraConfig):
    pass


class PveraLinear(ProjectionLinear, StochasticLayer):
    """A frozen Linear plus ``α b ⊙ B z`` per output slice, ``z ~ N(mu, sigma²)`` with ``[mu; logvar] = d ⊙ A x``."""

    latent_factor = 2  # A has rows for mu and for logvar
    posterior: tuple[torch.Tensor, torch.Tensor] | None = None  # mu, logvar of the last training forward

    def create_vectors(self, config: PveraConfig) -> None:
        self.r = config.r
        self.pvera_lambda_d = nn.Parameter(self.initial_d(2 * config.r, config))
        self.pvera_lambda_b = nn.Parameter(torch.zeros(len(self.slices), self.slice_width))

    def adapt_output(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """``W x + alpha Λ_b B z`` on each adapted slice, ``z`` the latent of ``(mu, logvar) = Λ_d A x``."""
        d, b = self.pvera_lambda_d, self.pvera_lambda_b  # (n_slices, 2r), (n_slices, width)
        mu, logvar = (d * down_project(self.vera_dropout(x), self.A)).chunk(2, dim=-1)  # (..., n_slices, r) each
        self.posterior = (mu, logvar) if self.training else None
        update = self.alpha * b * up_project(self.latent(mu, logvar), self.B)  # (..., n_slices, width)
        return self.add_to_slices(out, update)

    def latent(self, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        """``z``: a fresh draw in training; at test time the one ``sample_mode`` names."""
        if not self.training and self.sample_mode == "mean":
            return mu
        if self.training or self.sample_mode == "random":
            eps = torch.randn_like(mu)
        elif self.sample_mode == "fixed":
            eps = torch.ones_like(mu)
        elif self.sample_mode == "mc_layer":  # the update is linear in z: averaging updates = averaging draws
            eps = torch.randn((self.sample_count, *mu.shape), device=mu.device, dtype=mu.dtype).mean(dim=0)
        else:
            raise ValueError(f"unknown sample_mode {self.sample_mode!r}; expected one of {SAMPLE_MODES}")
        return mu + eps * torch.exp(logvar / 2)

    def kl(self) -> torch.Tensor | None:
        """KL(N(mu, sigma²) || N(0, I)) of the last training forward, averaged over every latent unit."""
        if self.posterior is None:
            return None
        mu, logvar = self.posterior
        sigma = torch.exp(logvar / 2)
        return 0.5 * (mu**2 + sigma**2 - 1 - logvar).mean()

    def delta_weight(self) -> torch.Tensor:
        """The update of the mean latent (sample_mode ``mean``), the only linear one."""
        r = self.r
        A_mu = self.A[:, :r]
        return scaled_projection_weight(self.pvera_lambda_b, self.pvera_lambda_d[:, :r], A_mu, self.B, self.alpha)


def inject(model: nn.Module, config: PveraConfig) -> None:
    inject_projection_adapter(model, config, PveraLinear)


register_adapter("pvera", PveraConfig, inject, prefix="pvera_", mergeable=True, stochastic=True)
