"""Every registered adapter on a tiny ViT, parametrised over the registry and its flags: shapes, gradients,
identity at init, merging, counts, sampling; and each adapter's own equation."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
import torch.nn.functional as F
from helpers import perturb, tiny_vit
from torch import nn

from pvera_bench.adapters import (
    ADAPTERS,
    adapter_config,
    adapter_loss,
    adapter_parameters,
    apply_adapter,
    lora,
    mc_dropout,
    merge_adapter,
    sample_latents,
    samples_at_test,
)
from pvera_bench.adapters.layers import spread_slices, take_slices
from pvera_bench.adapters.vera import VeraConfig
from pvera_bench.config import Convention

ALL = sorted(ADAPTERS)
CONVENTIONS = list(Convention)
IDENTITY_AT_INIT = [(n, c) for n in ALL for c in CONVENTIONS if c in ADAPTERS[n].identity_at_init]
NOT_IDENTITY_AT_INIT = [(n, c) for n in ALL for c in CONVENTIONS if c not in ADAPTERS[n].identity_at_init]
MERGEABLE = [n for n in ALL if ADAPTERS[n].mergeable]
NOT_MERGEABLE = [n for n in ALL if not ADAPTERS[n].mergeable]
STOCHASTIC = [n for n in ALL if ADAPTERS[n].stochastic]
DETERMINISTIC = [n for n in ALL if not ADAPTERS[n].stochastic]
RANDOM_PROJECTIONS = [n for n in ALL if issubclass(ADAPTERS[n].config_cls, VeraConfig)]  # VeRA and its kin
DIM, DEPTH, MLP = 48, 2, 192  # the tiny ViT of helpers.tiny_vit


@pytest.fixture
def images() -> torch.Tensor:
    return torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("name", ALL)
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


@pytest.mark.parametrize("name", ALL)
def test_the_adapter_lives_where_the_model_lives(name, images):
    """Applied to a bf16 model, every tensor the adapter adds is bf16, the model trains in bf16 without autocast,
    and it draws what the fp32 model draws; on the meta device (as on a GPU) nothing stays on the CPU."""
    torch.manual_seed(0)
    reference = apply_adapter(tiny_vit(), name)
    torch.manual_seed(0)
    model = apply_adapter(tiny_vit().to(torch.bfloat16), name).train()
    floating = [t for t in [*model.parameters(), *model.buffers()] if t.is_floating_point()]
    assert {t.dtype for t in floating} == {torch.bfloat16}
    for (key, ours), theirs in zip(model.state_dict().items(), reference.state_dict().values(), strict=True):
        if ours.is_floating_point():
            torch.testing.assert_close(ours, theirs.to(torch.bfloat16), msg=key)  # DoRA: norms taken in bf16
    logits = model(images.to(torch.bfloat16))
    assert logits.dtype == torch.bfloat16
    logits.float().sum().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.bfloat16 for p in model.parameters() if p.requires_grad)
    on_meta = apply_adapter(tiny_vit().to("meta"), name)
    assert {t.device.type for t in [*on_meta.parameters(), *on_meta.buffers()]} == {"meta"}


def test_tensors_made_after_an_injection_drops_old_ones_are_placed_too(monkeypatch):
    """An injection may drop a module and create tensors that Python places at the dropped ones' addresses."""

    def replace_the_norm_then_inject(model: nn.Module, config) -> None:
        model.norm = nn.LayerNorm(DIM)  # drops the bf16 norm's tensors, makes fp32 ones
        for index in range(20):
            model.register_parameter(f"extra_{index}", nn.Parameter(torch.zeros(DIM)))
        lora.inject(model, config)

    monkeypatch.setitem(ADAPTERS, "lora", dataclasses.replace(ADAPTERS["lora"], inject=replace_the_norm_then_inject))
    for _ in range(10):
        model = apply_adapter(tiny_vit().to(torch.bfloat16), "lora")
        assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


def test_identity_at_init_lists_are_the_documented_ones():
    assert ADAPTERS["adaptformer"].identity_at_init == (Convention.peft,)
    assert ADAPTERS["bottleneck"].identity_at_init == ()
    assert ("lora", Convention.official) in IDENTITY_AT_INIT and ("vera", Convention.peft) in IDENTITY_AT_INIT


