"""Packed training (trainer.pack): a grid's points trained in one forward compute what each computes alone."""

from __future__ import annotations

import pytest
import torch
from helpers import perturb, tiny_vit
from omegaconf import OmegaConf

from pvera_bench.adapters import ADAPTERS, apply_adapter
from pvera_bench.config import ProtocolConfig, TrainerConfig
from pvera_bench.data import SplitData
from pvera_bench.evaluation.predict import predict
from pvera_bench.models.packing import PackedSite, pack_models, site_names
from pvera_bench.models.runtime import Normalizer, Runtime
from pvera_bench.training.loop import VALIDATION_SAMPLING, EpochLoop, Objective
from pvera_bench.training.packed import Pack, pack_groups, probe_loops

RUNTIME = Runtime(torch.device("cpu"), Normalizer((0.5, 0.5, 0.5), (0.25, 0.25, 0.25)), progress=False)
EPOCHS = 5
LRS = (3e-2, 3e-3, 3e-4)
# Points that change the adapter's shapes, as the grids do (grid=pvera: LoRA/DoRA ranks, bottleneck widths).
SHAPED_POINTS = {
    "lora": [{"r": 2}, {"r": 4}, {"r": 8}],
    "dora": [{"r": 2}, {"r": 4}, {"r": 8}],
    "adaptformer": [{"hidden_dim": None, "reduction": k} for k in (4, 8, 16)],
    "bottleneck": [{"hidden_dim": None, "reduction": k} for k in (4, 8, 16)],
    "vera": [{"r": 8}, {"r": 16}, {"r": 32}],
    "pvera": [{"r": 8}, {"r": 16}, {"r": 32}],
}


def split(n: int, seed: int) -> SplitData:
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=generator)
    return SplitData(images, torch.randint(0, 5, (n,), generator=generator))


TRAIN, VAL, TEST = split(48, 0), split(24, 1), split(24, 2)


def point_loops(adapter: str, points: list[dict], protocol: ProtocolConfig, **backbone) -> list[EpochLoop]:
    """One loop per point, each built right after its model from the same seed, as ``search_grid`` builds them."""
    loops = []
    for point in points:
        hparams = {k: v for k, v in point.items() if k != "lr"}
        torch.manual_seed(0)
        model = apply_adapter(tiny_vit(**backbone), adapter, **hparams)
        trainer = TrainerConfig(epochs=EPOCHS, batch_size=16, progress=False)
        objective = Objective(adapter_lr=point.get("lr"), regularization_weight=0.1)
        loops.append(EpochLoop(model, TRAIN, VAL, RUNTIME, trainer, protocol, objective, seed=0))
    return loops


def train(loops: list[EpochLoop], packed: bool) -> Pack:
    pack = Pack(loops, packed)
    while active := [i for i, loop in enumerate(loops) if not loop.done()]:
        pack.run_epoch(active)
    return pack


def assert_same_training(adapter: str, points: list[dict], protocol: ProtocolConfig, **backbone) -> list[EpochLoop]:
    packed, alone = (
        point_loops(adapter, points, protocol, **backbone),
        point_loops(adapter, points, protocol, **backbone),
    )
    train(packed, packed=True)
    train(alone, packed=False)
    for one, other in zip(packed, alone, strict=True):
        losses = torch.tensor([e["val_loss"] for e in one.loop.history], dtype=torch.float64)
        reference = torch.tensor([e["val_loss"] for e in other.loop.history], dtype=torch.float64)
        assert losses.shape == reference.shape  # the same epochs run (each point stops on its own)
        torch.testing.assert_close(losses, reference, rtol=1e-5, atol=0)
        first, second = one.result(), other.result()
        assert first.best_epoch == second.best_epoch
        test = predict(one.model, TEST, RUNTIME, 64, VALIDATION_SAMPLING).probs
        torch.testing.assert_close(
            test, predict(other.model, TEST, RUNTIME, 64, VALIDATION_SAMPLING).probs, rtol=1e-5, atol=1e-7
        )
    return packed


NO_STOP = ProtocolConfig(early_stopping=False)


@pytest.mark.parametrize("adapter", sorted(set(ADAPTERS) - {"linear"}))
def test_points_differing_in_learning_rate_train_packed_as_alone(adapter):
    assert_same_training(adapter, [{"lr": lr} for lr in LRS], NO_STOP)


