"""FacT-TT and FacT-TK against an independent rewrite of the official code and of the paper's equations.

The ``official_*`` functions below are written in plain torch from JieShibo/PETL-ViT ``FacT/fact_tt.py``
(``fact_forward_attn`` / ``fact_forward_mlp``, lines 60-100) and ``FacT/fact_tk.py`` (lines 59-104), in the
official layout and names: ``FacTu`` (r, d) and ``FacTv`` (d, r), the weights of the shared ``nn.Linear`` U and V;
per block ``q_FacTs`` ... ``proj_FacTs`` (r, r), ``fc1_FacTs`` (4r, r), ``fc2_FacTs`` (r, 4r) for TT; the shared
``FacTc`` (r, r, r) and ``FacTp`` (r, 12L) for TK, with attention ``idx = 12 j`` and MLP ``idx = 12 j + 4`` in
block j. They replace the attention and MLP forwards of a bare tiny ViT (as the official code rebinds them), are
fed our factors mapped into that layout, and must give our logits and our gradients of every factor.
"""

from __future__ import annotations

import copy
import functools

import pytest
import torch
from helpers import perturb, tiny_vit
from torch import Tensor, nn

from pvera_bench.adapters import adapter_parameters, apply_adapter, merge_adapter

DIM, DEPTH, R, S = 48, 2, 4, 10.0  # helpers.tiny_vit: width 48, 2 blocks; a rank and a scale of the configs
NAMES = ("fact_tt", "fact_tk")
TARGETS = ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")


def images(seed: int = 0) -> Tensor:
    return torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def linear(x: Tensor, weight: Tensor) -> Tensor:
    """A bias-free ``nn.Linear`` with this weight (out, in)."""
    return x @ weight.T