@pytest.mark.parametrize("name, convention", IDENTITY_AT_INIT)
def test_adapted_model_equals_frozen_backbone_at_init(name, convention, images):
    backbone = tiny_vit()
    adapted = apply_adapter(copy.deepcopy(backbone), name, convention=convention).eval()
    with torch.no_grad():
        torch.testing.assert_close(adapted(images), backbone(images), rtol=0, atol=1e-6)


@pytest.mark.parametrize("name, convention", NOT_IDENTITY_AT_INIT)
def test_adapters_not_identity_at_init_change_the_output(name, convention, images):
    """They do change the output at init; under ``peft`` (near-zero init) only a little."""
    backbone = tiny_vit()
    adapted = apply_adapter(copy.deepcopy(backbone), name, convention=convention).eval()
    with torch.no_grad():
        change = (adapted(images) - backbone(images)).abs().max().item()
    assert change > 1e-4
    if convention == Convention.peft and name != "ssf":  # SSF's paper starts at N(1, 0.02), as its official code
        assert change < 0.1


@pytest.mark.parametrize("convention", CONVENTIONS)
@pytest.mark.parametrize("slices", [None, "default"], ids=["whole-fused-qkv", "default-slices"])
@pytest.mark.parametrize("name", MERGEABLE)
def test_merged_equals_unmerged(name, slices, convention, images):
    if slices is None and "qkv_slices" not in {f.name for f in dataclasses.fields(ADAPTERS[name].config_cls)}:
        pytest.skip(f"{name} adapts no qkv slices")
    model = apply_adapter(tiny_vit(), name, convention=convention, **({"qkv_slices": None} if slices is None else {}))
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


@pytest.mark.parametrize("name", NOT_MERGEABLE)
def test_adapters_not_mergeable_refuse_to_merge(name):
    model = apply_adapter(tiny_vit(), name)
    message = f"adapter '{name}' has no weight update to fold into the backbone and cannot be merged"
    with pytest.raises(ValueError, match=message):
        merge_adapter(model)
    assert adapter_config(model).name == name  # nothing was changed


def count(name: str, **hparams) -> int:
    return sum(p.numel() for p in adapter_parameters(apply_adapter(tiny_vit(), name, **hparams)).values())


def test_parameter_counts_follow_the_formulas():
    r, hidden = 4, 8
    assert count("linear") == 0
    assert count("lora", r=r) == DEPTH * 2 * r * (DIM + DIM)
    assert count("dora", r=r) == DEPTH * 2 * (r * (DIM + DIM) + DIM)
    assert count("dora", r=r, frozen_magnitude=True) == count("lora", r=r)  # the magnitude is a buffer
    assert count("vera", r=r) == DEPTH * 2 * (r + DIM)
    assert count("pvera", r=r) == DEPTH * 2 * (2 * r + DIM)
    assert count("vera", r=256) == DEPTH * 2 * (256 + DIM)  # rank may exceed the width, as in the paper
    assert count("ia3") == DEPTH * (DIM + DIM + MLP)
    assert count("adaptformer", hidden_dim=hidden) == DEPTH * (2 * DIM * hidden + hidden + DIM + 1)  # learnable s
    assert count("adaptformer", hidden_dim=hidden, convention="peft") == DEPTH * (2 * DIM * hidden + hidden + DIM)
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


def test_spread_slices_places_each_slice_and_take_slices_reads_it_back():
    values = torch.arange(12.0).view(2, 2, 3)  # (tokens, n_slices, width)
    spread = spread_slices(values, ((6, 9), (0, 3)), 9)  # v before q: placed by column, not by order
    expected = torch.zeros(2, 9)
    expected[:, 6:9], expected[:, 0:3] = values[:, 0], values[:, 1]
    assert torch.equal(spread, expected)
    assert torch.equal(take_slices(spread, ((6, 9), (0, 3))), values)
    ones_between = spread_slices(values, ((0, 3), (6, 9)), 9, fill=1.0)[:, 3:6]
    assert torch.equal(ones_between, torch.ones(2, 3))


@pytest.mark.parametrize("name", MERGEABLE)
def test_bf16_autocast_gradients_are_close_to_fp32(name, images):
    """Under bf16 autocast the weight updates' fp32 parameters get gradients close to the fp32 ones.

    (AdaptFormer is left out: on this tiny ViT a few of its ReLU gates flip sign in bf16, which moves its
    first block's down-projection gradient by up to ~25 %: rounding, not a cast error.)
    """
    hparams = {"dropout": 0.0} if name.startswith("fact") else {}  # FacT's 0.1 dropout adds bf16 noise above 0.03
    model = apply_adapter(tiny_vit(), name, **hparams).train()
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


