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

from pvera_bench.adapters.base import SAMPLE_MODES, StochasticLayer, register_adapter
from pvera_bench.adapters.vera import VeraConfig, VeraLinear, inject_projection_adapter


@dataclass
class PveraConfig(VeraConfig):
    pass


class SampleLatent(torch.autograd.Function):
    """The latent ``z = mu + noise ⊙ exp(logvar / 2)``, ``[mu; logvar] = d ⊙ h``, and its mean KL, in one op.

    ``h`` is ``A x`` (``(tokens, 2r)``), ``d`` the ``(n_slices, 2r)`` scales and ``noise``
    ``(tokens, n_slices, r)``. The KL to N(0, I) is ``(mean(mu² + sigma² - logvar) - 1) / 2``,
    taken with reductions. ``mu`` and ``logvar / 2`` are separate contiguous tensors (``exp``
    on a strided half is several times slower), and the backward pass is written out: the
    reparametrisation and the KL share ``sigma``.
    """

    @staticmethod
    def forward(ctx, h, lambda_d, noise):
        r = noise.shape[-1]
        d_mu, d_half_logvar = lambda_d[:, :r], lambda_d[:, r:] * 0.5
        h_mu, h_logvar = h[..., :r].unsqueeze(-2), h[..., r:].unsqueeze(-2)
        mu = h_mu * d_mu  # (tokens, n_slices, r)
        half_logvar = h_logvar * d_half_logvar
        std = half_logvar.exp()
        noise_std = noise * std
        flat_mu, flat_std = mu.view(-1), std.view(-1)
        kl = 0.5 * (
            (torch.dot(flat_mu, flat_mu) + torch.dot(flat_std, flat_std) - 2 * half_logvar.sum()) / mu.numel() - 1
        )
        ctx.save_for_backward(h, d_mu, d_half_logvar, mu, std, noise_std)
        return mu + noise_std, kl

    @staticmethod
    def backward(ctx, grad_z, grad_kl):
        h, d_mu, d_half_logvar, mu, std, noise_std = ctx.saved_tensors
        r = mu.shape[-1]
        per_unit = grad_kl / mu.numel()
        grad_mu = torch.addcmul(grad_z, mu, per_unit)  # dz/dmu = 1, dKL/dmu = mu / count
        grad_half_logvar = grad_z * noise_std  # dz/d(logvar / 2) = noise ⊙ sigma
        grad_half_logvar.addcmul_(std.square().sub_(1), per_unit)  # dKL/d(logvar / 2) = (sigma² - 1) / count
        grad_h = grad_lambda_d = None
        if ctx.needs_input_grad[0]:
            grad_h = torch.empty_like(h, dtype=mu.dtype)
            torch.sum(grad_mu * d_mu, dim=-2, out=grad_h[..., :r])
            torch.sum(grad_half_logvar * d_half_logvar, dim=-2, out=grad_h[..., r:])
            grad_h = grad_h.to(h.dtype)
        if ctx.needs_input_grad[1]:
            h_mu, h_logvar = h[..., :r].unsqueeze(-2).to(mu.dtype), h[..., r:].unsqueeze(-2).to(mu.dtype)
            grad_lambda_d = torch.cat(
                [
                    torch.linalg.vecdot(grad_mu, h_mu, dim=0),
                    torch.linalg.vecdot(grad_half_logvar, h_logvar, dim=0) * 0.5,
                ],
                dim=-1,
            )
        return grad_h, grad_lambda_d, None


class PveraLinear(VeraLinear, StochasticLayer):
    prefix = "pvera_"
    latent_factor = 2

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.last_kl: torch.Tensor | None = None  # KL of the last training forward

    def kl(self) -> torch.Tensor | None:
        return self.last_kl

    def slice_updates(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        r = self.r
        if not self.training and self.sample_mode == "mean":
            h = F.linear(x, self.projection_a()[:r])  # the log-variance half is not needed
            return self.up(h.unsqueeze(-2) * self.lambda_d[:, :r])
        if self.sample_mode not in SAMPLE_MODES:
            raise ValueError(f"unknown sample_mode {self.sample_mode!r}; expected one of {SAMPLE_MODES}")
        h = F.linear(x, self.projection_a())  # [mu; log-variance] of every slice come from this one product
        shape = (*h.shape[:-1], len(self.slices), r)
        dtype = torch.promote_types(h.dtype, self.lambda_d.dtype)
        if self.training or self.sample_mode == "random":
            noise = torch.randn(shape, dtype=dtype, device=h.device)
        else:  # fixed: mu + sigma
            noise = torch.ones(shape, dtype=dtype, device=h.device)
        z, kl = SampleLatent.apply(h, self.lambda_d, noise)
        if self.training:
            self.last_kl = kl
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


register_adapter("pvera", PveraConfig, inject, prefix=PveraLinear.prefix, mergeable=True, stochastic=True)
