"""Adapter+ against an independent rewrite of the official visinf/adapter_plus forward at its ``post`` position.

``official_*`` below are written in plain torch from ``adapter_plus/vit_adapter.py`` (``Adapter.forward``: norm_a,
then the bottleneck Linear → act → Dropout → Linear, then drop_path_a, then ``* scaling``, then ``+ skip``;
``AdapterBlock.forward_post``: the timm block as it is, then ``x = adapter(x, skip=x)``) under the
``adapter_plus`` config (no norm_a, ``scaling: channel``). The official layout of each projection is
``nn.Linear``'s (out, in), so our tensors map one to one; they are copied into fresh leaves, and outputs and
gradients must match.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from helpers import perturb, tiny_vit
from torch import Tensor, nn

from pvera_bench.adapters import adapter_config, adapter_parameters, apply_adapter, mc_dropout
from pvera_bench.adapters.adapter_plus import AdapterPlusConfig
from pvera_bench.config import Convention
from pvera_bench.pipeline.params import parameter_report

DIM, DEPTH = 48, 2  # helpers.tiny_vit
NAMES = ("down.weight", "down.bias", "up.weight", "up.bias", "scale")


def official_drop_path(x: Tensor, p: float, training: bool) -> Tensor:
    """Stochastic depth per sample: zero a sample's branch with probability p, else scale it by 1/(1-p)."""
    if p == 0 or not training:
        return x
    keep = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(1 - p)
    return x * keep / (1 - p)


def official_adapter(x: Tensor, skip: Tensor, w: dict[str, Tensor], drop_path: float, training: bool) -> Tensor:
    """``Adapter.forward`` with norm_layer None, dropout 0: drop_path(up(GELU(down(x)))) * scaling + skip."""
    h = F.linear(F.gelu(F.linear(x, w["down.weight"], w["down.bias"])), w["up.weight"], w["up.bias"])
    return official_drop_path(h, drop_path, training) * w["scale"] + skip


def official_post_block(block: nn.Module, x: Tensor, w: dict[str, Tensor], drop_path: float, training: bool) -> Tensor:
    """``AdapterBlock.forward_post``: the two residual sub-layers, then the adapter on the block's output."""
    x = x + block.drop_path1(block.ls1(block.attn(block.norm1(x))))
    x = x + block.drop_path2(block.ls2(block.mlp(block.norm2(x))))
    return official_adapter(x, x, w, drop_path, training)


def our_tensors(layer: nn.Module) -> dict[str, Tensor]:
    """One adapter's tensors, by their official names."""
    down, up = layer.adapter_plus_down, layer.adapter_plus_up
    return dict(zip(NAMES, (down.weight, down.bias, up.weight, up.bias, layer.adapter_plus_scale), strict=True))


def official_weights(layer: nn.Module) -> dict[str, Tensor]:
    """Our tensors of one adapter, copied into fresh leaves."""
    return {name: t.detach().clone().requires_grad_() for name, t in our_tensors(layer).items()}


def our_grads(layer: nn.Module) -> dict[str, Tensor]:
    return {name: t.grad for name, t in our_tensors(layer).items()}


def images(seed: int = 0, n: int = 3) -> Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def test_model_outputs_and_gradients_match_the_official_post_adapter():
    backbone = tiny_vit(init_values=0.5)  # with LayerScale (as DINOv2): it acts inside the block, before the adapter
    model = apply_adapter(copy.deepcopy(backbone), "adapter_plus").eval()
    perturb(model)
    weights = [official_weights(block) for block in model.blocks]
    target = torch.randn(3, 5, generator=torch.Generator().manual_seed(1))
    ours = model(images())
    (ours * target).sum().backward()
    x = backbone.norm_pre(backbone._pos_embed(backbone.patch_embed(images())))
    for block, w in zip(backbone.blocks, weights, strict=True):
        x = official_post_block(block, x, w, drop_path=0.1, training=False)
    expected = backbone.forward_head(backbone.norm(x))
    (expected * target).sum().backward()
    torch.testing.assert_close(ours, expected, rtol=1e-6, atol=1e-6)
    for block, w in zip(model.blocks, weights, strict=True):
        for name, grad in our_grads(block).items():
            torch.testing.assert_close(grad, w[name].grad, rtol=1e-5, atol=1e-7, msg=name)


def test_training_drop_path_matches_the_official_one_draw_for_draw():
    backbone = tiny_vit(init_values=0.5)
    model = apply_adapter(copy.deepcopy(backbone), "adapter_plus", drop_path=0.5).train()
    perturb(model)
    x = torch.randn(16, 17, DIM, generator=torch.Generator().manual_seed(2))
    for ours, original in zip(model.blocks, backbone.blocks, strict=True):
        w = official_weights(ours)
        torch.manual_seed(5)
        out = ours(x)
        torch.manual_seed(5)
        expected = official_post_block(original.train(), x, w, drop_path=0.5, training=True)
        torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-6)
        out.square().sum().backward()
        expected.square().sum().backward()
        for name, grad in our_grads(ours).items():
            torch.testing.assert_close(grad, w[name].grad, rtol=1e-5, atol=1e-6, msg=name)
        with torch.no_grad():
            dropped = (out - original(x)).abs().amax(dim=(1, 2)) == 0
        assert 0 < dropped.sum() < len(x)  # some samples lost the adapter's branch, not all


