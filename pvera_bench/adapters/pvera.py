"""PVeRA (Fillioux et al., WACV 2026): a probabilistic VeRA.

The shared down-projection has 2r rows and ``d`` has 2r entries, so ``d ⊙ A x`` gives a
mean ``mu`` and a log-variance for an r-dimensional latent. Training draws
``z = mu + eps * exp(logvar / 2)`` for every token and records the KL divergence to
N(0, I) (mean over latent units, tokens and images, and over the adapted slices), which
the trainer adds to the loss with weight ``1 / dataset.beta``. At test time the latent is
``mu`` (``mean``), one draw (``random``), ``mu + sigma`` (``fixed``), or a draw per pass
when predictions are averaged over N passes (``mc``). The update is ``b ⊙ B z``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from pvera_bench.adapters.base import register_adapter
from pvera_bench.adapters.vera import VeraConfig, VeraLinear, inject_projection_adapter

LAYER_SAMPLE_MODES = ("mean", "random", "fixed")


@dataclass
class PveraConfig(VeraConfig):
    pass


class PveraLinear(VeraLinear):
    prefix = "pvera_"
    latent_factor = 2

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.sample_mode = "mean"  # eval-time latent; training always samples
        self.regularization: torch.Tensor | None = None  # KL of the last training forward

    def slice_updates(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        r = self.r
        if not self.training and self.sample_mode == "mean":
            h = F.linear(x, self.projection_a()[:r])  # the log-variance half is not needed
            return self.up(h.unsqueeze(-2) * self.lambda_d[:, :r])
        if self.sample_mode not in LAYER_SAMPLE_MODES:
            raise ValueError(f"unknown sample_mode {self.sample_mode!r}; expected one of {LAYER_SAMPLE_MODES}")
        h = F.linear(x, self.projection_a())  # [mu; log-variance] of every slice come from this one product
        mu, logvar = (h.unsqueeze(-2) * self.lambda_d).split(r, dim=-1)  # (..., n_slices, r) each
        std = torch.exp(0.5 * logvar)
        if self.training or self.sample_mode == "random":
            z = torch.addcmul(mu, torch.randn_like(std), std)
        else:
            z = mu + std
        if self.training:  # KL(N(mu, sigma^2) || N(0, 1)) = (mu^2 + sigma^2 - log sigma^2 - 1) / 2, averaged
            self.regularization = 0.5 * (torch.mean(mu.square() + std.square() - logvar) - 1)
        return self.up(z)

    def delta_weight(self) -> torch.Tensor:
        """The update of the mean latent (sample_mode ``mean``), the only linear one."""
        r = self.r
        a_mu = self.projection_a()[:r]
        return self.lambda_b.unsqueeze(-1) * torch.matmul(
            self.projection_b(), self.lambda_d[:, :r].unsqueeze(-1) * a_mu
        )


def inject(model, config: PveraConfig) -> None:
    inject_projection_adapter(model, config, PveraLinear)


register_adapter("pvera", PveraConfig, inject, prefix=PveraLinear.prefix)
