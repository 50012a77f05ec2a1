"""SSF against an independent rewrite of the official code's forward (dongzelian/SSF, models/vision_transformer.py).

``official_ssf_ada`` and ``official_vit_forward`` are written here in plain torch from that file: the ViT of its
``VisionTransformer.forward_features`` with ``ssf_ada(x, scale, shift)`` where its ``Attention``, ``Mlp``, ``Block``,
``PatchEmbed`` and ``VisionTransformer`` apply it under ``tuning_mode == 'ssf'``, and its parameters under the
official names (``blocks.0.attn.ssf_scale_1`` is the qkv pair, ...). Our tensors are mapped into that layout; the
logits and the gradients of every trained tensor must agree.
"""

from __future__ import annotations

import copy
from functools import partial

import pytest
import torch
import torch.nn.functional as F
from helpers import perturb, tiny_vit
from torch import Tensor, nn

from pvera_bench.adapters import adapter_parameters, apply_adapter, merge_adapter
from pvera_bench.adapters.ssf import SsfLayer
from pvera_bench.config import Convention

DIM, DEPTH, MLP, HEADS, PATCH, EPS = 48, 2, 192, 3, 8, 1e-6  # helpers.tiny_vit
# official parameter owner -> (its pair _1, its pair _2) as our module paths, per block and outside the blocks
OFFICIAL_BLOCK_PAIRS = {"": ("norm1", "norm2"), "attn.": ("attn.qkv", "attn.proj"), "mlp.": ("mlp.fc1", "mlp.fc2")}
OFFICIAL_TOP_PAIRS = {"patch_embed.ssf_%s_1": "patch_embed.proj", "ssf_%s_1": "norm"}


@pytest.fixture
def images() -> Tensor:
    return torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def official_ssf_ada(x: Tensor, scale: Tensor, shift: Tensor) -> Tensor:
    """The official ssf_ada: scale and shift the last dim, or dim 1 of a (B, C, H, W) map."""
    assert scale.shape == shift.shape
    if x.shape[-1] == scale.shape[0]:
        return x * scale + shift
    if x.shape[1] == scale.shape[0]:
        return x * scale.view(1, -1, 1, 1) + shift.view(1, -1, 1, 1)
    raise ValueError("the input tensor shape does not match the shape of the scale factor.")