# ---- the official forwards (timm 0.4.12's Attention and Mlp with the FacT terms added) ----
def official_attention(attn: nn.Module, qkv_delta, proj_delta, x: Tensor, attn_mask=None, is_causal=False) -> Tensor:
    assert attn_mask is None and not is_causal  # timm's Block passes them; the official Attention has neither
    B, N, C = x.shape
    qkv = attn.qkv(x) + qkv_delta(x)
    q, k, v = qkv.reshape(B, N, 3, attn.num_heads, C // attn.num_heads).permute(2, 0, 3, 1, 4)
    x = ((q @ k.transpose(-2, -1)) * attn.scale).softmax(dim=-1) @ v
    x = x.transpose(1, 2).reshape(B, N, C)
    return attn.proj(x) + proj_delta(x)


def official_mlp(mlp: nn.Module, fc1_delta, fc2_delta, x: Tensor) -> Tensor:
    h = mlp.act(mlp.fc1(x) + fc1_delta(x))
    return mlp.fc2(h) + fc2_delta(h)


def official_tt_deltas(f: dict[str, Tensor], j: int, s: float) -> tuple:
    """fact_tt.py: q = FacTv(q_FacTs(FacTu(x))) ... each times s; fc1's 4r outputs are four r-wide pieces."""
    U, V = f["FacTu"], f["FacTv"]

    def qkv(x: Tensor) -> Tensor:
        return torch.cat([linear(linear(linear(x, U), f[f"{j}.{n}_FacTs"]), V) for n in "qkv"], dim=-1) * s

    def fc1(x: Tensor) -> Tensor:
        pieces = linear(linear(x, U), f[f"{j}.fc1_FacTs"]).unflatten(-1, (4, -1))  # (B, N, 4, r)
        return linear(pieces, V).flatten(-2) * s

    def fc2(h: Tensor) -> Tensor:
        u = linear(h.unflatten(-1, (4, -1)), U).flatten(-2)  # FacTu on each of the four C-wide pieces: (B, N, 4r)
        return linear(linear(u, f[f"{j}.fc2_FacTs"]), V) * s

    return qkv, lambda x: linear(linear(linear(x, U), f[f"{j}.proj_FacTs"]), V) * s, fc1, fc2


def official_tk_deltas(f: dict[str, Tensor], j: int, s: float) -> tuple:
    """fact_tk.py: attention cores FacTc @ FacTp[:, idx:idx+4] sliced on the last axis, applied as (U x) @ core;
    MLP cores FacTc @ FacTp[:, idx:idx+8], its halves reshaped (r, r, 4) -> (r, 4r), fc2's used transposed."""
    U, V, r = f["FacTu"], f["FacTv"], f["FacTu"].shape[0]
    attn_cores = f["FacTc"] @ f["FacTp"][:, 12 * j : 12 * j + 4]  # (r, r, 4)
    mlp_cores = f["FacTc"] @ f["FacTp"][:, 12 * j + 4 : 12 * j + 12]  # (r, r, 8)
    fc1_core, fc2_core = mlp_cores[:, :, :4].reshape(r, 4 * r), mlp_cores[:, :, 4:].reshape(r, 4 * r)

    def qkv(x: Tensor) -> Tensor:
        return torch.cat([linear(linear(x, U) @ attn_cores[:, :, t], V) for t in range(3)], dim=-1) * s

    def fc1(x: Tensor) -> Tensor:
        return linear((linear(x, U) @ fc1_core).unflatten(-1, (4, -1)), V).flatten(-2) * s

    def fc2(h: Tensor) -> Tensor:
        return linear(linear(h.unflatten(-1, (4, -1)), U).flatten(-2) @ fc2_core.T, V) * s

    return qkv, lambda x: linear(linear(x, U) @ attn_cores[:, :, 3], V) * s, fc1, fc2


def official_model(name: str, f: dict[str, Tensor], s: float) -> nn.Module:
    """A bare tiny ViT whose attention and MLP forwards are the official ones, with factors ``f``."""
    model = tiny_vit()
    deltas = official_tt_deltas if name == "fact_tt" else official_tk_deltas
    for j, block in enumerate(model.blocks):
        qkv, proj, fc1, fc2 = deltas(f, j, s)
        block.attn.forward = functools.partial(official_attention, block.attn, qkv, proj)
        block.mlp.forward = functools.partial(official_mlp, block.mlp, fc1, fc2)
    return model


def to_official(model: nn.Module, name: str, value) -> dict[str, Tensor]:
    """``value(p)`` (a factor or its gradient) of every factor of our model, in the official layout."""
    first = model.blocks[0].attn.qkv.factors
    f = {"FacTu": value(first.fact_u), "FacTv": value(first.fact_v)}
    if name == "fact_tk":
        f["FacTc"] = value(first.fact_core).permute(1, 2, 0)  # ours (P's, U's, V's mode); FacTc's P mode is last
        rows = [value(block.get_submodule(path).fact_p) for block in model.blocks for path in TARGETS]
        f["FacTp"] = torch.cat(rows).T  # our rows of P, in block order q, k, v, proj, fc1 x4, fc2 x4
        return f
    for j, block in enumerate(model.blocks):
        sigma = {path: value(block.get_submodule(path).fact_sigma).mT for path in TARGETS}
        for t, n in enumerate("qkv"):  # ours (r_in, r_out); an nn.Linear weight is (out, in)
            f[f"{j}.{n}_FacTs"] = sigma["attn.qkv"][t]
        f[f"{j}.proj_FacTs"] = sigma["attn.proj"][0]
        f[f"{j}.fc1_FacTs"] = torch.cat(list(sigma["mlp.fc1"]), dim=0)  # (4r, r): output piece m in rows m r...
        f[f"{j}.fc2_FacTs"] = torch.cat(list(sigma["mlp.fc2"]), dim=1)  # (r, 4r): input piece m in columns m r...
    return f


@pytest.mark.parametrize("name", NAMES)
def test_logits_and_gradients_match_the_official_code(name):
    ours = apply_adapter(tiny_vit(), name, rank=R, scale=S, dropout=0.0)  # convention=official is the default
    perturb(ours)
    f = {k: t.detach().clone().requires_grad_() for k, t in to_official(ours, name, lambda p: p).items()}
    reference = official_model(name, f, S)
    x = images()
    out, expected = ours(x), reference(x)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    assert (out - tiny_vit()(x)).abs().max() > 1e-2  # the factors do change the logits
    out.square().sum().backward()
    expected.square().sum().backward()
    grads = to_official(ours, name, lambda p: p.grad)
    assert set(grads) == set(f) and len(f) == (2 + 6 * DEPTH if name == "fact_tt" else 4)
    for key, tensor in f.items():  # fp32, to 1e-5 of each gradient's largest entry (summation order differs)
        torch.testing.assert_close(grads[key], tensor.grad, rtol=1e-5, atol=1e-5 * tensor.grad.abs().max().item())


# ---- the paper's equations (9) and (11), in its x W layout: ΔW_i[j, k] with j the input, k the output ----
def paper_tt(sigma: Tensor, U: Tensor, V: Tensor, s: float) -> Tensor:
    """Eq. (9): s · Σ_{t1, t2} Σ_i[t1, t2] U[j, t1] V[k, t2]."""
    return s * torch.einsum("ab,ja,kb->jk", sigma, U, V)


def paper_tk(C: Tensor, p: Tensor, U: Tensor, V: Tensor, s: float) -> Tensor:
    """Eq. (11): s · Σ_{t1, t2, t3} C[t1, t2, t3] P[i, t1] U[j, t2] V[k, t3]."""
    return s * torch.einsum("cab,c,ja,kb->jk", C, p, U, V)


def increments(layer: nn.Module) -> Tensor:
    """Our layer's update cut into its d × d blocks, in the paper's (in, out) layout, in block order."""
    delta = layer.delta_weight()  # (slices, width, in)
    n, width, fan_in = delta.shape
    return delta.reshape(n, width // DIM, DIM, fan_in // DIM, DIM).permute(0, 1, 3, 4, 2).reshape(-1, DIM, DIM)


@pytest.mark.parametrize("convention", ["official", "peft"])
@pytest.mark.parametrize("name", NAMES)
def test_every_block_follows_the_papers_equation_except_the_official_tk_mlp(name, convention):
    model = apply_adapter(tiny_vit(), name, rank=R, scale=S, convention=convention)
    perturb(model)
    factors = model.blocks[0].attn.qkv.factors
    U, V = factors.fact_u.T, factors.fact_v  # the paper's U, V: (d, r)
    with torch.no_grad():
        for block in model.blocks:
            for path in TARGETS:
                layer = block.get_submodule(path)
                if name == "fact_tt":
                    expected = torch.stack([paper_tt(sigma, U, V, S) for sigma in layer.fact_sigma])
                else:
                    expected = torch.stack([paper_tk(factors.fact_core, p, U, V, S) for p in layer.fact_p])
                same = torch.allclose(increments(layer), expected, rtol=1e-5, atol=1e-7)
                # the official TK code interleaves fc1's and fc2's cores (and transposes fc2's)
                assert same == (name == "fact_tt" or convention == "peft" or path.startswith("attn")), path


def test_fact_tt_conventions_are_the_same():
    official, peft = (apply_adapter(tiny_vit(), "fact_tt", convention=c) for c in ("official", "peft"))
    assert official.state_dict().keys() == peft.state_dict().keys()
    assert all(torch.equal(t, peft.state_dict()[k]) for k, t in official.state_dict().items())  # same draws
    perturb(official), perturb(peft)
    with torch.no_grad():
        assert torch.equal(official.eval()(images()), peft.eval()(images()))


# ---- initialisation, sharing, identity, merging ----
def xavier_bound(shape: tuple[int, ...]) -> float:
    fan_in, fan_out = nn.init._calculate_fan_in_and_fan_out(torch.empty(shape))
    return (6 / (fan_in + fan_out)) ** 0.5


def assert_uniform(tensor: Tensor, bound: float) -> None:
    assert 0.9 * bound < tensor.abs().max() <= bound


@pytest.mark.parametrize("name", NAMES)
def test_initialisation_and_sharing_are_the_official_ones(name):
    rank = 8
    model = apply_adapter(tiny_vit(), name, rank=rank)
    layers = [block.get_submodule(path) for block in model.blocks for path in TARGETS]
    factors = layers[0].factors
    assert all(layer.factors is factors for layer in layers)
    shared = [n for n in adapter_parameters(model) if ".factors." in n]  # each shared factor once, by its first name
    assert shared == [f"blocks.0.attn.qkv.factors.{n}" for n in ("fact_u", "fact_v", "fact_core")[: len(shared)]]
    assert len(shared) == (3 if name == "fact_tk" else 2)
    assert torch.all(factors.fact_v == 0)  # V zero: ΔW = 0 at init
    assert_uniform(factors.fact_u, DIM**-0.5)  # nn.Linear(d, r)'s default: U(±1/sqrt(d))
    if name == "fact_tt":  # the cores as nn.Linear weights: U(±1/sqrt(fan_in)), fan_in = r, 4r for fc2
        assert_uniform(torch.cat([layer.fact_sigma.flatten() for layer in layers if layer.in_chunks == 1]), rank**-0.5)
        assert_uniform(torch.cat([b.mlp.fc2.fact_sigma.flatten() for b in model.blocks]), (4 * rank) ** -0.5)
    else:  # Xavier-uniform on the official (r, r, r) FacTc and (r, 12L) FacTp
        assert_uniform(factors.fact_core, xavier_bound((rank, rank, rank)))
        assert_uniform(torch.cat([layer.fact_p for layer in layers]), xavier_bound((rank, 12 * DEPTH)))
    assert all(layer.fact_dropout.p == 0.1 and layer.scale == 1.0 for layer in layers)  # set_FacT's defaults


@pytest.mark.parametrize("convention", ["official", "peft"])
@pytest.mark.parametrize("name", NAMES)
def test_identity_at_init_and_merged_equals_unmerged(name, convention):
    backbone = tiny_vit()
    model = apply_adapter(copy.deepcopy(backbone), name, rank=R, scale=S, convention=convention).eval()
    x = images()
    with torch.no_grad():
        torch.testing.assert_close(model(x), backbone(x), rtol=0, atol=1e-6)
        perturb(model)
        unmerged = model(x)
        merged = merge_adapter(model)(x)
    assert (unmerged - backbone(x)).abs().max() > 1e-2
    assert (merged - unmerged).abs().max() <= 1e-5


def test_dropout_acts_on_each_core_output_before_v():
    model = apply_adapter(tiny_vit(), "fact_tt", rank=R, scale=S, dropout=0.5).train()
    perturb(model)
    layer = model.blocks[0].attn.qkv
    seen = []
    layer.fact_dropout.register_forward_hook(lambda module, args, out: seen.append((args[0], out)))
    x = torch.randn(2, 5, DIM)
    with torch.no_grad():
        update = layer(x) - layer.base_layer(x)
        (z, dropped), u = seen[0], x @ layer.factors.fact_u.T  # U x: (2, 5, r)
        torch.testing.assert_close(z, torch.einsum("bta,nac->btnc", u, layer.fact_sigma).unsqueeze(-2))
        kept = dropped != 0
        assert 0.3 < kept.float().mean() < 0.7 and z.ne(0).all()
        torch.testing.assert_close(dropped[kept], 2 * z[kept])  # inverted dropout, p = 0.5
        expected = torch.cat([S * dropped[..., t, 0, :] @ layer.factors.fact_v.T for t in range(3)], dim=-1)
        torch.testing.assert_close(update, expected)


# ---- parameter counts and config errors ----
def count(name: str, **hparams) -> int:
    return sum(p.numel() for p in adapter_parameters(apply_adapter(tiny_vit(), name, rank=R, **hparams)).values())


def test_parameter_counts_follow_the_formulas():
    weights = 12 * DEPTH  # q, k, v, proj, fc1 x4, fc2 x4 per block
    assert count("fact_tt") == 2 * DIM * R + weights * R**2
    assert count("fact_tk") == 2 * DIM * R + weights * R + R**3
    assert count("fact_tt", qkv_slices=None) == count("fact_tt")  # the fused qkv: still three d x d blocks
    assert count("fact_tt", targets=["attn.qkv"], qkv_slices=["q", "v"]) == 2 * DIM * R + 2 * DEPTH * R**2
    assert count("fact_tk", targets=["attn.qkv"], qkv_slices=["q", "v"]) == 2 * DIM * R + 2 * DEPTH * R + R**3


@pytest.mark.parametrize(
    "hparams, message",
    [
        ({"rank": 0}, "adapter.rank must be >= 1, got 0"),
        ({"scale": 0.0}, "adapter.scale must be positive, got 0.0"),
        ({"scale": -1.0}, "adapter.scale must be positive, got -1.0"),
        ({"dropout": 1.0}, r"adapter.dropout must be in \[0, 1\), got 1.0"),
        ({"qkv_slices": ["q", "q"]}, r"adapter.qkv_slices must be distinct names from q, k, v; got \['q', 'q'\]"),
    ],
)
@pytest.mark.parametrize("name", NAMES)
def test_bad_config_values_raise_one_line(name, hparams, message):
    with pytest.raises(ValueError, match=f"^{message}$"):
        apply_adapter(tiny_vit(), name, **hparams)


def test_a_weight_that_does_not_cut_into_d_by_d_blocks_is_refused():
    message = (
        "FacT cuts each weight into 48 × 48 blocks along one side; adapter target 'mlp.fc1' has 120 × 48 "
        "weights: target attn.qkv, attn.proj, mlp.fc1 or mlp.fc2"
    )
    with pytest.raises(ValueError, match=f"^{message}$"):
        apply_adapter(tiny_vit(mlp_ratio=2.5), "fact_tk")
