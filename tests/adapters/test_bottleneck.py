"""The bottleneck adapter's ``placement=pfeiffer`` against an independent rewrite of VPT's Pfeiffer adapter block,
and its width as a reduction of the backbone's, through the grid.

``official_pfeiffer_block`` is written in plain torch from KMnP/vpt ``src/models/vit_adapter/vit.py``
(``ADPT_Block.forward``, STYLE "Pfeiffer"): ``h = x + attn(LN1(x))``; ``m = mlp(LN2(h))``;
``m ← m + up(GELU(down(m)))``; ``out = m + h``. VPT's ViT has no LayerScale; timm's LayerScale sits on the MLP
branch after the adapter, as it does for the Houlsby placement (tests/adapters/test_official_convention.py).
The houlsby placement (the default) is checked there against the official PVeRA code.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from helpers import perturb, tiny_vit
from torch import Tensor, nn

from pvera_bench.adapters import AdaptedLayer, adapter_config, adapter_parameters, apply_adapter
from pvera_bench.adapters.bottleneck import BottleneckConfig
from pvera_bench.config import Convention
from pvera_bench.config.grid import grid_points
from pvera_bench.pipeline.compose import compose_config
from pvera_bench.pipeline.params import parameter_report

DIM, DEPTH, HIDDEN = 48, 2, 8  # helpers.tiny_vit; the bottleneck width used here
NAMES = ("down.weight", "down.bias", "up.weight", "up.bias")


def official_pfeiffer_block(block: nn.Module, x: Tensor, w: dict[str, Tensor]) -> Tensor:
    """VPT's Pfeiffer block: one adapter (GELU) on the MLP's output, inside the MLP's residual branch."""
    h = x + block.ls1(block.attn(block.norm1(x)))
    m = block.mlp(block.norm2(h))
    m = m + F.linear(F.gelu(F.linear(m, w["down.weight"], w["down.bias"])), w["up.weight"], w["up.bias"])
    return block.ls2(m) + h


def our_tensors(layer: nn.Module) -> dict[str, Tensor]:
    down, up = layer.bottleneck_down, layer.bottleneck_up
    return dict(zip(NAMES, (down.weight, down.bias, up.weight, up.bias), strict=True))


@pytest.mark.parametrize("convention", list(Convention))
def test_pfeiffer_placement_matches_vpts_pfeiffer_block_outputs_and_gradients(convention):
    backbone = tiny_vit(init_values=0.5)
    hparams = dict(hidden_dim=HIDDEN, placement="pfeiffer", activation="gelu", convention=convention)
    model = apply_adapter(copy.deepcopy(backbone), "bottleneck", **hparams).eval()
    perturb(model)
    x = torch.randn(2, 5, DIM, generator=torch.Generator().manual_seed(0))
    for ours, original in zip(model.blocks, backbone.blocks, strict=True):
        w = {n: t.detach().clone().requires_grad_() for n, t in our_tensors(ours.mlp).items()}
        out, expected = ours(x), official_pfeiffer_block(original, x, w)
        torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-6)
        out.square().sum().backward()
        expected.square().sum().backward()
        for name, tensor in our_tensors(ours.mlp).items():
            torch.testing.assert_close(tensor.grad, w[name].grad, rtol=1e-5, atol=1e-7, msg=name)


def test_placements_adapt_the_documented_sublayers_and_count():
    houlsby = apply_adapter(tiny_vit(), "bottleneck", hidden_dim=HIDDEN)
    assert adapter_config(houlsby).placement == "houlsby"  # the default, unchanged
    assert all(isinstance(b.attn, AdaptedLayer) and isinstance(b.mlp, AdaptedLayer) for b in houlsby.blocks)
    pfeiffer = apply_adapter(tiny_vit(), "bottleneck", hidden_dim=HIDDEN, placement="pfeiffer")
    assert all(not isinstance(b.attn, AdaptedLayer) and isinstance(b.mlp, AdaptedLayer) for b in pfeiffer.blocks)
    per_adapter = 2 * DIM * HIDDEN + HIDDEN + DIM
    for model, adapters in ((houlsby, 2 * DEPTH), (pfeiffer, DEPTH)):
        assert sum(p.numel() for p in adapter_parameters(model).values()) == adapters * per_adapter


def test_reduction_sets_the_width_from_the_backbone():
    model = apply_adapter(tiny_vit(), "bottleneck", hidden_dim=None, reduction=6)
    assert {m.bottleneck_down.out_features for b in model.blocks for m in (b.attn, b.mlp)} == {DIM // 6}


@pytest.mark.parametrize(
    "hparams, message",
    [
        ({"placement": "after_attn"}, "adapter.placement must be one of ['houlsby', 'pfeiffer'], got 'after_attn'"),
        (
            {"reduction": 8},
            "adapter.hidden_dim must be null when adapter.reduction is set, got hidden_dim=64 and reduction=8; "
            "set adapter.hidden_dim=null to use the reduction",
        ),
        ({"hidden_dim": None}, "adapter.hidden_dim must be set when adapter.reduction is null, got both null"),
        ({"hidden_dim": None, "reduction": -2}, "adapter.reduction must be >= 1, got -2"),
    ],
)
def test_bad_values_raise_one_line(hparams, message):
    with pytest.raises(ValueError) as caught:
        BottleneckConfig(name="bottleneck", **hparams)
    assert str(caught.value) == message


def test_the_pvera_grid_gives_widths_from_the_backbone_width():
    """At DINOv2-S/14 (width 384) the official reduction ratios 4/8/16 give 96/48/24, not ViT-B's 192/96/48."""
    base = ["backbone=dinov2_vits14", "adapter=bottleneck", "grid=pvera"]
    points = grid_points(compose_config(base))
    assert points == [{"adapter.hidden_dim": None, "adapter.reduction": r} for r in (4, 8, 16)]
    for point, hidden in zip(points, (96, 48, 24), strict=True):
        overrides = [f"{key}={'null' if value is None else value}" for key, value in point.items()]
        report = parameter_report([*base, *overrides])
        assert report["adapter_params"] == 2 * 12 * (2 * 384 * hidden + hidden + 384)