@pytest.mark.parametrize("adapter", sorted(SHAPED_POINTS))
def test_points_differing_in_adapter_shape_train_packed_as_alone(adapter):
    assert_same_training(adapter, SHAPED_POINTS[adapter], NO_STOP)


def test_a_point_that_stops_early_leaves_the_pack_and_the_others_train_on_unchanged():
    protocol = ProtocolConfig(patience=1, min_rel_improvement=1e-3)  # lr 1e-3 improves 0.2 %/epoch, the others stall
    loops = assert_same_training("pvera", [{"lr": 3e-2}, {"lr": 1e-3}, {"lr": 1e-2}], protocol)
    epochs = [loop.loop.epoch for loop in loops]
    assert epochs == [2, EPOCHS, 2]


def test_pvera_draws_its_training_noise_from_its_own_stream_in_the_pack():
    loops = point_loops("pvera", [{"lr": lr} for lr in LRS], NO_STOP)
    pack = train(loops, packed=True)
    [trunk] = pack.trunks.values()
    assert pack.draws and all(site.streams is pack.streams for site in trunk.modules() if isinstance(site, PackedSite))


def packable_models(adapter: str, points: list[dict], **backbone) -> list[torch.nn.Module]:
    """One model per point in eval mode, each on the same frozen backbone (``tiny_vit`` seeds itself)."""
    models = []
    for point in points:
        torch.manual_seed(0)
        models.append(apply_adapter(tiny_vit(**backbone), adapter, **point).eval())
    return models


def default_loops(models: list[torch.nn.Module]) -> list[EpochLoop]:
    """An epoch loop per model with the default trainer, for probing and grouping."""
    return [EpochLoop(m, TRAIN, VAL, RUNTIME, TrainerConfig(), NO_STOP, Objective(), 0) for m in models]


def equal_configs(count: int) -> list:
    """Configs of ``count`` points whose trainer, protocol and backbone settings agree."""
    return [OmegaConf.create({"trainer": {}, "protocol": {}, "backbone": {}})] * count


def test_the_trunk_shares_the_frozen_tensors_and_runs_each_model_on_its_chunk():
    models = packable_models("lora", [{"r": 2}, {"r": 4}])
    trunk = pack_models(models)
    assert {id(p) for p in trunk.parameters()} <= {id(p) for m in models for p in m.parameters()}  # no copies
    assert trunk.patch_embed.proj.weight is models[0].patch_embed.proj.weight
    assert site_names(models[0]) == ["blocks.0.attn.qkv", "blocks.1.attn.qkv", "head"]
    x = torch.randn(6, 3, 32, 32)
    with torch.no_grad():
        expected = torch.cat([models[0](x[:3]), models[1](x[3:])])
        torch.testing.assert_close(trunk(x), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("adapter", "wrapped"),
    [
        ("lora", "blocks.0.attn.qkv"),  # adapts the output
        ("repadapter", "blocks.0.attn.qkv"),  # adapts the input
        ("adaptformer", "blocks.0.mlp"),  # the whole frozen MLP inside the site
        ("adapter_plus", "blocks.0"),  # the whole frozen block inside the site
        ("vpt_deep", "blocks.1"),  # prompts written into the input, dropped from the last block's output
    ],
)
def test_a_site_runs_the_frozen_layer_it_wraps_once_on_the_whole_batch(adapter, wrapped):
    models = packable_models(adapter, [{}, {}, {}])
    for model in models:
        perturb(model)
    trunk = pack_models(models)
    calls: list[list[int]] = [[] for _ in models]  # hooked after packing: a hook seen when packing keeps a layer whole
    hooks = [
        model.get_submodule(wrapped).base_layer.register_forward_hook(
            lambda _, args, __, seen=seen: seen.append(len(args[0]))
        )
        for model, seen in zip(models, calls, strict=True)
    ]
    x = torch.randn(6, 3, 32, 32)
    with torch.no_grad():
        got = trunk(x)
        assert calls == [[6], [], []]  # the first model's frozen layer, once, on all three chunks
        for hook in hooks:
            hook.remove()
        expected = torch.cat([model(chunk) for model, chunk in zip(models, x.chunk(3), strict=True)])
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_a_layer_watched_by_a_hook_runs_whole_so_that_its_hook_fires():
    models = packable_models("lora", [{}, {}])
    fired = []
    models[1].blocks[0].attn.qkv.register_forward_hook(lambda _, args, __: fired.append(len(args[0])))
    trunk = pack_models(models)
    assert [s.base_once for s in trunk.modules() if isinstance(s, PackedSite)] == [False, True, False]
    with torch.no_grad():
        trunk(torch.randn(4, 3, 32, 32))
    assert fired == [2]  # model 1's chunk


