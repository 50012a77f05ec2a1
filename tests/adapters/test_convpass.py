"""Convpass against an independent rewrite of the official equations (JieShibo/PETL-ViT ``convpass/vtab/convpass.py``).

The ``official_*`` functions are written from that file in plain torch, in its layout: the bypass works on a
``(B, N, C)`` token tensor, lays tokens ``1:`` out as ``(B, H, W, h)`` and permutes them to channels-first for the
3x3 convolution, and convolves the [cls] token as a 1x1 image of its own, which a zero-padded 3x3 convolution
reduces to its centre tap plus the bias; the block is ``x + attn(LN1 x) + s · bypass(LN1 x)``, then the same with
the MLP. Our tensors are cloned into it (same layout: ``nn.Linear`` / ``nn.Conv2d`` weights) and it must give our
outputs and our gradients.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from helpers import perturb, tiny_vit
from torch import Tensor, nn

from pvera_bench.adapters import ADAPTERS, adapter_parameters, apply_adapter
from pvera_bench.adapters.convpass import ConvBypass, ConvpassConfig
from pvera_bench.config import Convention

DIM, DEPTH = 48, 2  # helpers.tiny_vit: width 48, 2 blocks, a 4x4 patch grid at 32 px
TENSORS = ("convpass_down.weight", "convpass_down.bias", "convpass_conv.weight", "convpass_conv.bias")
TENSORS += ("convpass_up.weight", "convpass_up.bias")


# ---- the official equations, (B, N, C) tokens, one [cls] token first ----
def official_quick_gelu(x: Tensor) -> Tensor:
    return x * torch.sigmoid(1.702 * x)


def official_bypass(x: Tensor, w: dict[str, Tensor], grid: tuple[int, int], drop=lambda z: z) -> Tensor:
    """Convpass.forward: down, act, 3x3 conv on the patch grid and centre tap on [cls], act, dropout, up."""
    B, N, C = x.shape
    H, W = grid
    x_down = official_quick_gelu(x @ w["convpass_down.weight"].T + w["convpass_down.bias"])
    dim = x_down.shape[-1]
    x_patch = x_down[:, 1:].reshape(B, H, W, dim).permute(0, 3, 1, 2)
    x_patch = F.conv2d(x_patch, w["convpass_conv.weight"], w["convpass_conv.bias"], padding=1)
    x_patch = x_patch.permute(0, 2, 3, 1).reshape(B, H * W, dim)
    x_cls = x_down[:, :1] @ w["convpass_conv.weight"][:, :, 1, 1].T + w["convpass_conv.bias"]
    x_down = drop(official_quick_gelu(torch.cat([x_cls, x_patch], dim=1)))
    return x_down @ w["convpass_up.weight"].T + w["convpass_up.bias"]


def official_block(block: nn.Module, x: Tensor, w_attn: dict, w_mlp: dict | None, s: float, grid) -> Tensor:
    """forward_block (w_mlp given) or forward_block_attn (Convpass-attn, w_mlp None)."""
    h = block.norm1(x)
    x = x + block.attn(h) + official_bypass(h, w_attn, grid) * s
    h = block.norm2(x)
    return x + block.mlp(h) + (0 if w_mlp is None else official_bypass(h, w_mlp, grid) * s)


def leaf_copies(layer: ConvBypass) -> dict[str, Tensor]:
    """Our bypass tensors, cloned as leaves the official function differentiates."""
    params = dict(layer.named_parameters())
    return {name: params[name].detach().clone().requires_grad_(True) for name in TENSORS}


def assert_close_to_scale(actual: Tensor, expected: Tensor) -> None:
    """Equal up to fp32 rounding of sums: within 1e-6 of the largest entry (gradients reach ~1e2 here)."""
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-6 * expected.abs().max().item())


def tokens(tokens: int = 17, seed: int = 0) -> Tensor:
    return torch.randn(2, tokens, DIM, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("targets", [["attn", "mlp"], ["attn"]], ids=["convpass", "convpass-attn"])
@pytest.mark.parametrize("conv_init", ["identity", "xavier"])
def test_blocks_match_the_official_equations_in_outputs_and_gradients(targets, conv_init):
    backbone = tiny_vit()
    model = apply_adapter(copy.deepcopy(backbone), "convpass", scale=10.0, targets=targets, conv_init=conv_init)
    perturb(model)
    for ours, original in zip(model.eval().blocks, backbone.blocks, strict=True):
        x, probe = tokens(), tokens(seed=1)  # a random linear read-out of the block's output
        out = ours(x)
        (out * probe).sum().backward()
        w_attn = leaf_copies(ours.attn)
        w_mlp = leaf_copies(ours.mlp) if "mlp" in targets else None
        expected = official_block(original, x, w_attn, w_mlp, 10.0, (4, 4))
        (expected * probe).sum().backward()
        torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
        for layer, official in ((ours.attn, w_attn), (ours.mlp, w_mlp)):
            if official is None:
                assert not isinstance(layer, ConvBypass)
                continue
            params = dict(layer.named_parameters())
            for name in TENSORS:
                assert_close_to_scale(params[name].grad, official[name].grad)


def test_a_rectangular_grid_is_read_row_by_row_as_the_official_reshape():
    backbone = tiny_vit(img_size=(32, 48))  # a 4x6 grid: rows and columns cannot be swapped unnoticed
    model = apply_adapter(copy.deepcopy(backbone), "convpass", targets=["attn"])
    perturb(model)
    layer = model.blocks[0].attn
    assert layer.grid == (4, 6)
    h = tokens(1 + 24)
    with torch.no_grad():
        expected = backbone.blocks[0].attn(h) + official_bypass(h, leaf_copies(layer), (4, 6))
        torch.testing.assert_close(layer.eval()(h), expected, rtol=1e-5, atol=1e-5)


def test_the_dropout_sits_before_the_up_projection_as_official():
    model = apply_adapter(tiny_vit(), "convpass", dropout=0.5)
    perturb(model)
    layer, h = model.blocks[0].mlp.train(), tokens()
    torch.manual_seed(5)
    ours = layer.bypass(h)
    torch.manual_seed(5)
    expected = official_bypass(h, leaf_copies(layer), (4, 4), drop=lambda z: F.dropout(z, 0.5, training=True))
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(layer.eval().bypass(h), ours)  # it did drop


def test_every_prefix_token_is_its_own_1x1_image():
    """Registers (DINOv2-reg) generalise the official [cls] handling: each prefix token sees only itself."""
    model = apply_adapter(tiny_vit(reg_tokens=2), "convpass", targets=["attn"]).eval()
    perturb(model)
    layer = model.blocks[0].attn
    assert layer.prefix_tokens == 3
    h = tokens(3 + 16)
    moved = h.clone()
    moved[:, 1] += 1.0  # change one register: no other token's bypass may change
    with torch.no_grad():
        before, after = layer.bypass(h), layer.bypass(moved)
        w = leaf_copies(layer)
        for index in range(3):  # each prefix token alone, through the official [cls] path
            alone = torch.cat([h[:, index : index + 1], h[:, 3:]], dim=1)
            torch.testing.assert_close(before[:, index], official_bypass(alone, w, (4, 4))[:, 0])
    changed = (after - before).abs().amax(dim=(0, 2)) > 0
    assert changed.tolist() == [False, True] + [False] * 17


def test_identity_at_init_and_the_official_initialisation():
    assert ADAPTERS["convpass"].identity_at_init == (Convention.official, Convention.peft)
    assert not ADAPTERS["convpass"].mergeable
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    backbone = tiny_vit()
    for conv_init in ("identity", "xavier"):
        model = apply_adapter(copy.deepcopy(backbone), "convpass", conv_init=conv_init).eval()
        with torch.no_grad():
            assert torch.equal(model(images), backbone(images))
        layer = model.blocks[1].mlp
        for tensor in (layer.convpass_up.weight, layer.convpass_up.bias, layer.convpass_down.bias):
            assert not tensor.any()
        assert not layer.convpass_conv.bias.any()
        assert layer.convpass_down.weight.abs().max() <= (6 / (DIM + 8)) ** 0.5  # Xavier-uniform bound
        conv = layer.convpass_conv.weight
        if conv_init == "identity":
            assert torch.equal(conv[:, :, 1, 1], torch.eye(8)) and conv.abs().sum() == 8
        else:
            assert conv.abs().max() <= (6 / (8 * 9 + 8 * 9)) ** 0.5 and conv[:, :, 1, 1].diagonal().std() > 0


def count(**hparams) -> int:
    return sum(p.numel() for p in adapter_parameters(apply_adapter(tiny_vit(), "convpass", **hparams)).values())


def test_parameter_counts_follow_the_papers_formula():
    """Per bypass (2h + 1) d + 9 h^2 + 2h (the paper's §3.2, 2L bypasses): down, 3x3 conv and up with biases."""
    for hidden in (8, 4):
        per_bypass = (2 * hidden + 1) * DIM + 9 * hidden**2 + 2 * hidden
        assert count(hidden_dim=hidden) == 2 * DEPTH * per_bypass
        assert count(hidden_dim=hidden, targets=["attn"]) == DEPTH * per_bypass
    assert count() == 5632


def test_bf16_autocast_runs_and_keeps_gradients_close():
    model = apply_adapter(tiny_vit(), "convpass", dropout=0.0).train()
    perturb(model)
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    grads = {}
    for autocast in (False, True):
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = model(images)
        out.float().square().sum().backward()
        grads[autocast] = {n: p.grad.clone() for n, p in adapter_parameters(model).items()}
    for name, fp32 in grads[False].items():
        assert grads[True][name].dtype == torch.float32
        assert (grads[True][name] - fp32).norm() / fp32.norm() < 0.03, name


def test_a_token_count_off_the_grid_is_refused():
    layer = apply_adapter(tiny_vit(), "convpass").blocks[0].attn
    with pytest.raises(ValueError, match=r"^convpass expects 1 prefix tokens and a 4x4 patch grid, got 10 tokens"):
        layer(tokens(10))


@pytest.mark.parametrize(
    "hparams, message",
    [
        ({"hidden_dim": 0}, "adapter.hidden_dim must be >= 1, got 0"),
        ({"scale": 0.0}, "adapter.scale must be positive, got 0.0"),
        ({"targets": []}, r"adapter.targets must be distinct names from attn, mlp; got \[\]"),
        (
            {"targets": ["attn", "attn"]},
            r"adapter.targets must be distinct names from attn, mlp; got \['attn', 'attn'\]",
        ),
        ({"targets": ["qkv"]}, r"adapter.targets must be distinct names from attn, mlp; got \['qkv'\]"),
        ({"conv_init": "zeros"}, r"adapter.conv_init must be one of \['identity', 'xavier'\], got 'zeros'"),
        ({"dropout": 1.0}, r"adapter.dropout must be in \[0, 1\), got 1.0"),
    ],
)
def test_bad_config_values_raise_one_line(hparams, message):
    with pytest.raises(ValueError, match=f"^{message}$"):
        ConvpassConfig(name="convpass", **hparams)
