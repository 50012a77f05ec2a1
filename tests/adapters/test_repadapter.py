"""RepAdapter against an independent rewrite of the official equations (luogen1996/RepAdapter ``repadapter.py``).

The ``official_*`` functions are written from that file in plain torch, in its layout: the adapter works
channels-first, ``conv_A`` a 1x1 Conv1d ``(h, d, 1)``, ``conv_B`` a 1x1 Conv1d with ``groups`` ``(d, h / groups,
1)``, dropout between them: ``x + s · conv_B(dropout(conv_A(x)))``; the ``repblock`` block is ``x + attn(A1(LN1 x))``
then ``x + mlp(A2(LN2 x))``; the re-parameterisation expands ``conv_B`` to a dense matrix block by block
(``sparse2dense``), forms ``I + s Wa Wb`` and the bias ``s (b_a Wb + b_b)`` in the row-vector layout ``x @ W`` and
multiplies them into ``attn.qkv`` and ``mlp.fc1`` (``reparameterize``, ``set_RepWeight``). Our tensors are mapped
into that layout and it must give our outputs, gradients and merged weights.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from helpers import perturb, tiny_vit
from torch import Tensor, nn

from pvera_bench.adapters import ADAPTERS, adapter_parameters, apply_adapter, merge_adapter
from pvera_bench.adapters.repadapter import RepAdapterConfig, RepAdapterLinear
from pvera_bench.config import Convention

DIM, DEPTH, MLP = 48, 2, 192  # helpers.tiny_vit


# ---- the official layout and equations ----
def official_weights(layer: RepAdapterLinear) -> dict[str, Tensor]:
    """Our tensors as the official conv_A / conv_B weights, cloned as leaves the official functions differentiate."""
    up = layer.repadapter_up  # (groups, d / groups, h / groups): output block g reads hidden block g
    weights = {
        "conv_A.weight": layer.repadapter_down.weight[:, :, None],
        "conv_A.bias": layer.repadapter_down.bias,
        "conv_B.weight": up.reshape(-1, up.shape[-1])[:, :, None],  # output channel g * d / groups + o
        "conv_B.bias": layer.repadapter_up_bias,
    }
    return {name: t.detach().clone().requires_grad_(True) for name, t in weights.items()}


def official_adapter(x: Tensor, w: dict[str, Tensor], s: float, groups: int, drop=lambda z: z) -> Tensor:
    """RepAdapter.forward on (B, N, C) tokens."""
    x = x.transpose(1, 2)
    hidden = drop(F.conv1d(x, w["conv_A.weight"], w["conv_A.bias"]))
    x = F.conv1d(hidden, w["conv_B.weight"], w["conv_B.bias"], groups=groups) * s + x
    return x.transpose(1, 2)


def official_block(block: nn.Module, x: Tensor, w_attn: dict, w_mlp: dict | None, s: float, groups: int) -> Tensor:
    """forward_vit_block_adapter (repblock; w_mlp given) or forward_vit_attn_adapter (repattn)."""
    x = x + block.attn(official_adapter(block.norm1(x), w_attn, s, groups))
    h = block.norm2(x)
    return x + block.mlp(h if w_mlp is None else official_adapter(h, w_mlp, s, groups))


def official_sparse_to_dense(conv_b: Tensor, groups: int) -> Tensor:
    """sparse2dense: the grouped (d, h / groups) weight as a dense (d, h) one, zero off the diagonal blocks."""
    d, per_group = conv_b.shape
    dense = torch.zeros(d, per_group * groups)
    rows = d // groups
    for g in range(groups):
        dense[g * rows : (g + 1) * rows, g * per_group : (g + 1) * per_group] = conv_b[g * rows : (g + 1) * rows]
    return dense


def official_reparameterize(w: dict[str, Tensor], s: float, groups: int, linear: nn.Linear) -> tuple[Tensor, Tensor]:
    """set_RepWeight: adapter as x @ (I + s Wa Wb) + s (b_a Wb + b_b), then multiplied into the Linear."""
    wa = w["conv_A.weight"].squeeze(-1).T  # (d, h)
    wb = official_sparse_to_dense(w["conv_B.weight"].squeeze(-1), groups).T  # (h, d)
    adapter_weight = wa @ wb * s + torch.eye(wa.shape[0])
    adapter_bias = (w["conv_A.bias"] @ wb + w["conv_B.bias"]) * s
    weight = adapter_weight @ linear.weight.T  # x @ adapter_weight @ W^T
    bias = adapter_bias @ linear.weight.T + linear.bias
    return weight.T, bias


def tokens(seed: int = 0) -> Tensor:
    return torch.randn(2, 17, DIM, generator=torch.Generator().manual_seed(seed))


def assert_close_to_scale(actual: Tensor, expected: Tensor) -> None:
    """Equal up to fp32 rounding of sums: within 1e-6 of the largest entry."""
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-6 * expected.abs().max().item())


def assert_gradients_match(layer: RepAdapterLinear, w: dict[str, Tensor]) -> None:
    up = layer.repadapter_up
    assert_close_to_scale(layer.repadapter_down.weight.grad, w["conv_A.weight"].grad.squeeze(-1))
    assert_close_to_scale(layer.repadapter_down.bias.grad, w["conv_A.bias"].grad)
    assert_close_to_scale(up.grad, w["conv_B.weight"].grad.squeeze(-1).reshape(up.shape))
    assert_close_to_scale(layer.repadapter_up_bias.grad, w["conv_B.bias"].grad)


@pytest.mark.parametrize("targets", [["attn.qkv", "mlp.fc1"], ["attn.qkv"]], ids=["repblock", "repattn"])
@pytest.mark.parametrize("groups", [2, 4])
def test_blocks_match_the_official_equations_in_outputs_and_gradients(targets, groups):
    backbone = tiny_vit()
    model = apply_adapter(copy.deepcopy(backbone), "repadapter", targets=targets, groups=groups, scale=5.0)
    perturb(model)
    for ours, original in zip(model.eval().blocks, backbone.blocks, strict=True):
        x, probe = tokens(), tokens(seed=1)  # a random linear read-out of the block's output
        out = ours(x)
        (out * probe).sum().backward()
        w_attn = official_weights(ours.attn.qkv)
        w_mlp = official_weights(ours.mlp.fc1) if "mlp.fc1" in targets else None
        expected = official_block(original, x, w_attn, w_mlp, 5.0, groups)
        (expected * probe).sum().backward()
        torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
        assert_gradients_match(ours.attn.qkv, w_attn)
        if w_mlp is None:
            assert not isinstance(ours.mlp.fc1, RepAdapterLinear)
        else:
            assert_gradients_match(ours.mlp.fc1, w_mlp)


def test_the_dropout_is_on_the_hidden_channels_as_official():
    model = apply_adapter(tiny_vit(), "repadapter", dropout=0.5)
    perturb(model)
    layer, x = model.blocks[0].mlp.fc1.train(), tokens()
    torch.manual_seed(5)
    ours = layer.adapt_input(x)
    torch.manual_seed(5)
    # the same i.i.d. mask as ours, drawn in our token-major order (the official tensor is channels-first)
    drop = lambda z: F.dropout(z.transpose(1, 2).contiguous(), 0.5, training=True).transpose(1, 2)  # noqa: E731
    torch.testing.assert_close(ours, official_adapter(x, official_weights(layer), 1.0, 2, drop), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(layer.eval().adapt_input(x), ours)  # it did drop


def test_merged_weights_are_the_official_reparameterisation_and_predict_the_same():
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    model = apply_adapter(tiny_vit(), "repadapter", scale=10.0).eval()
    perturb(model)
    expected = {}
    for index, block in enumerate(model.blocks):
        for path in ("attn.qkv", "mlp.fc1"):
            layer = block.get_submodule(path)
            with torch.no_grad():
                expected[index, path] = official_reparameterize(official_weights(layer), 10.0, 2, layer.base_layer)
    with torch.no_grad():
        unmerged = model(images)
        merged = merge_adapter(model)(images)
    assert (merged - unmerged).abs().max().item() <= 1e-5
    assert (unmerged - tiny_vit()(images)).abs().max().item() > 1e-2  # the update is not trivially zero
    bare = tiny_vit()  # the merged model costs exactly the bare backbone: the same tensors, of the same shapes
    assert {n: t.shape for n, t in model.state_dict().items()} == {n: t.shape for n, t in bare.state_dict().items()}
    for (index, path), (weight, bias) in expected.items():
        linear = model.blocks[index].get_submodule(path)
        assert type(linear) is nn.Linear
        assert_close_to_scale(linear.weight, weight)
        assert_close_to_scale(linear.bias, bias)


def test_a_linear_without_bias_gets_the_adapters_bias_when_merged():
    model = apply_adapter(tiny_vit(qkv_bias=False), "repadapter").eval()
    perturb(model)
    x = tokens()
    layer = model.blocks[0].attn.qkv
    assert layer.base_layer.bias is None
    with torch.no_grad():
        unmerged = layer(x)
        torch.testing.assert_close(layer.merged_layer()(x), unmerged, rtol=1e-5, atol=1e-5)


def test_identity_at_init_and_the_official_initialisation():
    spec = ADAPTERS["repadapter"]
    assert spec.identity_at_init == (Convention.official, Convention.peft) and spec.mergeable
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    backbone = tiny_vit()
    model = apply_adapter(copy.deepcopy(backbone), "repadapter").eval()
    with torch.no_grad():
        assert torch.equal(model(images), backbone(images))
    layer = model.blocks[1].mlp.fc1
    assert not layer.repadapter_up.any() and not layer.repadapter_up_bias.any()
    assert not layer.repadapter_down.bias.any()
    down = layer.repadapter_down.weight
    assert down.abs().max() <= (6 / (DIM + 8)) ** 0.5 and down.std() > 0.5 * (2 / (DIM + 8)) ** 0.5  # Xavier-uniform


def count(**hparams) -> int:
    return sum(p.numel() for p in adapter_parameters(apply_adapter(tiny_vit(), "repadapter", **hparams)).values())


def test_parameter_counts_follow_the_formula():
    """Per adapter on a Linear of input width d: down d h + h, grouped up d h / groups + d."""
    for hidden, groups in ((8, 2), (8, 1), (4, 4)):
        per_adapter = DIM * hidden + hidden + DIM * hidden // groups + DIM
        assert count(hidden_dim=hidden, groups=groups) == 2 * DEPTH * per_adapter
        assert count(hidden_dim=hidden, groups=groups, targets=["attn.qkv"]) == DEPTH * per_adapter
    assert count(targets=["mlp.fc2"]) == DEPTH * (MLP * 8 + 8 + MLP * 4 + MLP)  # fc2 reads the MLP's hidden width
    assert count() == 2528


@pytest.mark.parametrize(
    "hparams, message",
    [
        (
            {"qkv_slices": ["q", "v"]},
            r"adapter.qkv_slices must be null for repadapter \(it adapts the input of the whole qkv\), "
            r"got \['q', 'v'\]",
        ),
        ({"hidden_dim": 0}, "adapter.hidden_dim must be >= 1, got 0"),
        ({"groups": 3}, "adapter.groups must be >= 1 and divide hidden_dim=8, got 3"),
        ({"groups": 0}, "adapter.groups must be >= 1 and divide hidden_dim=8, got 0"),
        ({"scale": -1.0}, "adapter.scale must be positive, got -1.0"),
        ({"dropout": -0.1}, r"adapter.dropout must be in \[0, 1\), got -0.1"),
        ({"targets": []}, r"adapter.targets is empty: name at least one Linear, e.g. \[attn.qkv\]"),
    ],
)
def test_bad_config_values_raise_one_line(hparams, message):
    with pytest.raises(ValueError, match=f"^{message}$"):
        RepAdapterConfig(name="repadapter", **hparams)


def test_groups_must_divide_the_target_width():
    with pytest.raises(ValueError, match=r"^adapter.groups=5 must divide the width 48 of attn.qkv$"):
        apply_adapter(tiny_vit(), "repadapter", hidden_dim=10, groups=5)
