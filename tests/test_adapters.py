"""Every registered adapter on a tiny ViT: shapes, gradients, identity at init, merging, counts."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import perturb, tiny_vit

from pvera_bench.adapters import ADAPTERS, adapter_parameters, apply_adapter, merge_adapter, sample_latents
from pvera_bench.adapters.base import AddIntoSlices, adapter_loss, slice_view
from pvera_bench.adapters.dora import RescaleSlices
from pvera_bench.adapters.ia3 import ScaledFrozenLinear
from pvera_bench.adapters.pvera import SampleLatent
from pvera_bench.adapters.vera import AddScaledProjection

IDENTITY_AT_INIT = ["lora", "dora", "vera", "pvera", "ia3", "adaptformer"]
MERGEABLE = ["lora", "dora", "vera", "pvera", "ia3"]
DIM, DEPTH, MLP = 48, 2, 192  # the tiny ViT of conftest.tiny_vit


@pytest.fixture
def images() -> torch.Tensor:
    return torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("name", sorted(ADAPTERS))
def test_output_shape_and_only_adapter_and_head_get_gradients(name, images):
    model = apply_adapter(tiny_vit(num_classes=5), name).train()
    out = model(images)
    assert out.shape == (3, 5)
    out.square().sum().backward()
    spec = ADAPTERS[name]
    for param_name, param in model.named_parameters():
        parts = param_name.split(".")
        expected = (
            parts[0] == "head"
            or spec.prefix == "*"
            or (spec.prefix is not None and any(part.startswith(spec.prefix) for part in parts))
        )
        assert param.requires_grad == expected, param_name
        assert (param.grad is not None) == expected, param_name
    assert set(adapter_parameters(model)) == {
        n for n, p in model.named_parameters() if p.requires_grad and not n.startswith("head.")
    }


@pytest.mark.parametrize("name", IDENTITY_AT_INIT)
def test_adapted_model_equals_frozen_backbone_at_init(name, images):
    backbone = tiny_vit()
    adapted = apply_adapter(copy.deepcopy(backbone), name).eval()
    with torch.no_grad():
        torch.testing.assert_close(adapted(images), backbone(images), rtol=0, atol=1e-6)


@pytest.mark.parametrize("slices", [None, "default"], ids=["whole-fused-qkv", "default-slices"])
@pytest.mark.parametrize("name", MERGEABLE)
def test_merged_equals_unmerged(name, slices, images):
    model = apply_adapter(tiny_vit(), name, **({"qkv_slices": None} if slices is None else {}))
    model.train()
    model(images).square().sum().backward()  # the training path runs too
    assert all(p.grad is not None for p in adapter_parameters(model).values())
    perturb(model)
    model.eval()
    with torch.no_grad():
        unmerged = model(images)
        merged_model = merge_adapter(model)
        merged = merged_model(images)
    assert not any(hasattr(m, "base_layer") for m in merged_model.modules())
    assert (merged - unmerged).abs().max().item() <= 1e-5
    assert (unmerged - tiny_vit()(images)).abs().max().item() > 1e-3  # the update is not trivially zero


@pytest.mark.parametrize("name", ["adaptformer", "bottleneck"])
def test_structural_adapters_refuse_to_merge(name):
    model = apply_adapter(tiny_vit(), name)
    with pytest.raises(ValueError, match=f"adapter '{name}' changes the network's structure and cannot be merged"):
        merge_adapter(model)


def count(name: str, **hparams) -> int:
    return sum(p.numel() for p in adapter_parameters(apply_adapter(tiny_vit(), name, **hparams)).values())


def test_parameter_counts_follow_the_formulas():
    r, hidden = 4, 8
    assert count("linear") == 0
    assert count("lora", r=r) == DEPTH * 2 * r * (DIM + DIM)
    assert count("dora", r=r) == DEPTH * 2 * (r * (DIM + DIM) + DIM)
    assert count("vera", r=r) == DEPTH * 2 * (r + DIM)
    assert count("pvera", r=r) == DEPTH * 2 * (2 * r + DIM)
    assert count("vera", r=256) == DEPTH * 2 * (256 + DIM)  # rank may exceed the width, as in the paper
    assert count("ia3") == DEPTH * (DIM + DIM + MLP)
    assert count("adaptformer", hidden_dim=hidden) == DEPTH * (2 * DIM * hidden + hidden + DIM)
    assert count("bottleneck", hidden_dim=hidden) == DEPTH * 2 * (2 * DIM * hidden + hidden + DIM)
    assert count("lora", r=r, qkv_slices=None) == DEPTH * r * (DIM + 3 * DIM)  # the whole fused qkv as one layer
    assert count("lora", r=r, targets=["attn.proj", "mlp.fc1"]) == DEPTH * r * ((DIM + DIM) + (DIM + MLP))
    full = tiny_vit()
    assert count("full") == sum(p.numel() for n, p in full.named_parameters() if not n.startswith("head."))


def test_lora_leaves_k_untouched(images):
    model = apply_adapter(tiny_vit(), "lora", r=4)
    perturb(model)
    qkv = model.blocks[0].attn.qkv
    x = torch.randn(2, 5, DIM)
    with torch.no_grad():
        change = qkv(x) - qkv.base_layer(x)
    assert change[..., :DIM].abs().max() > 0 and change[..., 2 * DIM :].abs().max() > 0
    assert change[..., DIM : 2 * DIM].abs().max() == 0


def test_add_into_slices_matches_indexing_and_finite_differences():
    generator = torch.Generator().manual_seed(0)
    out, update = (
        torch.randn(*shape, generator=generator, dtype=torch.float64, requires_grad=True)
        for shape in ((2, 4, 9), (2, 4, 2, 3))
    )
    slices = ((0, 3), (6, 9))  # the q and v columns of a fused qkv of width 3

    def add(out, update):
        return AddIntoSlices.apply(out.clone(), slices, update)

    assert torch.autograd.gradcheck(add, (out, update))
    expected = out.detach().clone()
    expected[..., 0:3] += update.detach()[..., 0, :]
    expected[..., 6:9] += update.detach()[..., 1, :]
    torch.testing.assert_close(add(out, update), expected)


def test_dora_rescale_matches_indexing_and_finite_differences():
    generator = torch.Generator().manual_seed(1)
    out, update, scale = (
        torch.randn(*shape, generator=generator, dtype=torch.float64, requires_grad=True)
        for shape in ((2, 4, 9), (2, 4, 2, 3), (2, 3))
    )
    slices = ((0, 3), (6, 9))

    def rescale(out, update, scale):
        return RescaleSlices.apply(out.clone(), slices, update, scale)

    assert torch.autograd.gradcheck(rescale, (out, update, scale))
    expected = out.detach().clone()
    for i, (start, stop) in enumerate(slices):
        expected[..., start:stop] = (expected[..., start:stop] + update.detach()[..., i, :]) * scale.detach()[i]
    torch.testing.assert_close(rescale(out, update, scale), expected)


def test_vera_scaled_projection_matches_indexing_and_finite_differences():
    generator = torch.Generator().manual_seed(2)
    out, latent, scale = (
        torch.randn(*shape, generator=generator, dtype=torch.float64, requires_grad=True)
        for shape in ((6, 9), (6, 2, 4), (2, 3))
    )
    projection = torch.randn(3, 4, generator=generator, dtype=torch.float64)  # B: frozen
    slices = ((0, 3), (6, 9))

    def add(out, latent, scale):
        return AddScaledProjection.apply(out.clone(), slices, latent, projection, scale)

    assert torch.autograd.gradcheck(add, (out, latent, scale))
    expected = out.detach().clone()
    for i, (start, stop) in enumerate(slices):
        expected[:, start:stop] += scale.detach()[i] * (latent.detach()[:, i] @ projection.T)
    torch.testing.assert_close(add(out, latent, scale), expected)


def test_pvera_latent_and_kl_match_the_formula_and_finite_differences():
    generator = torch.Generator().manual_seed(3)
    h, lambda_d = (
        torch.randn(*shape, generator=generator, dtype=torch.float64, requires_grad=True) for shape in ((6, 8), (2, 8))
    )
    noise = torch.randn(6, 2, 4, generator=generator, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda h, d: SampleLatent.apply(h, d, noise), (h, lambda_d))
    z, kl = SampleLatent.apply(h, lambda_d, noise)
    mu, logvar = (h.unsqueeze(-2) * lambda_d).detach().split(4, dim=-1)
    torch.testing.assert_close(z, mu + noise * (0.5 * logvar).exp())
    torch.testing.assert_close(kl, 0.5 * (mu.square() + logvar.exp() - 1 - logvar).mean())


@pytest.mark.parametrize("name", ["lora", "vera", "pvera", "dora", "ia3"])
def test_bf16_autocast_gradients_are_close_to_fp32(name, images):
    """The hand-written backward passes cast between bf16 products and fp32 parameters correctly."""
    model = apply_adapter(tiny_vit(), name).train()
    perturb(model)
    grads = {}
    for autocast in (False, True):
        model.zero_grad()
        torch.manual_seed(0)  # PVeRA: the same noise in both passes
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = model(images)
        out.float().square().sum().backward()
        grads[autocast] = {n: p.grad.clone() for n, p in adapter_parameters(model).items()}
    for param_name, fp32 in grads[False].items():
        assert grads[True][param_name].dtype == torch.float32
        error = (grads[True][param_name] - fp32).norm() / fp32.norm()
        assert error < 0.03, (param_name, error.item())


@pytest.mark.parametrize("on_input", [True, False], ids=["feedforward", "output"])
def test_ia3_scaled_linear_matches_the_formula_and_finite_differences(on_input):
    generator = torch.Generator().manual_seed(4)
    weight, bias = torch.randn(5, 4, generator=generator, dtype=torch.float64), torch.randn(5, dtype=torch.float64)
    x = torch.randn(6, 4, generator=generator, dtype=torch.float64, requires_grad=True)
    scale = torch.randn(4 if on_input else 5, generator=generator, dtype=torch.float64, requires_grad=True)

    def scaled_linear(x, scale):
        return ScaledFrozenLinear.apply(x, scale, weight, bias, on_input)

    assert torch.autograd.gradcheck(scaled_linear, (x, scale))
    plain = torch.nn.functional.linear
    expected = plain(x * scale, weight, bias) if on_input else scale * plain(x, weight, bias)
    torch.testing.assert_close(scaled_linear(x, scale), expected)


def test_slices_must_be_evenly_spaced():
    with pytest.raises(ValueError, match="evenly spaced"):
        slice_view(torch.zeros(2, 12), ((0, 3), (3, 6), (9, 12)))


def test_pvera_training_forward_is_the_reparametrised_update():
    model = apply_adapter(tiny_vit(), "pvera", r=4).train()
    perturb(model)
    layer = model.blocks[0].attn.qkv
    x = torch.randn(2, 5, DIM)
    torch.manual_seed(11)
    out = layer(x)
    torch.manual_seed(11)
    h = torch.nn.functional.linear(x, layer.projection_a()).unsqueeze(-2) * layer.lambda_d
    mu, logvar = h[..., :4], h[..., 4:]
    std = (0.5 * logvar).exp()
    z = mu + torch.randn_like(std) * std  # one draw per token, latent unit and slice
    expected = layer.base_layer(x)
    for i, (start, stop) in enumerate(layer.slices):
        expected[..., start:stop] += layer.lambda_b[i] * torch.nn.functional.linear(z[..., i, :], layer.projection_b())
    torch.testing.assert_close(out, expected)


@pytest.mark.parametrize("name", ["vera", "pvera"])
def test_random_projections_are_shared_and_regenerated_from_the_seed(name):
    model = apply_adapter(tiny_vit(), name, r=16, projection_seed=7)
    layers = [m for m in model.modules() if hasattr(m, "projection_a")]
    assert len(layers) == DEPTH
    assert len({layer.projection_a().data_ptr() for layer in layers}) == 1
    again = apply_adapter(tiny_vit(), name, r=16, projection_seed=7)
    other = apply_adapter(tiny_vit(), name, r=16, projection_seed=8)
    a = layers[0].projection_a()
    assert torch.equal(a, next(m for m in again.modules() if hasattr(m, "projection_a")).projection_a())
    assert not torch.equal(a, next(m for m in other.modules() if hasattr(m, "projection_a")).projection_a())
    bound = (6.0 / DIM) ** 0.5  # Kaiming-uniform, fan_in = input width
    assert a.abs().max() <= bound and a.abs().max() > 0.9 * bound
    assert not a.requires_grad and not layers[0].projection_b().requires_grad  # frozen buffers, not parameters
    assert not any("projections" in key for key in model.state_dict())  # regenerated, not saved


def test_pvera_kl_matches_the_closed_form():
    model = apply_adapter(tiny_vit(), "pvera", r=4).train()
    perturb(model)
    layer = model.blocks[0].attn.qkv
    x = torch.randn(2, 5, DIM)
    layer(x)
    kl = layer.kl()
    h = torch.nn.functional.linear(x, layer.projection_a()).double().unsqueeze(-2) * layer.lambda_d.double()
    mu, logvar = h[..., :4], h[..., 4:]
    expected = 0.5 * (mu**2 + logvar.exp() - 1 - logvar).mean()
    torch.testing.assert_close(kl.double(), expected, rtol=1e-4, atol=0)  # float32 sums of terms near 1 cancel
    assert torch.equal(adapter_loss(layer), kl)


def test_pvera_model_kl_is_the_sum_over_blocks(images):
    model = apply_adapter(tiny_vit(), "pvera", r=4).train()
    perturb(model)
    model(images)
    per_block = [b.attn.qkv.kl().item() for b in model.blocks]
    assert adapter_loss(model).item() == pytest.approx(sum(per_block))


def test_pvera_sampling_modes_differ_and_mean_is_deterministic(images):
    model = apply_adapter(tiny_vit(), "pvera", r=8)
    perturb(model)
    model.eval()
    outputs = {}
    with torch.no_grad():
        for mode in ("mean", "fixed", "random"):
            with sample_latents(model, mode):
                outputs[mode] = (model(images), model(images))
    assert torch.equal(*outputs["mean"]) and torch.equal(*outputs["fixed"])
    assert not torch.equal(*outputs["random"])  # a fresh draw per pass
    assert not torch.allclose(outputs["mean"][0], outputs["fixed"][0])
    assert not torch.allclose(outputs["mean"][0], outputs["random"][0])


def test_apply_adapter_rejects_bad_input():
    with pytest.raises(ValueError, match="unknown adapter 'nope'; registered: adaptformer, bottleneck, dora"):
        apply_adapter(tiny_vit(), "nope")
    model = apply_adapter(tiny_vit(), "lora")
    with pytest.raises(ValueError, match="model already has adapter 'lora'"):
        apply_adapter(model, "vera")
    with pytest.raises(ValueError, match="adapter target 'attn.nope' does not exist in block 0"):
        apply_adapter(tiny_vit(), "lora", targets=["attn.nope"])
    with pytest.raises(ValueError, match="adapter target 'mlp.act' is a GELU, not a Linear"):
        apply_adapter(tiny_vit(), "lora", targets=["mlp.act"])
    with pytest.raises(ValueError, match=r"adapter.qkv_slices must be distinct names from q, k, v; got \['q', 'x'\]"):
        apply_adapter(tiny_vit(), "vera", qkv_slices=["q", "x"])
    with pytest.raises(TypeError, match="unexpected keyword argument 'rank'"):
        apply_adapter(tiny_vit(), "lora", rank=4)
