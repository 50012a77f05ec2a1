"""DoRA's fidelity to the two codebases it follows: outputs and gradients, not only outputs.

``official_dora_qkv`` is an independent rewrite, in plain torch, of the equations of the official PVeRA code's DoRA
module (leofillioux/pvera ``models/adapters/dora.py``, ``DoRA.forward``): the fused qkv weight chunked into q, k, v;
``W'_t = m_t ⊙ (W_t + A_t B_t) / ||W_t + A_t B_t||`` for t in q, v with A ``(in, r)``, B ``(r, in)`` added to the
``(out, in)`` weight (the transposed product), the norm over dim 0 (one per input column) and differentiated, m of
shape ``(1, in)``; ``W'_k = m_k ⊙ W_k / ||W_k||``; no ``alpha / r``; the original biases. Under
``experiment=pvera_paper`` our DoRA must compute it, and train it, to 1e-5.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import compose_config, perturb, tiny_vit
from torch import Tensor

from pvera_bench.adapters import adapter_config, apply_adapter
from pvera_bench.models.build import build_model
from pvera_bench.models.runtime import seed_everything


def official_dora_qkv(x: Tensor, weight: Tensor, bias: Tensor, A: dict, B: dict, mag: dict) -> Tensor:
    """The official DoRA forward: W' per q/k/v chunk, then three linears concatenated."""
    outputs = []
    for t, (w, b) in zip("qkv", zip(weight.chunk(3, 0), bias.chunk(3, -1), strict=True), strict=True):
        adapted = w + A[t] @ B[t] if t in A else w
        outputs.append(F.linear(x, mag[t] * adapted / adapted.norm(p=2, dim=0, keepdim=True), b))
    return torch.cat(outputs, dim=-1)


def relative_error(ours: Tensor, expected: Tensor) -> float:
    return float((ours - expected).norm() / expected.norm())


def paper_dora(**overrides: str):
    """DoRA as ``experiment=pvera_paper`` builds it, on the tiny backbone."""
    cfg = compose_config("experiment=pvera_paper", "backbone=tiny", "dataset=mnist5k", "adapter=dora", "adapter.r=4")
    for key, value in overrides.items():
        cfg.quirks[key] = value
    seed_everything(0)
    return build_model(cfg)


@pytest.mark.parametrize("frozen_magnitude", [True, False], ids=["paper", "trainable-magnitude"])
def test_pvera_paper_dora_trains_as_the_official_module(frozen_magnitude):
    model = paper_dora(dora_frozen_magnitude=frozen_magnitude)
    config = adapter_config(model)
    assert (config.transposed_update, config.column_norm, config.unscaled) == (True, True, True)
    assert config.detach_norm is False and config.frozen_magnitude is frozen_magnitude
    perturb(model)
    layer = model.blocks[2].attn.qkv
    x = torch.randn(2, 5, layer.in_features, generator=torch.Generator().manual_seed(0))
    # the official tensors, mapped from ours: A_t = (our lora_A[t])ᵀ (in, r), B_t = (our lora_B[t])ᵀ (r, in)
    leaf = lambda t: t.detach().clone().requires_grad_(True)  # noqa: E731
    A = {t: leaf(layer.lora_A[i].T) for i, t in enumerate("qv")}
    B = {t: leaf(layer.lora_B[i].T) for i, t in enumerate("qv")}
    weight, bias = layer.base_layer.weight.detach(), layer.base_layer.bias.detach()
    mag = {t: leaf(layer.lora_magnitude[i].view(1, -1)) for i, t in enumerate("qv")}
    mag["k"] = weight.chunk(3, 0)[1].norm(p=2, dim=0, keepdim=True)
    expected = official_dora_qkv(x, weight, bias, A, B, mag)
    ours = layer(x)
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-6)
    upstream = torch.randn(ours.shape, generator=torch.Generator().manual_seed(1))
    (ours * upstream).sum().backward()
    (expected * upstream).sum().backward()
    for i, t in enumerate("qv"):  # the gradients through the differentiated column norm
        assert relative_error(layer.lora_A.grad[i], A[t].grad.T) < 1e-5
        assert relative_error(layer.lora_B.grad[i], B[t].grad.T) < 1e-5
        if not frozen_magnitude:
            assert relative_error(layer.lora_magnitude.grad[i], mag[t].grad.view(-1)) < 1e-5
    assert all(g.abs().max() > 0 for g in (layer.lora_A.grad, layer.lora_B.grad))


def test_detaching_the_norm_changes_the_gradients_not_the_outputs():
    """The official convention differentiates the norm, the peft one (PEFT, DoRA §4.3) detaches it."""
    models = {}
    for detach in (False, True):
        models[detach] = apply_adapter(tiny_vit(), "dora", r=4, detach_norm=detach)
        perturb(models[detach])
    assert adapter_config(apply_adapter(tiny_vit(), "dora")).detach_norm is False
    assert adapter_config(apply_adapter(tiny_vit(), "dora", convention="peft")).detach_norm is True
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    outputs = {detach: model(images) for detach, model in models.items()}
    torch.testing.assert_close(outputs[True], outputs[False])
    for output in outputs.values():
        output.square().sum().backward()
    grads = {detach: model.blocks[0].attn.qkv.lora_B.grad for detach, model in models.items()}
    assert (grads[True] - grads[False]).norm() > 1e-3 * grads[False].norm()


def test_column_norm_merges_and_starts_at_the_identity():
    model = apply_adapter(tiny_vit(), "dora", r=4, column_norm=True, transposed_update=True, unscaled=True)
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(model(images), tiny_vit()(images), rtol=1e-5, atol=1e-5)  # m = ||W|| per column
    perturb(model)
    layer = model.blocks[0].attn.qkv
    assert layer.lora_magnitude.shape == (2, layer.in_features)
    x = torch.randn(3, layer.in_features)
    with torch.no_grad():
        unmerged = layer(x)
        torch.testing.assert_close(layer.merged_layer()(x), unmerged, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "hparams, message",
    [
        ({"column_norm": True, "dropout": 0.1}, "adapter.column_norm (the official code's E2e) scales the input"),
        ({"transposed_update": True, "targets": ["mlp.fc1"], "qkv_slices": None}, "needs square adapted weights"),
    ],
)
def test_official_layout_refuses_what_it_cannot_compute(hparams, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        apply_adapter(tiny_vit(), "dora", r=4, **hparams)
