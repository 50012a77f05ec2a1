"""VPT-shallow and VPT-deep against an independent rewrite of the official prompted ViT forward.

``official_vpt_logits`` is written in plain torch from KMnP/vpt ``src/models/vit_prompt/vit.py``
(``PromptedTransformer.incorporate_prompt``, ``forward_deep_prompt``, ``PromptedVisionTransformer.forward``), in
the official layout: ``prompt_embeddings (1, p, dim)`` enters after the cls token of the embedded image, each
``deep_prompt_embeddings[i - 1] (p, dim)`` replaces the prompt positions before block i > 0, prompt dropout acts on
the prompts expanded over the batch, and the logits are the head of the normed cls token. Our tensors are mapped in
(``prompt_embeddings = blocks[0].vpt_prompts[None]``, ``deep_prompt_embeddings[i - 1] = blocks[i].vpt_prompts``);
no code of the official repository is copied.
"""

from __future__ import annotations

import math

import pytest
import timm
import torch
import torch.nn.functional as F
from helpers import perturb, tiny_vit
from torch import Tensor, nn

from pvera_bench.adapters import adapter_config, adapter_parameters, apply_adapter, mc_dropout, samples_at_test
from pvera_bench.adapters.vpt import PromptedBlock

DIM, DEPTH, PATCHES, P = 48, 2, 16, 3  # helpers.tiny_vit: width 48, 2 blocks, 16 patches; a prompt length
NAMES = ["vpt_shallow", "vpt_deep"]


# ---- the official forward (KMnP/vpt src/models/vit_prompt/vit.py), on the frozen timm backbone's modules ----
def official_embeddings(model: nn.Module, images: Tensor) -> Tensor:
    """The official ``Embeddings``: patch projection, cls token, position embedding (and its dropout)."""
    return model.norm_pre(model.patch_drop(model._pos_embed(model.patch_embed(images))))


def official_hidden(
    model: nn.Module,
    images: Tensor,
    prompt_embeddings: Tensor,
    deep_prompt_embeddings: Tensor | None,
    dropout: float = 0.0,
    prefix: int = 1,
) -> Tensor:
    """The sequence after the last block, prompts included (``prefix``: 1, the cls token, in the official code)."""
    x = official_embeddings(model, images)
    batch, p = x.shape[0], prompt_embeddings.shape[1]

    def drop(prompts: Tensor) -> Tensor:  # prompt_dropout(prompt_proj(P).expand(B, -1, -1)), prompt_proj = identity
        return F.dropout(prompts.expand(batch, -1, -1), dropout, training=dropout > 0)

    hidden = torch.cat([x[:, :prefix], drop(prompt_embeddings), x[:, prefix:]], dim=1)
    for i, block in enumerate(b.base_layer for b in model.blocks):  # the frozen timm blocks
        if i > 0 and deep_prompt_embeddings is not None:
            hidden = torch.cat([hidden[:, :prefix], drop(deep_prompt_embeddings[i - 1]), hidden[:, prefix + p :]], 1)
        hidden = block(hidden)
    return hidden


def official_vpt_logits(model: nn.Module, images: Tensor, *prompts: Tensor | None, **kwargs) -> Tensor:
    """``head(encoder_norm(hidden)[:, 0])``: the official ``VIT_POOL_TYPE = original`` (cls token)."""
    assert isinstance(model.fc_norm, nn.Identity) and model.global_pool == "token"
    return model.head(model.norm(official_hidden(model, images, *prompts, **kwargs))[:, 0])


def official_prompts(model: nn.Module, name: str) -> tuple[Tensor, Tensor | None]:
    """Our prompts, copied as leaf tensors in the official layout."""
    prompt_embeddings = model.blocks[0].vpt_prompts.detach().clone()[None].requires_grad_()
    if name == "vpt_shallow":
        return prompt_embeddings, None
    deep = torch.stack([block.vpt_prompts.detach().clone() for block in model.blocks[1:]]).requires_grad_()
    return prompt_embeddings, deep


def official_grads(name: str, prompt_embeddings: Tensor, deep: Tensor | None) -> list[Tensor]:
    """The official tensors' gradients, one ``(p, dim)`` per block that has prompts (our order)."""
    return [prompt_embeddings.grad[0]] + ([] if deep is None else list(deep.grad.unbind(0)))


def images(seed: int = 0, size: int = 32) -> Tensor:
    return torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(seed))


def adapted(name: str, backbone: nn.Module | None = None, **hparams) -> nn.Module:
    model = apply_adapter(backbone if backbone is not None else tiny_vit(), name, prompts=P, **hparams)
    perturb(model)
    return model


