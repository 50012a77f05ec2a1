"""A run's adapter saved beside its result, and loaded back into a fresh timm model with the run's predictions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm
import torch
from helpers import adapter_path, compose_config, expected_result_path, perturb, tiny_vit
from omegaconf import OmegaConf
from safetensors import safe_open
from safetensors.torch import save

from pvera_bench.adapters import (
    ADAPTERS,
    adapter_config,
    apply_adapter,
    is_mergeable,
    merge_adapter,
    samples_at_test,
)
from pvera_bench.artefacts.adapter_file import (
    artefact_info,
    build_from_artefact,
    load_adapter,
    read_artefact,
    save_adapter,
    save_run_adapter,
    saves_adapter,
)
from pvera_bench.artefacts.predictions import read_predictions
from pvera_bench.core.errors import UserError
from pvera_bench.data import SplitData
from pvera_bench.evaluation.predict import predict
from pvera_bench.pipeline.run import run, task_inputs

# The demo's adapters, shortened: one epoch, and VeRA/PVeRA at a small rank (the default official convention:
# two random pairs drawn from the run seed's global RNG).
RUNS = {
    "lora": ("adapter=lora",),
    "vera": ("adapter=vera", "adapter.r=32"),
    "pvera": ("adapter=pvera", "adapter.r=32"),
    "linear": ("adapter=linear",),
}
# tiny_vit() as an artefact's backbone: timm builds it after torch.manual_seed(0), as a run with seed 0 does.
TINY_BACKBONE = {
    "id": "tiny_test",
    "name": "vit_tiny_patch16_224",
    "pretrained": False,
    "weights": None,
    "img_size": 32,
    "model_kwargs": {"patch_size": 8, "embed_dim": 48, "depth": 2, "num_heads": 3},
    "hub_pos_embed": False,
}


def save_tiny_artefact(path: Path, name: str, **hparams) -> torch.nn.Module:
    """Apply ``name`` to tiny_vit(), move its adapter and head as training would, save it; returns the model."""
    model = apply_adapter(tiny_vit(), name, **hparams)
    perturb(model)
    with torch.no_grad():
        model.head.weight.add_(0.1 * torch.randn(model.head.weight.shape, generator=torch.Generator().manual_seed(2)))
    save_adapter(model, path, {"backbone": TINY_BACKBONE, "num_classes": 5, "seed": 0})
    return model


def one_line_error(call) -> str:
    with pytest.raises(UserError) as raised:
        call()
    message = str(raised.value)
    assert "\n" not in message
    return message


@pytest.fixture(scope="module")
def demo_runs(data_root, tmp_path_factory) -> dict[str, tuple]:
    """Per adapter: the config of a finished demo run, its result and the result's path."""
    folder = tmp_path_factory.mktemp("runs")
    done = {}
    for name, overrides in RUNS.items():
        cfg = compose_config(
            "experiment=demo",
            "trainer=smoke",
            "trainer.epochs=1",
            f"data.root={data_root}",
            f"paths.results={folder}",
            *overrides,
        )
        done[name] = (cfg, run(cfg), expected_result_path(cfg))
    return done


@pytest.mark.parametrize("name", list(RUNS))
def test_reloaded_adapter_reproduces_the_runs_test_predictions(demo_runs, name):
    cfg, record, result = demo_runs[name]
    model = build_from_artefact(result)  # the result JSON names its artefact; the random backbone comes from the seed
    inputs = task_inputs(cfg)
    test = inputs.split("test")

    def test_probs(network, images):
        data = SplitData(test.images[:images], test.labels[:images])
        return predict(network, data, inputs.runtime, cfg.trainer.eval_batch_size, cfg.sampling).probs

    stored = read_predictions(result.with_name(record["predictions"]))["test"].probs
    run_merged = cfg.trainer.merge_for_test and not cfg.trainer.compile and is_mergeable(model)
    if run_merged and not samples_at_test(model, cfg.sampling.mode):  # as run.predict_for_test decides
        unmerged = test_probs(model, 500)  # the unmerged adapter: the same up to rounding
        torch.testing.assert_close(unmerged, stored[:500], rtol=0, atol=1e-5)
        merge_adapter(model)  # tested as the run tests it (trainer.merge_for_test): the same bit for bit
    assert (test_probs(model, len(test)) - stored).abs().max().item() <= 1e-6


