"""BitFit and LayerNorm tuning against the official selection rules and an independent forward of the ViT.

The official code trains tensors of the unchanged ViT chosen by a substring of their name: V-PETL Bench
``train_model_bitfit.py`` (``'bias' in n or 'head' in n``) and ``train_model_lntune.py`` (``'norm' in n or 'head'
in n``), as OSU-MLB/PETL_Vision ``experiment/build_model.py`` does. ``official_vit_forward`` is that unchanged ViT
(token pooling, eval) in plain torch; fed our tensors, it must give our logits and the gradients of every trained one.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from helpers import perturb, tiny_vit
from torch import Tensor, nn

from pvera_bench.adapters import adapter_parameters, apply_adapter, merge_adapter
from pvera_bench.config import Convention

DIM, DEPTH, MLP, HEADS, PATCH, EPS = 48, 2, 192, 3, 8, 1e-6  # helpers.tiny_vit
OFFICIAL_SUBSTRING = {"bitfit": "bias", "ln_tuning": "norm"}
CASES = [(name, convention) for name in OFFICIAL_SUBSTRING for convention in Convention]


@pytest.fixture
def images() -> Tensor:
    return torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def official_trainable(model: nn.Module, name: str) -> set[str]:
    """The official rule: a parameter trains if its name contains the method's substring, or ``head``."""
    return {n for n, _ in model.named_parameters() if OFFICIAL_SUBSTRING[name] in n or "head" in n}