def our_grads(model: nn.Module) -> list[Tensor]:
    return [block.vpt_prompts.grad for block in model.blocks if block.vpt_prompts is not None]


# ---- same logits and gradients given the same prompts ----
def assert_matches_the_official_forward(model, name: str, x, gradient_atol: float) -> list:
    """Our logits and prompt gradients equal the official forward's on the same prompts; returns the official
    gradients."""
    ours = model(x)
    ours.square().sum().backward()
    prompt_embeddings, deep = official_prompts(model, name)
    reference = official_vpt_logits(model, x, prompt_embeddings, deep)
    reference.square().sum().backward()
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-6)
    expected_grads = official_grads(name, prompt_embeddings, deep)
    for got, expected in zip(our_grads(model), expected_grads, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=gradient_atol)
    return expected_grads


@pytest.mark.parametrize("name", NAMES)
def test_logits_and_prompt_gradients_match_the_official_forward(name):
    model = adapted(name).eval()  # eval: dropout off
    for expected in assert_matches_the_official_forward(model, name, images(), gradient_atol=1e-7):
        assert expected.abs().max() > 1e-4  # every prompt tensor, the last block's too, moves the logits


@pytest.mark.parametrize("name", NAMES)
def test_training_forward_with_dropout_matches_the_official_one(name):
    """Prompt dropout: a fresh mask per image and per block, drawn in the official order."""
    model = adapted(name, dropout=0.5).train()
    x = images()
    torch.manual_seed(3)
    ours = model(x)
    prompt_embeddings, deep = official_prompts(model, name)
    torch.manual_seed(3)
    reference = official_vpt_logits(model, x, prompt_embeddings, deep, dropout=0.5)
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-6)
    torch.manual_seed(3)
    assert not torch.allclose(model(x), official_vpt_logits(model, x, prompt_embeddings, deep))  # it does drop


@pytest.mark.parametrize("name", NAMES)
def test_dropout_is_off_in_eval_and_on_under_mc_dropout(name):
    model = adapted(name, dropout=0.5).eval()
    without = adapted(name, dropout=0.0).eval()
    without.load_state_dict(model.state_dict())
    x = images()
    with torch.no_grad():
        torch.testing.assert_close(model(x), without(x), rtol=0, atol=0)
        assert samples_at_test(model, "mc") and not samples_at_test(without, "mc")
        with mc_dropout(model, active=True):
            assert not torch.allclose(model(x), without(x))
    assert not any(m.training for m in model.modules())


def test_dropout_defaults_follow_the_papers_runs():
    assert adapter_config(apply_adapter(tiny_vit(), "vpt_deep")).dropout == 0.1
    assert adapter_config(apply_adapter(tiny_vit(), "vpt_shallow")).dropout == 0.0
    assert adapter_config(apply_adapter(tiny_vit(), "vpt_shallow")).prompts == 5  # MODEL.PROMPT.NUM_TOKENS


# ---- the token layout ----
@pytest.mark.parametrize("name", NAMES)
def test_prompts_sit_after_the_prefix_and_leave_after_the_last_block(name):
    model = adapted(name).eval()
    x = images()
    with torch.no_grad():
        embedded = official_embeddings(model, x)
        after_blocks = model.blocks(embedded)
        bare_after_blocks = nn.Sequential(*[block.base_layer for block in model.blocks])(embedded)
        hidden = official_hidden(model, x, *official_prompts(model, name))
    assert after_blocks.shape == bare_after_blocks.shape == (3, 1 + PATCHES, DIM)
    assert hidden.shape == (3, 1 + P + PATCHES, DIM)
    torch.testing.assert_close(after_blocks, torch.cat([hidden[:, :1], hidden[:, 1 + P :]], dim=1))
    assert model.forward_features(x).shape == tiny_vit().forward_features(x).shape


@pytest.mark.parametrize("name", NAMES)
def test_mean_pooling_averages_the_patches_only(name):
    """A mean-pooling backbone pools over the image patches, the official ablation ``img_pool``."""
    model = adapted(name, backbone=tiny_vit(global_pool="avg")).eval()
    x = images()
    with torch.no_grad():
        hidden = model.norm(official_hidden(model, x, *official_prompts(model, name)))
        expected = model.head(model.fc_norm(hidden[:, 1 + P :].mean(dim=1)))
        torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-6)


def tiny_dinov2(registers: int = 0) -> nn.Module:
    """DINOv2's timm architecture (LayerScale, no pos embedding on registers), tiny and random."""
    torch.manual_seed(0)
    variant = "vit_small_patch14_reg4_dinov2" if registers else "vit_small_patch14_dinov2"
    args = dict(pretrained=False, img_size=28, embed_dim=DIM, depth=DEPTH, num_heads=3, num_classes=5)
    return timm.create_model(variant, **args).eval()