# per convention: the factor on the update, and whether slice i has its own random pair (else pair 0 serves all)
ALPHA = {Convention.official: 16.0, Convention.peft: 1.0}
PAIR_PER_SLICE = {Convention.official: True, Convention.peft: False}


@pytest.mark.parametrize("convention", CONVENTIONS)
def test_vera_forward_is_its_equation(convention):
    model = apply_adapter(tiny_vit(), "vera", r=4, convention=convention)
    perturb(model)
    layer = model.blocks[0].attn.qkv
    assert layer.alpha == ALPHA[convention]
    assert layer.A.shape == (2 if PAIR_PER_SLICE[convention] else 1, 4, DIM)
    x = torch.randn(2, 5, DIM)
    expected = layer.base_layer(x)
    for i, (start, stop) in enumerate(layer.slices):
        pair = i if PAIR_PER_SLICE[convention] else 0
        latent = layer.vera_lambda_d[i] * F.linear(x, layer.A[pair])
        update = ALPHA[convention] * layer.vera_lambda_b[i] * F.linear(latent, layer.B[pair])
        expected[..., start:stop] += update
    torch.testing.assert_close(layer(x), expected)


@pytest.mark.parametrize("convention", CONVENTIONS)
def test_pvera_training_forward_is_the_reparametrised_update(convention):
    model = apply_adapter(tiny_vit(), "pvera", r=4, convention=convention).train()
    perturb(model)
    layer = model.blocks[0].attn.qkv
    x = torch.randn(2, 5, DIM)
    torch.manual_seed(11)
    out = layer(x)
    torch.manual_seed(11)
    pairs = [i if PAIR_PER_SLICE[convention] else 0 for i in range(len(layer.slices))]
    h = torch.stack([F.linear(x, layer.A[p]) for p in pairs], dim=-2) * layer.pvera_lambda_d
    mu, logvar = h[..., :4], h[..., 4:]
    std = (0.5 * logvar).exp()
    z = mu + torch.randn_like(std) * std  # one draw per token, slice and latent unit, in that memory order
    expected = layer.base_layer(x)
    for i, (start, stop) in enumerate(layer.slices):
        update = ALPHA[convention] * layer.pvera_lambda_b[i] * F.linear(z[..., i, :], layer.B[pairs[i]])
        expected[..., start:stop] += update
    torch.testing.assert_close(out, expected)


@pytest.mark.parametrize("convention", CONVENTIONS)
@pytest.mark.parametrize("name", RANDOM_PROJECTIONS)
def test_random_projections_are_shared_and_regenerated_from_the_seed(name, convention):
    r = 16
    model = apply_adapter(tiny_vit(), name, r=r, projection_seed=7, convention=convention)
    layers = [m for m in model.modules() if hasattr(m, "projections")]
    assert len(layers) == DEPTH
    assert len({layer.A.data_ptr() for layer in layers}) == 1
    again = apply_adapter(tiny_vit(), name, r=r, projection_seed=7, convention=convention)
    other = apply_adapter(tiny_vit(), name, r=r, projection_seed=8, convention=convention)
    a, b = layers[0].A, layers[0].B
    assert torch.equal(a, again.blocks[0].attn.qkv.A) and torch.equal(b, again.blocks[0].attn.qkv.B)
    assert not torch.equal(a, other.blocks[0].attn.qkv.A)
    rows = a.shape[1]  # r, or 2r for PVeRA
    # Kaiming-uniform, fan_in of the stored tensor: (rows, in) and (out, r) under peft; (in, rows), (r, out) official
    a_fan, b_fan = (DIM, r) if convention == Convention.peft else (rows, DIM)
    for tensor, fan in ((a, a_fan), (b, b_fan)):
        bound = (6.0 / fan) ** 0.5
        assert tensor.abs().max() <= bound and tensor.abs().max() > 0.9 * bound
    assert not a.requires_grad and not layers[0].B.requires_grad  # frozen buffers, not parameters
    assert not any("projections" in key for key in model.state_dict())  # regenerated, not saved


@pytest.mark.parametrize("convention", CONVENTIONS)
def test_pvera_kl_matches_the_closed_form(convention):
    model = apply_adapter(tiny_vit(), "pvera", r=4, convention=convention).train()
    perturb(model)
    layer = model.blocks[0].attn.qkv
    x = torch.randn(2, 5, DIM)
    layer(x)
    kl = layer.kl()
    pairs = [i if PAIR_PER_SLICE[convention] else 0 for i in range(len(layer.slices))]
    h = torch.stack([F.linear(x.double(), layer.A[p].double()) for p in pairs], dim=-2)
    h = h * layer.pvera_lambda_d.double()
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
    assert all(kl > 0 for kl in per_block)


