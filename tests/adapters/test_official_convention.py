"""``convention=official`` against an independent rewrite of the official PVeRA code's layer equations.

The ``official_*`` functions below are written in plain torch from the notes in
/work/shared/reference/pvera.md (§1.2 PVeRA forward and KL, §1.4 initialisation, §5.2 table for VeRA, LoRA,
DoRA, AdaptFormer, Bottleneck and IA3, §8 for the weight mapping), in the official storage layout
(A ``(in, r)``, B ``(r, out)``, ``x @ A @ B``); no code of the official repository is copied. Each adapter
built with the default convention gets its weights mapped into that layout (official ``A_t = layer.A[t].T``,
``B_t = layer.B[t].T``, ``d_t = lambda_d[t]``, ``b_t = lambda_b[t]``) and must give the same outputs; then
the initialisation statistics of §1.4 / §5.2 are checked.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from helpers import perturb, tiny_vit
from torch import Tensor, nn

from pvera_bench.adapters import (
    ADAPTERS,
    adapter_config,
    adapter_loss,
    adapter_parameters,
    apply_adapter,
    sample_latents,
)

DIM, DEPTH, R = 48, 2, 8  # helpers.tiny_vit: width 48, 2 blocks; the rank used here


# ---- the official equations (reference/pvera.md), official layout: x (..., in), A (in, r), B (r, out) ----
def official_vera(x: Tensor, A: Tensor, B: Tensor, d: Tensor, b: Tensor, alpha: float = 16.0) -> Tensor:
    """§5.2 VeRA: Δ_t = 16 · ((x A_t) ⊙ d_t) B_t ⊙ b_t."""
    return alpha * (((x @ A) * d) @ B) * b


def official_pvera(
    x: Tensor, A: Tensor, B: Tensor, d: Tensor, b: Tensor, eps: Tensor | None, alpha: float = 16.0
) -> tuple[Tensor, Tensor]:
    """§1.2: h = (x A) ⊙ d = [mu; logvar]; z = mu (eval) or mu + eps ⊙ exp(logvar / 2); Δ = α (z B) ⊙ b; and KL_t."""
    mu, logvar = ((x @ A) * d).chunk(2, dim=-1)
    z = mu if eps is None else mu + eps * torch.exp(0.5 * logvar)
    kl = -0.5 * torch.mean(1 + logvar - mu**2 - torch.exp(logvar))
    return alpha * (z @ B) * b, kl


def official_lora(x: Tensor, A: Tensor, B: Tensor, alpha: float = 16.0) -> Tensor:
    """§5.2 LoRA: (α / r) · x A_t B_t."""
    return x @ A @ B * (alpha / A.shape[1])


def official_qkv(base: nn.Linear, x: Tensor, delta_q: Tensor, delta_v: Tensor) -> Tensor:
    """W x + bias + [Δ_q, 0, Δ_v]: k is untouched."""
    return base(x) + torch.cat([delta_q, torch.zeros_like(delta_q), delta_v], dim=-1)


def official_dora_rows(base: nn.Linear, x: Tensor, As: list[Tensor], Bs: list[Tensor], ms: list[Tensor]) -> Tensor:
    """§5.2 DoRA, magnitude frozen and no α/r (E2a, E2b), but the norm per output row and ΔW = (A B)ᵀ:
    the official transposed ΔW (E2c) and per-input-column norm (E2e) are NOT reproduced by pvera_bench."""
    W_q, W_k, W_v = base.weight.chunk(3)  # k: m_k ⊙ W_k / ||W_k|| = W_k
    merged = [W + (A @ B).T for W, A, B in zip((W_q, W_v), As, Bs, strict=True)]
    W_q, W_v = (m.unsqueeze(-1) * W / W.norm(dim=1, keepdim=True) for m, W in zip(ms, merged, strict=True))
    return F.linear(x, torch.cat([W_q, W_k, W_v]), base.bias)


def official_adaptformer_block(block: nn.Module, x: Tensor, down: nn.Linear, up: nn.Linear, s: Tensor) -> Tensor:
    """§5.2 AdaptFormer: x + ls2(MLP(LN2(x)) + s · up(ReLU(down(x)))), the adapter on the pre-LN stream."""
    x = x + block.ls1(block.attn(block.norm1(x)))
    return x + block.ls2(block.mlp(block.norm2(x)) + s * up(torch.relu(down(x))))


def official_bottleneck_block(block: nn.Module, x: Tensor, adapters: list[tuple[nn.Linear, nn.Linear]]) -> Tensor:
    """§5.2 Bottleneck: BN(y) = y + up(ReLU(down(y))) behind attn and behind mlp, before LayerScale and the residual."""
    (d1, u1), (d2, u2) = adapters
    y = block.attn(block.norm1(x))
    x = x + block.ls1(y + u1(torch.relu(d1(y))))
    y = block.mlp(block.norm2(x))
    return x + block.ls2(y + u2(torch.relu(d2(y))))


def official_ia3(
    qkv: nn.Linear, mlp: nn.Module, x: Tensor, l_k: Tensor, l_v: Tensor, l_ff: Tensor
) -> tuple[Tensor, Tensor]:
    """§5.2 IA3: k ← l_k ⊙ k, v ← l_v ⊙ v (after the bias); hidden ← l_ff ⊙ GELU(fc1 x)."""
    q, k, v = qkv(x).chunk(3, dim=-1)
    return torch.cat([q, l_k * k, l_v * v], dim=-1), mlp.fc2(l_ff * mlp.act(mlp.fc1(x)))


def official(model: nn.Module, name: str, **hparams) -> nn.Module:
    """``model`` with adapter ``name`` under ``convention=official`` (also the default)."""
    model = apply_adapter(model, name, convention="official", **hparams)
    assert adapter_config(model) == ADAPTERS[name].config_cls(name=name, **hparams)  # official is the default
    return model


# ---- same outputs given the same weights ----
def tokens(seed: int = 0) -> Tensor:
    return torch.randn(2, 5, DIM, generator=torch.Generator().manual_seed(seed))


def official_factors(layer: nn.Module, name: str, t: int) -> tuple[Tensor, ...]:
    """Our weights of slice t (0: q, 1: v) in the official layout: A_t (in, rows), B_t (r, out), d_t, b_t."""
    return layer.A[t].T, layer.B[t].T, getattr(layer, f"{name}_lambda_d")[t], getattr(layer, f"{name}_lambda_b")[t]


def test_vera_and_pvera_eval_outputs_match_the_official_equations():
    for name in ("vera", "pvera"):
        model = official(tiny_vit(), name, r=R)
        perturb(model)
        for block in model.eval().blocks:
            layer, x = block.attn.qkv, tokens()
            with torch.no_grad():
                if name == "vera":
                    q, v = (official_vera(x, *official_factors(layer, name, t)) for t in (0, 1))
                else:
                    q, v = (official_pvera(x, *official_factors(layer, name, t), eps=None)[0] for t in (0, 1))
                torch.testing.assert_close(layer(x), official_qkv(layer.base_layer, x, q, v))


def test_pvera_training_forward_and_kl_match_the_official_equations():
    model = official(tiny_vit(), "pvera", r=R).train()
    perturb(model)
    inputs = []
    hooks = [b.attn.qkv.register_forward_hook(lambda m, args, out: inputs.append(args[0])) for b in model.blocks]
    torch.manual_seed(3)
    model(torch.randn(2, 3, 32, 32))
    total = adapter_loss(model)
    for hook in hooks:
        hook.remove()
    expected_total = 0.0
    for block, x in zip(model.blocks, inputs, strict=True):
        layer = block.attn.qkv
        torch.manual_seed(11)
        out = layer(x)
        torch.manual_seed(11)
        eps = torch.randn(*x.shape[:-1], 2, R)  # one draw per token, target and latent unit
        (q, kl_q), (v, kl_v) = (official_pvera(x, *official_factors(layer, "pvera", t), eps[..., t, :]) for t in (0, 1))
        torch.testing.assert_close(out, official_qkv(layer.base_layer, x, q, v))
        expected_total = expected_total + (kl_q + kl_v) / 2  # KL_block = (KL_q + KL_v) / 2, summed over blocks
    torch.testing.assert_close(total, expected_total, rtol=1e-5, atol=0)


def test_lora_and_dora_match_the_official_equations():
    model = official(tiny_vit(), "lora", r=R)
    perturb(model)
    layer, x = model.blocks[1].attn.qkv, tokens()
    A, B = [a.T for a in layer.lora_A], [b.T for b in layer.lora_B]  # (in, r), (r, out)
    with torch.no_grad():
        expected = official_qkv(layer.base_layer, x, official_lora(x, A[0], B[0]), official_lora(x, A[1], B[1]))
        torch.testing.assert_close(layer(x), expected)
    model = official(tiny_vit(), "dora", r=R, frozen_magnitude=True, unscaled=True)
    perturb(model)
    layer = model.blocks[1].attn.qkv
    layer.lora_magnitude.mul_(torch.rand(layer.lora_magnitude.shape) + 0.5)  # a frozen m other than ||W||
    A, B = [a.T for a in layer.lora_A], [b.T for b in layer.lora_B]
    with torch.no_grad():
        torch.testing.assert_close(layer(x), official_dora_rows(layer.base_layer, x, A, B, list(layer.lora_magnitude)))


def test_adaptformer_and_bottleneck_blocks_match_the_official_equations():
    backbone = tiny_vit(init_values=0.5)  # with LayerScale, which scales the adapter's sum too
    x = tokens()
    model = official(copy.deepcopy(backbone), "adaptformer", hidden_dim=8).eval()
    perturb(model)
    for ours, original in zip(model.blocks, backbone.blocks, strict=True):
        a = ours.mlp
        assert isinstance(ours.norm2, nn.Identity)  # norm2 moved inside the wrapped MLP
        with torch.no_grad():
            expected = official_adaptformer_block(
                original, x, a.adaptformer_down, a.adaptformer_up, a.adaptformer_scale
            )
            torch.testing.assert_close(ours(x), expected)
    model = official(copy.deepcopy(backbone), "bottleneck", hidden_dim=8).eval()
    for ours, original in zip(model.blocks, backbone.blocks, strict=True):
        adapters = [(m.bottleneck_down, m.bottleneck_up) for m in (ours.attn, ours.mlp)]
        with torch.no_grad():
            torch.testing.assert_close(ours(x), official_bottleneck_block(original, x, adapters))


def test_ia3_matches_the_official_equations():
    backbone = tiny_vit()
    model = official(copy.deepcopy(backbone), "ia3").eval()
    perturb(model)
    x = tokens()
    for ours, original in zip(model.blocks, backbone.blocks, strict=True):
        l_k, l_v = ours.attn.qkv.ia3_l.view(2, DIM)
        with torch.no_grad():
            qkv, mlp = official_ia3(original.attn.qkv, original.mlp, x, l_k, l_v, ours.mlp.fc2.ia3_l)
            torch.testing.assert_close(ours.attn.qkv(x), qkv)
            torch.testing.assert_close(ours.mlp(x), mlp)


# ---- initialisation statistics (§1.4, §5.2) ----
@pytest.mark.parametrize("name, rows", [("vera", R), ("pvera", 2 * R)])
def test_vera_and_pvera_initialisation(name, rows):
    model = official(tiny_vit(), name, r=R)
    layers = [b.attn.qkv for b in model.blocks]
    A, B = layers[0].projections.A, layers[0].projections.B
    assert all(layer.alpha == 16.0 and layer.projections is layers[0].projections for layer in layers)  # shared
    assert A.shape == (2, rows, DIM) and B.shape == (2, DIM, R)  # a pair for q and one for v
    assert not torch.equal(A[0], A[1]) and not torch.equal(B[0], B[1])
    for tensor, fan_in in ((A, rows), (B, DIM)):  # Kaiming-uniform on the stored (in, rows) and (r, out)
        bound = (6.0 / fan_in) ** 0.5
        assert 0.9 * bound < tensor.abs().max() <= bound
    ds = torch.stack([getattr(layer, f"{name}_lambda_d") for layer in layers])  # (blocks, slices, rows)
    assert ds.shape == (DEPTH, 2, rows)
    assert torch.equal(ds, ds[..., :1].expand_as(ds))  # one value per vector
    assert ds.min() >= 1e-5 and ds.max() <= 1 and len(ds[..., 0].unique()) == 2 * DEPTH  # a draw per vector
    assert all(torch.all(getattr(layer, f"{name}_lambda_b") == 0) for layer in layers)
    assert sum(p.numel() for p in adapter_parameters(model).values()) == DEPTH * 2 * (rows + DIM)
    A_again = []
    for seed in (1, 2, 1):  # drawn from torch's global RNG, i.e. from the run seed
        model = tiny_vit()
        torch.manual_seed(seed)
        A_again.append(official(model, name, r=R).blocks[0].attn.qkv.A)
    assert torch.equal(A_again[0], A_again[2]) and not torch.equal(A_again[0], A_again[1])


def test_lora_and_dora_initialisation():
    model = official(tiny_vit(), "lora", r=R)
    lora_A = torch.stack([b.attn.qkv.lora_A for b in model.blocks])  # (blocks, slices, r, in)
    assert abs(lora_A.std().item() / R**-0.5 - 1) < 0.1  # A ~ N(0, 1/r)
    assert not torch.equal(lora_A[0], lora_A[1])  # blocks differ unless same_a_every_block
    assert all(torch.all(b.attn.qkv.lora_B == 0) and b.attn.qkv.scaling == 16 / R for b in model.blocks)
    model = official(tiny_vit(), "lora", r=R, same_a_every_block=True)
    lora_A = torch.stack([b.attn.qkv.lora_A for b in model.blocks])
    assert torch.equal(lora_A[0], lora_A[1]) and not torch.equal(lora_A[0, 0], lora_A[0, 1])  # E9: q != v
    model = official(tiny_vit(), "dora", r=R, frozen_magnitude=True, unscaled=True)
    layer = model.blocks[0].attn.qkv
    assert layer.scaling == 1.0 and "lora_magnitude" in dict(layer.named_buffers())
    torch.testing.assert_close(layer.lora_magnitude, layer.base_weights().norm(dim=-1))
    assert sum(p.numel() for p in adapter_parameters(model).values()) == DEPTH * 2 * R * 2 * DIM


def test_adaptformer_and_bottleneck_initialisation():
    hidden = 8
    model = official(tiny_vit(), "adaptformer", hidden_dim=hidden)
    adapter = model.blocks[0].mlp
    assert isinstance(adapter.adaptformer_scale, nn.Parameter) and adapter.adaptformer_scale.item() == 1.0
    assert adapter.adaptformer_up.weight.abs().min() > 0  # nn.Linear's init, not zero: active from step 0
    assert sum(p.numel() for p in adapter_parameters(model).values()) == DEPTH * (2 * DIM * hidden + hidden + DIM + 1)
    model = official(tiny_vit(), "bottleneck", hidden_dim=hidden)
    for layer in (model.blocks[0].attn.bottleneck_down, model.blocks[0].mlp.bottleneck_up):
        bound = layer.in_features**-0.5  # nn.Linear: kaiming-uniform a=sqrt(5) and its bias, both ±1/sqrt(fan_in)
        assert 0.9 * bound < layer.weight.abs().max() <= bound and 0 < layer.bias.abs().max() <= bound


def test_pvera_mc_layer_averages_draws_inside_the_layer():
    model = official(tiny_vit(), "pvera", r=R).eval()
    perturb(model)
    layer = model.blocks[0].attn.qkv

    def draws(mode: str, count: int = 1, n: int = 2000) -> Tensor:
        """``n`` outputs for the same two images of 5 tokens, ``(n, 2, 5, 3 * DIM)``: the batch repeats them."""
        x = tokens().expand(n, -1, -1, -1).reshape(2 * n, 5, DIM)
        with torch.no_grad(), sample_latents(layer, mode, count):
            return layer(x).view(n, 2, 5, -1)

    mean = draws("mean", n=1)[0]
    random, single, averaged = draws("random"), draws("mc_layer", 1), draws("mc_layer", 16)
    var_random = random.var(dim=0)
    assert var_random.mean() > 1e-4  # the sampling does move the output
    assert abs(single.var(dim=0).mean() / var_random.mean() - 1) < 0.1  # count=1: the random mode's law
    assert abs(averaged.var(dim=0).mean() / var_random.mean() * 16 - 1) < 0.1  # variance / count
    torch.testing.assert_close(averaged.mean(dim=0), mean, rtol=0, atol=0.1 * var_random.max().sqrt().item())
    many = draws("mc_layer", 2000, n=4)  # a large count tends to the mean mode
    assert (many - mean).abs().max() < 0.1 * (random[:4] - mean).abs().max()