@pytest.mark.parametrize("name", NAMES)
def test_dinov2_matches_the_official_forward(name):
    model = adapted(name, backbone=tiny_dinov2()).eval()
    assert_matches_the_official_forward(model, name, images(size=28), gradient_atol=1e-9)


@pytest.mark.parametrize("name", NAMES)
def test_register_tokens_stay_in_front_of_the_prompts(name):
    model = adapted(name, backbone=tiny_dinov2(registers=4)).eval()
    prefix = model.num_prefix_tokens
    assert prefix == 5 and all(block.num_prefix == prefix for block in model.blocks)
    x = images(size=28)
    with torch.no_grad():
        hidden = official_hidden(model, x, *official_prompts(model, name), prefix=prefix)
        after_blocks = model.blocks(official_embeddings(model, x))
    assert after_blocks.shape == (3, prefix + 4, DIM)  # 28 / 14 = 2 x 2 patches
    torch.testing.assert_close(after_blocks, torch.cat([hidden[:, :prefix], hidden[:, prefix + P :]], dim=1))


# ---- structure, counts, initialisation, autocast, config ----
@pytest.mark.parametrize("name", NAMES)
def test_every_block_is_wrapped_and_only_the_prompts_train(name):
    model = apply_adapter(tiny_vit(), name, prompts=P)
    assert isinstance(model.blocks, nn.Sequential) and all(isinstance(b, PromptedBlock) for b in model.blocks)
    assert [b.removes for b in model.blocks] == [False] * (DEPTH - 1) + [True]
    with_prompts = [b.vpt_prompts is not None for b in model.blocks]
    assert with_prompts == ([True] * DEPTH if name == "vpt_deep" else [True] + [False] * (DEPTH - 1))
    expected_names = {f"blocks.{i}.vpt_prompts" for i, has in enumerate(with_prompts) if has}
    assert set(adapter_parameters(model)) == expected_names


def count(name: str, **hparams) -> int:
    return sum(p.numel() for p in adapter_parameters(apply_adapter(tiny_vit(), name, **hparams)).values())


def test_parameter_counts_follow_the_formulas():
    assert count("vpt_shallow") == 5 * DIM
    assert count("vpt_shallow", prompts=50) == 50 * DIM
    assert count("vpt_deep") == DEPTH * 5 * DIM
    assert count("vpt_deep", prompts=50) == DEPTH * 50 * DIM
    assert count("vpt_deep", prompts=10) == count("vpt_deep", prompts=10, dropout=0.0)  # dropout adds nothing


@pytest.mark.parametrize("name", NAMES)
def test_prompts_start_uniform_in_the_official_xavier_bound(name):
    model = apply_adapter(tiny_vit(), name, prompts=200)
    bound = math.sqrt(6.0 / (3 * 8 * 8 + DIM))  # 3 · patch_h · patch_w + dim
    for prompts in adapter_parameters(model).values():
        assert prompts.shape == (200, DIM)
        assert prompts.abs().max() <= bound and prompts.abs().max() > 0.99 * bound
        assert abs(prompts.mean().item()) < 0.05 * bound
        assert prompts.var().item() == pytest.approx(bound**2 / 3, rel=0.05)  # uniform's variance


@pytest.mark.parametrize("name", NAMES)
def test_bf16_autocast_keeps_fp32_prompt_gradients_close(name):
    model = adapted(name).train()
    grads = {}
    for autocast in (False, True):
        model.zero_grad()
        torch.manual_seed(0)  # vpt_deep: the same prompt dropout in both passes
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = model(images())
        out.float().square().sum().backward()
        grads[autocast] = our_grads(model)
    for fp32, bf16 in zip(grads[False], grads[True], strict=True):
        assert bf16.dtype == torch.float32
        assert ((bf16 - fp32).norm() / fp32.norm()).item() < 0.03


@pytest.mark.parametrize(
    "hparams, message",
    [
        ({"prompts": 0}, "adapter.prompts must be >= 1, got 0"),
        ({"dropout": 1.0}, r"adapter.dropout must be in \[0, 1\), got 1.0"),
        ({"dropout": -0.1}, r"adapter.dropout must be in \[0, 1\), got -0.1"),
    ],
)
@pytest.mark.parametrize("name", NAMES)
def test_bad_config_values_raise_one_line_errors(name, hparams, message):
    with pytest.raises(ValueError, match=f"^{message}$"):
        apply_adapter(tiny_vit(), name, **hparams)


def test_a_model_without_blocks_is_refused():
    with pytest.raises(TypeError, match="Linear is not a timm VisionTransformer"):
        apply_adapter(nn.Linear(2, 2), "vpt_deep")