def test_position_wraps_each_whole_block_and_leaves_its_sublayers_alone():
    model = apply_adapter(tiny_vit(), "adapter_plus")
    assert [type(b).__name__ for b in model.blocks] == ["PostBlockAdapter"] * DEPTH
    inner = [b.base_layer for b in model.blocks]
    assert all(type(m.attn).__name__ == "Attention" and type(m.mlp).__name__ == "Mlp" for m in inner)
    assert isinstance(model.blocks[0].activation, nn.GELU) and isinstance(model.blocks[0].dropout, nn.Identity)
    assert model.blocks[0].drop_path.drop_prob == 0.1


def test_initialisation_is_houlsby_truncated_normal_and_unit_channel_scale():
    hidden = 32
    model = apply_adapter(tiny_vit(), "adapter_plus", hidden_dim=hidden)
    for name, shape in (("down", (hidden, DIM)), ("up", (DIM, hidden))):
        weight = torch.stack([getattr(b, f"adapter_plus_{name}").weight for b in model.blocks]).detach()
        assert weight.shape == (DEPTH, *shape) and not torch.equal(weight[0], weight[1])
        assert 0.019 < weight.abs().max() <= 0.02  # truncated at ±2 std, std 0.01
        assert abs(weight.std().item() / (0.01 * 0.8796) - 1) < 0.06  # the std of N(0, 1) truncated at ±2: 0.8796
        assert abs(weight.mean().item()) < 0.001
        assert all(torch.all(getattr(b, f"adapter_plus_{name}").bias == 0) for b in model.blocks)
    assert all(torch.equal(b.adapter_plus_scale, torch.ones(DIM)) for b in model.blocks)


def test_conventions_build_the_same_adapter():
    built = {}
    for convention in Convention:
        torch.manual_seed(3)
        model = apply_adapter(tiny_vit(), "adapter_plus", convention=convention)
        built[convention] = adapter_parameters(model)
    official, peft = built[Convention.official], built[Convention.peft]
    assert official.keys() == peft.keys() and all(torch.equal(official[n], peft[n]) for n in official)


def test_parameter_count_follows_the_formula():
    for hparams, hidden in (({}, 8), ({"hidden_dim": 3}, 3), ({"hidden_dim": None, "reduction": 6}, 8)):
        model = apply_adapter(tiny_vit(), "adapter_plus", **hparams)
        count = sum(p.numel() for p in adapter_parameters(model).values())
        assert count == DEPTH * (2 * DIM * hidden + hidden + DIM + DIM), hparams  # down, up (with biases), s
        assert model.blocks[0].adapter_plus_down.out_features == hidden


def test_vit_b16_count_at_the_official_default_width():
    report = parameter_report(["backbone=vit_b16_in21k", "adapter=adapter_plus"])
    assert report["adapter_params"] == 12 * (2 * 768 * 8 + 8 + 2 * 768) == 165_984


def test_dropout_is_the_adapters_own_and_serves_mc_dropout():
    model = apply_adapter(tiny_vit(), "adapter_plus", dropout=0.5).eval()
    perturb(model)
    assert all(isinstance(b.dropout, nn.Dropout) for b in model.blocks)
    with torch.no_grad():
        reference = model(images())
        with mc_dropout(model, active=True):
            assert sum(m.training for m in model.modules()) == DEPTH  # the adapters' dropouts only
            assert not torch.equal(model(images()), reference)
        assert torch.equal(model(images()), reference)  # eval: dropout and drop path off


@pytest.mark.parametrize(
    "hparams, message",
    [
        ({"hidden_dim": 0}, "adapter.hidden_dim must be >= 1, got 0"),
        ({"hidden_dim": None}, "adapter.hidden_dim must be set when adapter.reduction is null, got both null"),
        (
            {"reduction": 4},
            "adapter.hidden_dim must be null when adapter.reduction is set, got hidden_dim=8 and reduction=4; "
            "set adapter.hidden_dim=null to use the reduction",
        ),
        ({"hidden_dim": None, "reduction": 0}, "adapter.reduction must be >= 1, got 0"),
        ({"dropout": 1.0}, r"adapter.dropout must be in \[0, 1\), got 1.0"),
        ({"drop_path": -0.1}, r"adapter.drop_path must be in \[0, 1\), got -0.1"),
    ],
)
def test_bad_values_raise_one_line(hparams, message):
    with pytest.raises(ValueError, match=f"^{message}$"):
        AdapterPlusConfig(name="adapter_plus", **hparams)


def test_a_reduction_above_the_width_is_refused_when_injected():
    with pytest.raises(ValueError, match=r"^adapter.reduction must be <= the backbone width 48, got 64$"):
        apply_adapter(tiny_vit(), "adapter_plus", hidden_dim=None, reduction=64)
    assert adapter_config(apply_adapter(tiny_vit(), "adapter_plus", hidden_dim=None, reduction=48)).reduction == 48