def test_artefact_sits_beside_the_result_and_holds_the_adapter_and_head_only(demo_runs):
    for name, (cfg, record, result) in demo_runs.items():
        path = adapter_path(result)
        assert record["adapter_file"] == path.name == result.name.removesuffix(".json") + ".adapter.safetensors"
        assert path.is_file() and path.parent == result.parent
        assert json.loads(result.read_text())["adapter_file"] == path.name
        info, tensors = read_artefact(path)
        assert info["adapter"]["name"] == name and info["adapter"]["convention"] == "official"
        assert info["backbone"]["name"] == cfg.backbone.name and info["backbone"]["img_size"] == cfg.backbone.img_size
        assert (info["num_classes"], info["seed"], info["sampling"]["mode"]) == (10, cfg.seed, "mean")
        assert not any("base_layer" in key or key.startswith(("blocks.0.norm", "patch_embed")) for key in tensors)
        heads = {key for key in tensors if key.startswith("head.")}
        assert heads == {"head.weight", "head.bias"}
        others = set(tensors) - heads
        if name == "linear":
            assert not others
        elif name == "lora":
            assert others and all(key.split(".")[-1] in ("lora_A", "lora_B") for key in others)
        else:  # the trained vectors and, once, the two official random pairs the run drew from its seed
            assert info["projections"] == ["blocks.0.attn.qkv.projections.A", "blocks.0.attn.qkv.projections.B"]
            assert tensors["blocks.0.attn.qkv.projections.A"].shape == (2, (2 if name == "pvera" else 1) * 32, 192)
            vectors = others - set(info["projections"])
            assert all(key.split(".")[-1] in (f"{name}_lambda_d", f"{name}_lambda_b") for key in vectors)


@pytest.mark.parametrize("name", sorted(set(ADAPTERS) - {"full"}))
def test_every_adapter_round_trips_exactly(tmp_path, name):
    hparams = {"frozen_magnitude": True} if name == "dora" else {}  # DoRA's frozen magnitude is a buffer: saved too
    model = save_tiny_artefact(tmp_path / "a.adapter.safetensors", name, **hparams).eval()
    rng = torch.get_rng_state()
    rebuilt = build_from_artefact(tmp_path / "a.adapter.safetensors")
    assert torch.equal(torch.get_rng_state(), rng)  # loading leaves the caller's random stream alone
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(rebuilt(images), model(images))
    assert adapter_config(rebuilt) == adapter_config(model)


def test_full_fine_tuning_saves_no_artefact(tmp_path):
    model = apply_adapter(tiny_vit(), "full")
    cfg = OmegaConf.create({"adapter": {"name": "full"}})
    assert not saves_adapter(model) and save_run_adapter(tmp_path / "r.json", model, cfg) is None
    assert not list(tmp_path.iterdir())


def test_strict_load_errors_are_one_line(demo_runs, tmp_path):
    _, _, result = demo_runs["lora"]
    path = adapter_path(result)
    info = artefact_info(path)
    backbone = info["backbone"]

    def fresh(**changes):
        kwargs = {**backbone["model_kwargs"], "img_size": backbone["img_size"], "num_classes": 10, **changes}
        return timm.create_model(backbone["name"], pretrained=False, **kwargs)

    assert "no such adapter file" in one_line_error(
        lambda: load_adapter(fresh(), tmp_path / "none.adapter.safetensors")
    )
    (tmp_path / "broken.adapter.safetensors").write_bytes(b"not a safetensors file")
    assert "not a readable" in one_line_error(lambda: load_adapter(fresh(), tmp_path / "broken.adapter.safetensors"))
    message = one_line_error(lambda: load_adapter(fresh(num_classes=7), path))
    assert "head.weight is (10, 192) in the artefact but (7, 192)" in message and "build_from_artefact" in message
    message = one_line_error(lambda: load_adapter(fresh(depth=2), path))
    assert "have no place in this model (e.g. blocks.2." in message
    message = one_line_error(lambda: load_adapter(fresh(), path))  # right architecture, other random weights
    assert "frozen backbone weights differ" in message and "seed 0" in message
    assert adapter_config(load_adapter(fresh(), path, verify_backbone=False)).name == "lora"
    with safe_open(str(path), framework="pt") as f:  # the same artefact without one of its tensors
        partial = {key: f.get_tensor(key) for key in list(f.keys())[1:]}
        (tmp_path / "partial.adapter.safetensors").write_bytes(save(partial, metadata=f.metadata()))
    message = one_line_error(lambda: build_from_artefact(tmp_path / "partial.adapter.safetensors"))
    assert "lacks 1 tensor(s) the lora adapter needs" in message
    adapted = apply_adapter(fresh(), "lora")
    assert "model already has adapter" in one_line_error(lambda: load_adapter(adapted, path))
    message = one_line_error(lambda: build_from_artefact(adapter_path(demo_runs["vera"][2]).with_name("x.json")))
    assert "not a readable result file" in message
