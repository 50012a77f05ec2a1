"""Backbones from timm: local weights through timm's pretrained-cfg overlay, and clear errors."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from pvera_bench.backbone import create_backbone, input_spec
from pvera_bench.config import BackboneConfig
from pvera_bench.errors import UserError

TINY = dict(
    id="tiny",
    name="vit_tiny_patch16_224",
    pretrained=False,
    img_size=28,
    model_kwargs={"patch_size": 14, "embed_dim": 192, "depth": 4, "num_heads": 3},
)


def test_local_weights_load_through_timm(tmp_path):
    torch.manual_seed(0)
    source = create_backbone(BackboneConfig(**TINY), num_classes=10)
    weights = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(weights))
    torch.manual_seed(1)  # a different init, so equality can only come from the file
    loaded = create_backbone(BackboneConfig(**{**TINY, "weights": str(weights)}), num_classes=7)
    loaded_state = loaded.state_dict()
    for key, value in source.state_dict().items():
        if not key.startswith("head."):
            assert torch.equal(loaded_state[key], value), key
    assert loaded.head.out_features == 7  # timm drops the file's 10-class head for the new task


def test_missing_weights_file_is_named(tmp_path):
    missing = tmp_path / "nope.safetensors"
    with pytest.raises(UserError, match=f"^backbone.weights={missing}: no such file$"):
        create_backbone(BackboneConfig(**{**TINY, "weights": str(missing)}), num_classes=10)


def test_weights_of_another_model_are_rejected(tmp_path):
    weights = tmp_path / "other.safetensors"
    save_file({"pos_embed": torch.zeros(1, 3, 3)}, str(weights))
    with pytest.raises(UserError, match="does not fit vit_tiny_patch16_224"):
        create_backbone(BackboneConfig(**{**TINY, "weights": str(weights)}), num_classes=10)


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