@pytest.mark.parametrize("name", STOCHASTIC)
def test_adapter_loss_comes_from_the_last_training_forward_only(name, images):
    model = apply_adapter(tiny_vit(), name)
    perturb(model)
    assert adapter_loss(model) is None  # no forward yet
    model.train()(images)
    loss = adapter_loss(model)
    assert loss.ndim == 0 and loss.item() > 0 and loss.requires_grad
    with torch.no_grad():
        model.eval()(images)
    assert adapter_loss(model) is None  # an eval forward leaves nothing


@pytest.mark.parametrize("name", DETERMINISTIC)
def test_deterministic_adapters_have_no_adapter_loss(name, images):
    model = apply_adapter(tiny_vit(), name).train()
    model(images)
    assert adapter_loss(model) is None


@pytest.mark.parametrize("name", STOCHASTIC)
def test_sampling_modes_differ_and_mean_is_deterministic(name, images):
    model = apply_adapter(tiny_vit(), name)
    perturb(model)
    model.eval()
    outputs = {}
    with torch.no_grad():
        for mode in ("mean", "fixed", "random", "mc_layer"):
            with sample_latents(model, mode, 4):
                outputs[mode] = (model(images), model(images))
    assert torch.equal(*outputs["mean"]) and torch.equal(*outputs["fixed"])
    assert not torch.equal(*outputs["random"]) and not torch.equal(*outputs["mc_layer"])  # a fresh draw per pass
    for mode in ("fixed", "random", "mc_layer"):
        assert not torch.allclose(outputs["mean"][0], outputs[mode][0])


@pytest.mark.parametrize("name", STOCHASTIC)
def test_sample_latents_restores_the_previous_mode(name):
    model = apply_adapter(tiny_vit(), name)
    layers = [m for m in model.modules() if hasattr(m, "sample_mode")]
    assert len(layers) == DEPTH and {layer.sample_mode for layer in layers} == {"mean"}
    assert {layer.sample_count for layer in layers} == {1}
    with sample_latents(model, "mc_layer", 8):
        assert {(layer.sample_mode, layer.sample_count) for layer in layers} == {("mc_layer", 8)}
    assert {(layer.sample_mode, layer.sample_count) for layer in layers} == {("mean", 1)}
    with sample_latents(model, "fixed"):
        assert {layer.sample_mode for layer in layers} == {"fixed"}
        with pytest.raises(RuntimeError, match="inside"), sample_latents(model, "random"):
            assert {layer.sample_mode for layer in layers} == {"random"}
            raise RuntimeError("inside")
        assert {layer.sample_mode for layer in layers} == {"fixed"}  # restored, even after an exception
    assert {layer.sample_mode for layer in layers} == {"mean"}
    with pytest.raises(ValueError, match="unknown sampling mode 'mc'; expected one of"):
        with sample_latents(model, "mc"):
            pass


def test_apply_adapter_rejects_bad_input():
    with pytest.raises(
        ValueError, match="unknown adapter 'nope'; registered: adapter_plus, adaptformer, bitfit, bottleneck"
    ):
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


@pytest.mark.parametrize("name", ["lora", "vera", "pvera"])
def test_mc_dropout_turns_on_only_the_adapters_dropout_and_restores_it(name):
    model = apply_adapter(tiny_vit(drop_rate=0.5), name, dropout=0.5).eval()
    perturb(model)
    x = torch.randn(2, 3, 32, 32)
    assert samples_at_test(model, "mc") and samples_at_test(model, "random") == (name == "pvera")
    with torch.no_grad():
        reference = model(x)
        with mc_dropout(model, active=True):
            dropped = [m for m in model.modules() if isinstance(m, nn.Dropout) and m.training]
            assert len(dropped) == len(model.blocks)  # one per adapted qkv; the head's dropout stays off
            assert not torch.equal(model(x), reference)
        with mc_dropout(model, active=False):
            assert torch.equal(model(x), reference)
    assert not any(m.training for m in model.modules())
    assert samples_at_test(apply_adapter(tiny_vit(), name), "mc") == (name == "pvera")  # no dropout: only latents