def official_vit_forward(w: dict[str, Tensor], images: Tensor) -> Tensor:
    """The official (unchanged) ViT: patch conv, cls + position, pre-LN blocks, final LN, head on the cls token."""
    x = F.conv2d(images, w["patch_embed.proj.weight"], w["patch_embed.proj.bias"], stride=PATCH)
    x = torch.cat([w["cls_token"].expand(len(x), -1, -1), x.flatten(2).transpose(1, 2)], dim=1) + w["pos_embed"]
    for i in range(DEPTH):
        p = f"blocks.{i}."
        h = F.layer_norm(x, (DIM,), w[p + "norm1.weight"], w[p + "norm1.bias"], EPS)
        q, k, v = F.linear(h, w[p + "attn.qkv.weight"], w[p + "attn.qkv.bias"]).chunk(3, dim=-1)
        q, k, v = (t.reshape(len(x), -1, HEADS, DIM // HEADS).transpose(1, 2) for t in (q, k, v))
        attn = ((q @ k.transpose(-2, -1)) * (DIM // HEADS) ** -0.5).softmax(dim=-1)
        out = (attn @ v).transpose(1, 2).reshape(len(x), -1, DIM)
        x = x + F.linear(out, w[p + "attn.proj.weight"], w[p + "attn.proj.bias"])
        h = F.layer_norm(x, (DIM,), w[p + "norm2.weight"], w[p + "norm2.bias"], EPS)
        h = F.gelu(F.linear(h, w[p + "mlp.fc1.weight"], w[p + "mlp.fc1.bias"]))
        x = x + F.linear(h, w[p + "mlp.fc2.weight"], w[p + "mlp.fc2.bias"])
    x = F.layer_norm(x, (DIM,), w["norm.weight"], w["norm.bias"], EPS)
    return F.linear(x[:, 0], w["head.weight"], w["head.bias"])


def trained_names(model: nn.Module) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("name, convention", CASES)
def test_exactly_the_official_tensors_train(name, convention):
    model = apply_adapter(tiny_vit(), name, convention=convention)
    blocks = [f"blocks.{i}." for i in range(DEPTH)]
    if name == "bitfit":
        per_block = ["norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2"]
        listed = {"patch_embed.proj.bias", "norm.bias"} | {f"{b}{m}.bias" for b in blocks for m in per_block}
    else:
        norms = [f"{b}{m}" for b in blocks for m in ("norm1", "norm2")] + ["norm"]
        listed = {f"{m}.{t}" for m in norms for t in ("weight", "bias")}
    assert trained_names(model) == official_trainable(tiny_vit(), name) == listed | {"head.weight", "head.bias"}


def test_parameter_counts_follow_the_formulas():
    counts = {
        n: sum(p.numel() for p in adapter_parameters(apply_adapter(tiny_vit(), n)).values()) for n in OFFICIAL_SUBSTRING
    }
    assert counts["bitfit"] == DIM + DEPTH * (DIM + 3 * DIM + DIM + DIM + MLP + DIM) + DIM  # patch, blocks, final norm
    assert counts["ln_tuning"] == (4 * DEPTH + 2) * DIM  # weight and bias of norm1, norm2 per block and the final norm


@pytest.mark.parametrize("name, convention", CASES)
def test_logits_and_gradients_match_the_official_forward(name, convention, images):
    model = apply_adapter(tiny_vit(), name, convention=convention).eval()
    perturb(model)  # the tuned tensors move off the backbone's values
    trained = {n: p for n, p in model.named_parameters() if p.requires_grad}
    official = {n: p.detach().clone().requires_grad_(n in trained) for n, p in model.named_parameters()}
    logits = model(images)
    expected = official_vit_forward(official, images)
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-6)
    loss_weights = torch.randn(logits.shape, generator=torch.Generator().manual_seed(3))
    ours = torch.autograd.grad((logits * loss_weights).sum(), list(trained.values()))
    theirs = torch.autograd.grad((expected * loss_weights).sum(), [official[n] for n in trained])
    for param_name, a, b in zip(trained, ours, theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=param_name)


@pytest.mark.parametrize("name, convention", CASES)
def test_identity_at_init(name, convention, images):
    backbone = tiny_vit()
    model = apply_adapter(copy.deepcopy(backbone), name, convention=convention).eval()
    assert not any(hasattr(m, "base_layer") for m in model.modules())  # nothing is wrapped or added
    with torch.no_grad():
        assert torch.equal(model(images), backbone(images))


@pytest.mark.parametrize("name, convention", CASES)
def test_merged_model_is_the_bare_backbone_with_its_tuned_tensors(name, convention, images):
    model = apply_adapter(tiny_vit(init_values=1e-5), name, convention=convention)  # LayerScale, as DINOv2
    perturb(model)
    model.eval()
    tuned = {n: p.detach().clone() for n, p in adapter_parameters(model).items()}
    with torch.no_grad():
        unmerged = model(images)
        merged_model = merge_adapter(model)
        merged = merged_model(images)
        moved = (unmerged - tiny_vit(init_values=1e-5)(images)).abs().max().item()
    assert (merged - unmerged).abs().max().item() <= 1e-5 and moved > 1e-3
    bare = tiny_vit(init_values=1e-5).state_dict()
    state = merged_model.state_dict()
    assert set(state) == set(bare)
    assert all(torch.equal(state[n], tuned[n] if n in tuned else bare[n]) for n in bare if not n.startswith("head."))
    assert trained_names(merged_model) == {"head.weight", "head.bias"}


def test_ln_tuning_follows_the_name_prefix_beyond_the_block_norms():
    """With ``pre_norm`` and ``qk_norm`` (CLIP-like): ``norm_pre`` trains, as with the official substring match;
    ``q_norm`` / ``k_norm`` do not (the substring match would train them)."""
    model = apply_adapter(tiny_vit(pre_norm=True, qk_norm=True), "ln_tuning")
    qk_norms = {n for n in official_trainable(model, "ln_tuning") if ".q_norm." in n or ".k_norm." in n}
    assert qk_norms and {"norm_pre.weight", "norm_pre.bias"} <= trained_names(model)
    assert trained_names(model) == official_trainable(model, "ln_tuning") - qk_norms


def test_bad_values_and_unsupported_models_raise_one_line_errors():
    for name in OFFICIAL_SUBSTRING:
        with pytest.raises(ValueError, match=r"^adapter.lr must be positive, got 0.0$"):
            apply_adapter(tiny_vit(), name, lr=0.0)
        with pytest.raises(TypeError, match="has no .blocks"):
            apply_adapter(nn.Linear(2, 2), name)
    no_bias = nn.Module()
    no_bias.blocks = nn.Sequential(nn.Linear(2, 2, bias=False))
    with pytest.raises(ValueError, match=r"^adapter=bitfit: Module has no bias outside its head: nothing would train$"):
        apply_adapter(no_bias, "bitfit")
    message = r"^adapter=ln_tuning: norm is Identity, not a LayerNorm with an affine weight to tune$"
    with pytest.raises(ValueError, match=message):
        apply_adapter(tiny_vit(global_pool="avg"), "ln_tuning")  # the final norm is timm's fc_norm
