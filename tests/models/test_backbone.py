"""Backbones from timm: local weights through timm's pretrained-cfg overlay, and clear errors."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from safetensors.torch import save_file

from pvera_bench.config import BackboneConfig
from pvera_bench.core.errors import UserError
from pvera_bench.models.backbone import create_backbone, input_spec, resize_pos_embed_as_hub
from pvera_bench.testing import TINY_VIT  # 32 px, 8 px patches (a 4x4 grid + CLS), width 48, depth 2


def test_local_weights_load_through_timm(tmp_path):
    torch.manual_seed(0)
    source = create_backbone(TINY_VIT, num_classes=10)
    weights = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(weights))
    torch.manual_seed(1)  # a different init, so equality can only come from the file
    loaded = create_backbone(dataclasses.replace(TINY_VIT, weights=str(weights)), num_classes=7)
    loaded_state = loaded.state_dict()
    for key, value in source.state_dict().items():
        if not key.startswith("head."):
            assert torch.equal(loaded_state[key], value), key
    assert loaded.head.out_features == 7  # timm drops the file's 10-class head for the new task


def test_missing_weights_file_is_named(tmp_path):
    missing = tmp_path / "nope.safetensors"
    with pytest.raises(UserError, match=f"^backbone.weights={missing}: no such file$"):
        create_backbone(dataclasses.replace(TINY_VIT, weights=str(missing)), num_classes=10)


def test_weights_of_another_model_are_rejected(tmp_path):
    weights = tmp_path / "other.safetensors"
    save_file({"pos_embed": torch.zeros(1, 3, 3)}, str(weights))
    with pytest.raises(UserError, match="does not fit vit_tiny_patch16_224"):
        create_backbone(dataclasses.replace(TINY_VIT, weights=str(weights)), num_classes=10)


def test_unknown_model_name():
    with pytest.raises(UserError, match="backbone.name=vit_nope: timm has no such model"):
        create_backbone(BackboneConfig(id="x", name="vit_nope", pretrained=False), num_classes=10)


def test_input_spec_uses_the_model_resolution_and_timm_normalisation():
    model = create_backbone(
        BackboneConfig(
            id="d", name="vit_base_patch14_dinov2.lvd142m", pretrained=False, img_size=224, model_kwargs={"depth": 1}
        ),
        num_classes=3,
    )
    spec = input_spec(model)
    assert spec["size"] == (224, 224)  # not the 518 of the pretrained config
    assert spec["mean"] == pytest.approx((0.485, 0.456, 0.406)) and spec["interpolation"] == "bicubic"


def cubic_weights(t: float, a: float = -0.75) -> list[float]:
    """Keys' cubic-convolution weights of the 4 neighbours at offsets -1, 0, 1, 2 for a fraction ``t``."""

    def kernel(x: float) -> float:
        x = abs(x)
        if x <= 1:
            return (a + 2) * x**3 - (a + 3) * x**2 + 1
        return a * x**3 - 5 * a * x**2 + 8 * a * x - 4 * a if x < 2 else 0.0

    return [kernel(t + 1), kernel(t), kernel(1 - t), kernel(2 - t)]


def test_hub_pos_embed_samples_where_dinov2_hub_does():
    """DINOv2's hub model resizes with scale (grid + 0.1) / old: output i reads source (i + 0.5) / scale - 0.5."""
    old, grid = 16, 2
    ramp = torch.arange(old, dtype=torch.float32).pow(2)  # varies along x only: the y resize leaves it as is
    pos_embed = torch.cat([torch.zeros(1, 1, 3), ramp.repeat(old).view(1, -1, 1).expand(-1, -1, 3)], dim=1)
    resized = resize_pos_embed_as_hub(pos_embed, (grid, grid), prefix_tokens=1)
    scale = (grid + 0.1) / old
    expected = []
    for i in range(grid):
        source = (i + 0.5) / scale - 0.5
        base, t = math.floor(source), source - math.floor(source)
        taps = [ramp[min(max(base + k, 0), old - 1)] for k in (-1, 0, 1, 2)]
        expected.append(sum(w * v for w, v in zip(cubic_weights(t), taps, strict=True)))
    assert resized.shape == (1, 1 + grid * grid, 3)
    torch.testing.assert_close(resized[0, 1 : 1 + grid, 0], torch.stack(expected), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(resized[0, 1 + grid :, 0], torch.stack(expected))  # second row: the same


def test_hub_pos_embed_quirk_resizes_the_native_embeddings_once_at_build():
    torch.manual_seed(0)
    native = create_backbone(dataclasses.replace(TINY_VIT, img_size=None), num_classes=10)  # 224 px: a 28x28 grid
    torch.manual_seed(0)
    hub = create_backbone(TINY_VIT, num_classes=10, hub_pos_embed=True)
    torch.manual_seed(0)
    timm_way = create_backbone(TINY_VIT, num_classes=10)  # resampled by timm: antialiased, exact size
    torch.testing.assert_close(hub.pos_embed, resize_pos_embed_as_hub(native.pos_embed.detach(), (4, 4), 1))
    assert hub.pos_embed.shape == timm_way.pos_embed.shape == (1, 17, 48)
    assert not torch.allclose(hub.pos_embed, timm_way.pos_embed)
    assert hub(torch.randn(1, 3, 32, 32)).shape == (1, 10)