def test_a_layer_with_its_own_forward_runs_whole_for_each_model():
    trunk = pack_models(packable_models("dora", [{"r": 2}, {"r": 4}]))  # DoRA rescales the frozen W x itself
    sites = [m for m in trunk.modules() if isinstance(m, PackedSite)]
    assert [site.base_once for site in sites] == [False, False, False]  # two qkv Linears and the head


def test_frozen_layers_that_draw_keep_each_point_alone():
    """Stochastic depth in the frozen backbone draws for the whole batch: a pack could not draw what each point
    draws alone, so such points train alone; Adapter+'s own drop path draws from each point's stream."""
    own = packable_models("adapter_plus", [{}, {}])
    frozen = packable_models("adapter_plus", [{}, {}], drop_path_rate=0.1)
    loops = default_loops(own + frozen)
    probes = probe_loops(loops)
    assert [(p.drew, p.frozen_drew) for p in probes] == [(True, False)] * 2 + [(True, True)] * 2
    cfgs = equal_configs(4)
    assert pack_groups(probes, loops, cfgs) == [[0, 1], [2], [3]]


def test_full_fine_tuning_with_stochastic_depth_packs_on_each_points_own_streams():
    """The whole model is the one site: all its draws are its own, none are the frozen layers'."""
    loops = point_loops("full", [{"lr": lr} for lr in LRS], NO_STOP, drop_path_rate=0.1)
    assert [(p.drew, p.frozen_drew) for p in probe_loops(loops)] == [(True, False)] * 3
    cfgs = equal_configs(3)
    assert pack_groups(probe_loops(loops), loops, cfgs) == [[0, 1, 2]]
    assert_same_training("full", [{"lr": lr} for lr in LRS], NO_STOP, drop_path_rate=0.1)


def test_prompts_that_change_what_a_once_run_block_reads_keep_points_apart():
    """On a one-block ViT the block adds and drops VPT's prompts: equal outputs, but inputs that do not stack."""
    cfgs = equal_configs(3)
    models = packable_models("vpt_deep", [{"prompts": 2}, {"prompts": 2}, {"prompts": 4}], depth=1)
    loops = default_loops(models)
    assert pack_groups(probe_loops(loops), loops, cfgs) == [[0, 1], [2]]


def test_models_whose_frozen_tensors_differ_do_not_pack():
    models = packable_models("lora", [{}, {}, {}])
    with torch.no_grad():
        models[2].blocks[1].mlp.fc2.weight.add_(1e-3)  # e.g. a random-init backbone of another seed
    loops = default_loops(models)
    cfgs = equal_configs(3)
    assert pack_groups(probe_loops(loops), loops, cfgs) == [[0, 1], [2]]
    with pytest.raises(ValueError, match="cannot pack models whose frozen tensors differ"):
        pack_models(models)


def test_points_whose_activation_shapes_differ_train_apart():
    points = [{"prompts": 2}, {"prompts": 2, "lr": 1e-3}, {"prompts": 4}, {"prompts": 4}]
    loops = point_loops("vpt_deep", points, NO_STOP)
    cfgs = [OmegaConf.create({"trainer": {"epochs": EPOCHS}, "protocol": {}, "backbone": {}})] * 3
    cfgs.append(
        OmegaConf.create({"trainer": {"epochs": 1}, "protocol": {}, "backbone": {}})
    )  # another schedule: not packed
    assert pack_groups(probe_loops(loops), loops, cfgs) == [[0, 1], [2], [3]]


def test_models_with_different_sites_refuse_to_pack():
    torch.manual_seed(0)
    lora, ia3 = apply_adapter(tiny_vit(), "lora"), apply_adapter(tiny_vit(), "ia3")
    with pytest.raises(ValueError, match="cannot pack models whose adapted modules differ"):
        pack_models([lora, ia3])
