"""AdaptFormer's width as a reduction of the backbone's, through the PVeRA grid, and its scale as the config
system resolves it. Its equations are checked against the official PVeRA code in test_official_convention.py.

The official code (leofillioux/pvera ``config/adapters.yaml``: ``reduction_ratios: [4, 8, 16]``;
``models/adapters/adaptformer.py``: ``hidden_dim = int(fc1.in_features / reduction_ratio)``) sizes the bottleneck
from the backbone: 192/96/48 at ViT-B's width 768, 96/48/24 at ViT-S's 384.
"""

from __future__ import annotations

import pytest
import torch
from helpers import tiny_vit

from pvera_bench.adapters import apply_adapter
from pvera_bench.config.grid import grid_points, with_point
from pvera_bench.models.backbone import random_weights_expected
from pvera_bench.models.build import build_model
from pvera_bench.pipeline.compose import compose_config
from pvera_bench.pipeline.params import parameter_report


def overrides(point: dict) -> list[str]:
    """A grid point as command-line overrides."""
    return [f"{key}={'null' if value is None else value}" for key, value in point.items()]


@pytest.mark.parametrize(
    "backbone, width, hidden", [("dinov2_vits14", 384, (96, 48, 24)), ("vit_b16_in21k", 768, (192, 96, 48))]
)
def test_the_pvera_grid_gives_widths_from_the_backbone_width(backbone, width, hidden):
    """Each point's count is 12 · (2 · width · h + h + width + 1): h is the bottleneck width of every block."""
    base = [f"backbone={backbone}", "adapter=adaptformer", "grid=pvera"]
    points = grid_points(compose_config(base))
    assert points == [{"adapter.hidden_dim": None, "adapter.reduction": r} for r in (4, 8, 16)]
    for point, h in zip(points, hidden, strict=True):
        assert parameter_report([*base, *overrides(point)])["adapter_params"] == 12 * (2 * width * h + h + width + 1)


@pytest.mark.parametrize("backbone, hidden", [("tiny", (48, 24, 12)), ("dinov2_vits14", (96, 48, 24))])
def test_a_grid_point_sets_the_width_of_the_built_model(backbone, hidden):
    """The run's path: grid_points, then with_point and build_model per point (pipeline/run.py, training/selection.py),
    random weights; tiny is 192 wide, DINOv2-S/14 384."""
    cfg = compose_config([f"backbone={backbone}", "backbone.pretrained=false", "adapter=adaptformer", "grid=pvera"])
    for point, h in zip(grid_points(cfg), hidden, strict=True):
        with random_weights_expected():
            model = build_model(with_point(cfg, point))
        assert {(b.mlp.adaptformer_down.out_features, b.mlp.adaptformer_up.in_features) for b in model.blocks} == {
            (h, h)
        }


@pytest.mark.parametrize("convention, scale", [("official", 1.0), ("peft", 0.1)])
def test_the_default_scale_follows_the_convention_chosen_on_the_command_line(convention, scale):
    cfg = compose_config(["backbone=tiny", "adapter=adaptformer", f"adapter.convention={convention}"])
    with random_weights_expected():
        model = build_model(cfg)
    assert all(b.mlp.adaptformer_scale.item() == pytest.approx(scale) for b in model.blocks)


def test_an_explicit_width_or_scale_is_kept():
    model = apply_adapter(tiny_vit(), "adaptformer", hidden_dim=5, scale=0.5, convention="peft")
    assert model.blocks[0].mlp.adaptformer_down.out_features == 5 and model.blocks[0].mlp.adaptformer_scale == 0.5
    model = apply_adapter(tiny_vit(), "adaptformer", hidden_dim=None, reduction=16)
    assert model.blocks[0].mlp.adaptformer_up.in_features == 48 // 16


@pytest.mark.parametrize("convention", ["official", "peft"])
def test_the_adapted_mlp_keeps_its_dtype_under_autocast(convention):
    layer = apply_adapter(tiny_vit(), "adaptformer", convention=convention).blocks[0].mlp
    h = torch.randn(2, 5, 48)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert layer(h).dtype == layer.base_layer(h).dtype == torch.bfloat16