def official_vit_forward(w: dict[str, Tensor], images: Tensor) -> Tensor:
    """The official SSF ViT (token pooling, no LayerScale, eval), from frozen weights and official SSF names."""

    def ada(x: Tensor, owner: str, k: int) -> Tensor:
        return official_ssf_ada(x, w[f"{owner}ssf_scale_{k}"], w[f"{owner}ssf_shift_{k}"])

    x = F.conv2d(images, w["patch_embed.proj.weight"], w["patch_embed.proj.bias"], stride=PATCH)
    x = ada(x.flatten(2).transpose(1, 2), "patch_embed.", 1)  # PatchEmbed: after the flatten; no patch norm
    x = torch.cat([w["cls_token"].expand(len(x), -1, -1), x], dim=1) + w["pos_embed"]
    for i in range(DEPTH):
        p = f"blocks.{i}."
        h = ada(F.layer_norm(x, (DIM,), w[p + "norm1.weight"], w[p + "norm1.bias"], EPS), p, 1)
        qkv = ada(F.linear(h, w[p + "attn.qkv.weight"], w[p + "attn.qkv.bias"]), p + "attn.", 1)
        q, k, v = qkv.reshape(len(x), -1, 3, HEADS, DIM // HEADS).permute(2, 0, 3, 1, 4)
        attn = ((q @ k.transpose(-2, -1)) * (DIM // HEADS) ** -0.5).softmax(dim=-1)
        out = (attn @ v).transpose(1, 2).reshape(len(x), -1, DIM)
        x = x + ada(F.linear(out, w[p + "attn.proj.weight"], w[p + "attn.proj.bias"]), p + "attn.", 2)
        h = ada(F.layer_norm(x, (DIM,), w[p + "norm2.weight"], w[p + "norm2.bias"], EPS), p, 2)
        h = F.gelu(ada(F.linear(h, w[p + "mlp.fc1.weight"], w[p + "mlp.fc1.bias"]), p + "mlp.", 1))
        x = x + ada(F.linear(h, w[p + "mlp.fc2.weight"], w[p + "mlp.fc2.bias"]), p + "mlp.", 2)
    x = ada(F.layer_norm(x, (DIM,), w["norm.weight"], w["norm.bias"], EPS), "", 1)  # after the final norm
    return F.linear(x[:, 0], w["head.weight"], w["head.bias"])


def official_names(model: nn.Module) -> dict[str, str]:
    """Official SSF parameter name -> our parameter name, for every SSF pair of ``model``."""
    pairs = {}
    for kind in ("scale", "shift"):
        for official, ours in OFFICIAL_TOP_PAIRS.items():
            pairs[official % kind] = f"{ours}.ssf_{kind}"
        for i in range(DEPTH):
            for owner, modules in OFFICIAL_BLOCK_PAIRS.items():
                for k, module in enumerate(modules, start=1):
                    pairs[f"blocks.{i}.{owner}ssf_{kind}_{k}"] = f"blocks.{i}.{module}.ssf_{kind}"
    return pairs


@pytest.mark.parametrize("convention", list(Convention))
def test_logits_and_gradients_match_the_official_forward(convention, images):
    model = apply_adapter(tiny_vit(), "ssf", convention=convention).eval()
    perturb(model)
    ours = dict(model.named_parameters())
    trained = {n: p for n, p in ours.items() if p.requires_grad}
    to_ours = {**official_names(model), "head.weight": "head.weight", "head.bias": "head.bias"}
    assert set(to_ours.values()) == set(trained)  # the official code trains exactly these tensors
    frozen = {n.replace(".base_layer", ""): p.detach() for n, p in ours.items() if not p.requires_grad}
    official = {**frozen, **{o: trained[n].detach().clone().requires_grad_() for o, n in to_ours.items()}}

    logits = model(images)
    expected = official_vit_forward(official, images)
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-6)
    loss_weights = torch.randn(logits.shape, generator=torch.Generator().manual_seed(3))
    our_grads = torch.autograd.grad((logits * loss_weights).sum(), list(trained.values()))
    official_grads = torch.autograd.grad((expected * loss_weights).sum(), [official[o] for o in to_ours])
    by_name = dict(zip(trained, our_grads, strict=True))
    for (o, n), grad in zip(to_ours.items(), official_grads, strict=True):
        torch.testing.assert_close(by_name[n], grad, rtol=1e-5, atol=1e-6, msg=f"{n} (official {o})")


def test_every_official_place_is_adapted_and_counts_follow_the_formula():
    model = apply_adapter(tiny_vit(), "ssf")
    layers = {name: m for name, m in model.named_modules() if isinstance(m, SsfLayer)}
    per_block = ["norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2"]
    assert set(layers) == {"patch_embed.proj", "norm"} | {f"blocks.{i}.{p}" for i in range(DEPTH) for p in per_block}
    assert layers["blocks.0.attn.qkv"].ssf_scale.shape == (3 * DIM,)  # the whole fused qkv: q, k and v
    assert layers["blocks.0.mlp.fc1"].ssf_scale.shape == (MLP,)
    count = sum(p.numel() for p in adapter_parameters(model).values())
    assert count == 2 * (DIM + DEPTH * (DIM + 3 * DIM + DIM + DIM + MLP + DIM) + DIM)
    with_patch_norm = apply_adapter(tiny_vit(embed_norm_layer=partial(nn.LayerNorm, eps=EPS)), "ssf")
    assert isinstance(with_patch_norm.patch_embed.norm, SsfLayer)  # official: PatchEmbed's norm when it has one
    assert sum(p.numel() for p in adapter_parameters(with_patch_norm).values()) == count + 2 * DIM


def test_initialisation_is_the_official_normal_draws():
    model = apply_adapter(tiny_vit(), "ssf")
    scales = torch.cat([p for n, p in adapter_parameters(model).items() if n.endswith("ssf_scale")])
    shifts = torch.cat([p for n, p in adapter_parameters(model).items() if n.endswith("ssf_shift")])
    assert len(scales) == len(shifts) == 2 * DIM + DEPTH * (7 * DIM + MLP)
    assert abs(scales.mean().item() - 1.0) < 0.002 and abs(scales.std().item() - 0.02) < 0.002
    assert abs(shifts.mean().item()) < 0.002 and abs(shifts.std().item() - 0.02) < 0.002


def test_zero_init_std_is_the_identity(images):
    backbone = tiny_vit()
    model = apply_adapter(copy.deepcopy(backbone), "ssf", init_std=0.0).eval()
    with torch.no_grad():
        assert torch.equal(model(images), backbone(images))


def test_merged_equals_unmerged_and_costs_the_bare_backbone_without_biases_and_with_layerscale(images):
    """What the registry-wide merge test (test_adapters.py, a ViT-B-like tiny ViT) leaves out: layers without a bias
    (qkv, and the patch embedding under pre_norm), LayerScale, and that the shifts become those layers' biases."""
    kwargs = {"qkv_bias": False, "pre_norm": True, "init_values": 1e-5}
    model = apply_adapter(tiny_vit(**kwargs), "ssf")
    perturb(model)
    model.eval()
    with torch.no_grad():
        unmerged = model(images)
        merged_model = merge_adapter(model)
        merged = merged_model(images)
    assert (merged - unmerged).abs().max().item() <= 1e-5
    assert not any(isinstance(m, SsfLayer) for m in merged_model.modules())
    bare = tiny_vit(**kwargs)
    no_bias = {f"{n}.bias" for n, m in bare.named_modules() if getattr(m, "bias", 0) is None}
    assert set(merged_model.state_dict()) == set(bare.state_dict()) | no_bias  # the shift became a bias
    with torch.no_grad():
        assert (unmerged - bare(images)).abs().max().item() > 1e-2


def test_the_fold_is_the_equation_on_each_kind_of_module():
    model = apply_adapter(tiny_vit(), "ssf")
    perturb(model)
    for path, x in (("patch_embed.proj", torch.randn(2, 3, 32, 32)), ("norm", torch.randn(2, 5, DIM))):
        layer = model.get_submodule(path)
        with torch.no_grad():
            expected = official_ssf_ada(layer.base_layer(x), layer.ssf_scale, layer.ssf_shift)
            torch.testing.assert_close(layer(x), expected)
            torch.testing.assert_close(copy.deepcopy(layer).merged_layer()(x), expected, rtol=1e-5, atol=1e-6)


def test_output_keeps_the_base_layers_dtype_under_autocast():
    model = apply_adapter(tiny_vit(), "ssf")
    x = torch.randn(2, 5, DIM)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        for path in ("blocks.0.attn.qkv", "blocks.0.norm1"):
            layer = model.get_submodule(path)
            assert layer(x).dtype == layer.base_layer(x).dtype
        assert model(torch.randn(2, 3, 32, 32)).dtype == torch.bfloat16


def test_bad_values_and_unsupported_models_raise_one_line_errors():
    for bad in (-0.1, float("nan")):
        with pytest.raises(ValueError, match=r"^adapter.init_std must be a finite number >= 0, got"):
            apply_adapter(tiny_vit(), "ssf", init_std=bad)
    with pytest.raises(ValueError, match=r"^adapter=ssf: norm must be a LayerNorm, got Identity$"):
        apply_adapter(tiny_vit(global_pool="avg"), "ssf")  # fc_norm models: timm's final norm is an Identity
    with pytest.raises(TypeError, match="has no .blocks"):
        apply_adapter(nn.Linear(2, 2), "ssf")
