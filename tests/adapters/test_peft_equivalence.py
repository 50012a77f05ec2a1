"""Numerical equivalence with Hugging Face PEFT, adapting the same layers with the same weights.

PEFT adapts whole Linear modules, so the reference model splits each fused ``attn.qkv`` into
separate q, k, v Linears (same weights); PEFT then targets q and v (k and v for IA3), which is
exactly what pvera_bench's q/v slices of the fused layer adapt. Every adapter is built with
``convention="peft"``; the defaults (``official``) follow the official PVeRA code instead.
"""

from __future__ import annotations

import copy

import peft
import pytest
import torch
from helpers import perturb, tiny_vit
from torch import nn

from pvera_bench.adapters import apply_adapter
from pvera_bench.models.peft_compat import split_qkv

QV, KV = r".*attn\.qkv\.(q|v)", r".*attn\.qkv\.(k|v)"


def peft_reference(config: peft.PeftConfig) -> nn.Module:
    return peft.get_peft_model(split_qkv(tiny_vit()), config)


def peft_layer(reference: nn.Module, block: int, name: str) -> nn.Module:
    return getattr(reference.base_model.model.blocks[block].attn.qkv, name)


def copy_low_rank(ours: nn.Module, reference: nn.Module, slices: str) -> None:
    """Copy our stacked per-slice tensors into PEFT's per-module ones."""
    with torch.no_grad():
        for b, block in enumerate(ours.blocks):
            layer = block.attn.qkv
            for i, name in enumerate(slices):
                target = peft_layer(reference, b, name)
                target.lora_A["default"].weight.copy_(layer.lora_A[i])
                target.lora_B["default"].weight.copy_(layer.lora_B[i])
                if hasattr(layer, "lora_magnitude"):
                    target.lora_magnitude_vector["default"].weight.copy_(layer.lora_magnitude[i])


def assert_same_outputs(ours: nn.Module, reference: nn.Module) -> None:
    """Same eval outputs, and the same gradient reaches the input through every adapted layer."""
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    ours.eval(), reference.eval()
    gradients = []
    for model in (reference, ours):
        leaf = images.clone().requires_grad_(True)
        model(leaf).square().sum().backward()
        gradients.append(leaf.grad)
    torch.testing.assert_close(gradients[1], gradients[0], rtol=1e-4, atol=1e-5)
    with torch.no_grad():
        expected = reference(images)
        torch.testing.assert_close(ours(images), expected, rtol=0, atol=1e-5)
    assert (expected - tiny_vit()(images)).abs().max() > 1e-3  # the adapters do change the output


@pytest.mark.parametrize("name, use_dora", [("lora", False), ("dora", True)])
def test_lora_and_dora_match_peft(name, use_dora):
    ours = apply_adapter(tiny_vit(), name, r=4, convention="peft")
    assert ours.blocks[0].attn.qkv.scaling == 8 / 4  # PEFT's lora_alpha=8 is the peft convention's default
    perturb(ours)
    reference = peft_reference(peft.LoraConfig(r=4, lora_alpha=8, target_modules=QV, use_dora=use_dora))
    copy_low_rank(ours, reference, "qv")
    assert_same_outputs(ours, reference)
    # and the same gradients of the adapter's tensors (PEFT's DoRA detaches the norm, as the peft convention does)
    for b, block in enumerate(ours.blocks):
        for i, slice_name in enumerate("qv"):
            target = peft_layer(reference, b, slice_name)
            for ours_grad, peft_grad in [
                (block.attn.qkv.lora_A.grad[i], target.lora_A["default"].weight.grad),
                (block.attn.qkv.lora_B.grad[i], target.lora_B["default"].weight.grad),
            ]:
                torch.testing.assert_close(ours_grad, peft_grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", ["vera", "pvera"])
def test_vera_and_pvera_match_peft(name):
    ours = apply_adapter(tiny_vit(), name, r=16, projection_seed=5, convention="peft")
    layer = ours.blocks[0].attn.qkv
    assert layer.alpha == 1.0 and torch.all(getattr(layer, f"{name}_lambda_d") == 0.1)  # PEFT's d_initial=0.1
    perturb(ours)
    config_cls = peft.VeraConfig if name == "vera" else peft.PveraConfig
    reference = peft_reference(config_cls(r=16, d_initial=0.1, projection_prng_key=5, target_modules=QV))
    # one pair for every slice; same seed, same draw order: the shared random matrices are PEFT's, bit for bit
    assert layer.projections.A.shape[0] == 1 and layer.projections.B.shape[0] == 1
    assert torch.equal(layer.A[0], getattr(reference.base_model, f"{name}_A")["default"])
    assert torch.equal(layer.B[0], getattr(reference.base_model, f"{name}_B")["default"])
    with torch.no_grad():
        for b, block in enumerate(ours.blocks):
            for i, slice_name in enumerate("qv"):
                target = peft_layer(reference, b, slice_name)
                for vector in ("lambda_d", "lambda_b"):  # the same parameter names as PEFT's
                    getattr(target, f"{name}_{vector}")["default"].copy_(getattr(block.attn.qkv, f"{name}_{vector}")[i])
    assert_same_outputs(ours, reference)  # eval: PVeRA uses the mean latent, as PEFT does by default


def test_ia3_matches_peft():
    ours = apply_adapter(tiny_vit(), "ia3", convention="peft")
    perturb(ours)
    reference = peft_reference(peft.IA3Config(target_modules=rf"{KV}|.*mlp\.fc2", feedforward_modules=r".*mlp\.fc2"))
    with torch.no_grad():
        for b, block in enumerate(ours.blocks):
            scales = block.attn.qkv.ia3_l.view(2, -1)
            for i, slice_name in enumerate("kv"):
                peft_layer(reference, b, slice_name).ia3_l["default"].copy_(scales[i].view(-1, 1))
            fc2 = reference.base_model.model.blocks[b].mlp.fc2
            fc2.ia3_l["default"].copy_(block.mlp.fc2.ia3_l.view(1, -1))
    assert_same_outputs(ours, reference)


def test_reference_split_is_exact():
    model = tiny_vit()
    split = split_qkv(copy.deepcopy(model))
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(split(images), model(images), rtol=0, atol=1e-6)
