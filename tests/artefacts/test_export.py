"""A saved adapter exported as a Hugging Face PEFT folder loads into PEFT and gives our model's logits."""

from __future__ import annotations

import json
from pathlib import Path

import huggingface_hub
import peft
import pytest
import torch
from helpers import compose_config, expected_result_path, run_cli
from safetensors import safe_open
from test_artefacts import one_line_error, save_tiny_artefact

from pvera_bench.adapters import sample_latents
from pvera_bench.artefacts.adapter_file import artefact_backbone, build_from_artefact
from pvera_bench.artefacts.export import export_peft
from pvera_bench.artefacts.hub import push_to_hub
from pvera_bench.models.peft_compat import split_qkv
from pvera_bench.pipeline.run import run

CASES = {  # id: adapter, its hyperparameters, how PVeRA exports, PEFT's type
    "lora": ("lora", {"r": 4, "convention": "peft"}, "pvera", "LORA"),
    "lora-official": ("lora", {"r": 4}, "pvera", "LORA"),  # alpha 16: only the initialisation differed
    "dora": ("dora", {"r": 4, "convention": "peft"}, "pvera", "LORA"),
    "dora-official-quirks": ("dora", {"r": 4, "unscaled": True, "frozen_magnitude": True}, "pvera", "LORA"),
    "vera": ("vera", {"r": 16, "alpha": 2.0, "convention": "peft"}, "pvera", "VERA"),
    "pvera": ("pvera", {"r": 16, "convention": "peft"}, "pvera", "PVERA"),
    "pvera-as-vera": ("pvera", {"r": 16, "alpha": 3.0, "convention": "peft"}, "vera", "VERA"),
    "ia3": ("ia3", {"convention": "peft"}, "pvera", "IA3"),
}


def peft_model(artefact: Path, folder: Path) -> torch.nn.Module:
    """What a PEFT user does: the run's backbone with its qkv split, and the exported adapter on it."""
    return peft.PeftModel.from_pretrained(split_qkv(artefact_backbone(artefact)), str(folder)).eval()


def assert_same_logits(artefact: Path, folder: Path, images: torch.Tensor) -> None:
    ours = build_from_artefact(artefact)
    with torch.no_grad(), sample_latents(ours, "mean"):
        expected = ours(images)
        torch.testing.assert_close(peft_model(artefact, folder)(images), expected, rtol=0, atol=1e-5)
    backbone = artefact_backbone(artefact).eval()
    with torch.no_grad():
        assert (expected - backbone(images)).abs().max() > 1e-2  # the adapter and head do change the output


@pytest.mark.parametrize("case", list(CASES))
def test_peft_export_gives_our_logits(tmp_path, case):
    name, hparams, pvera_as, peft_type = CASES[case]
    artefact = tmp_path / "run.adapter.safetensors"
    save_tiny_artefact(artefact, name, **hparams)
    folder = export_peft(artefact, tmp_path / "peft", pvera_as=pvera_as)
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "adapter_config.json", "adapter_model.safetensors"]
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["peft_type"] == peft_type and config["modules_to_save"] == ["head"]
    assert sorted(config["target_modules"]) == (
        ["attn.qkv.k", "attn.qkv.v", "mlp.fc2"] if name == "ia3" else ["attn.qkv.q", "attn.qkv.v"]
    )
    with safe_open(str(folder / "adapter_model.safetensors"), framework="pt") as f:
        keys = set(f.keys())
    assert {"base_model.model.head.weight", "base_model.model.head.bias"} <= keys
    if peft_type in ("VERA", "PVERA"):  # the run's random projections travel with it
        prefix = peft_type.lower()
        assert config["save_projection"] and {f"base_model.{prefix}_A", f"base_model.{prefix}_B"} <= keys
    assert_same_logits(artefact, folder, torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(4)))


@pytest.mark.parametrize("name", ["vera", "pvera"])
def test_official_random_pairs_are_refused(tmp_path, name):
    artefact = tmp_path / "run.adapter.safetensors"
    save_tiny_artefact(artefact, name, r=16)  # official: one random pair per slice
    message = one_line_error(lambda: export_peft(artefact, tmp_path / "peft"))
    assert "adapter.convention=official" in message and "train with adapter.convention=peft" in message
    assert not (tmp_path / "peft").exists()


def test_adapters_peft_cannot_express_are_refused(tmp_path):
    save_tiny_artefact(tmp_path / "linear.adapter.safetensors", "linear")
    assert "has no PEFT export" in one_line_error(
        lambda: export_peft(tmp_path / "linear.adapter.safetensors", tmp_path)
    )
    save_tiny_artefact(tmp_path / "fused.adapter.safetensors", "lora", qkv_slices=None, convention="peft")
    message = one_line_error(lambda: export_peft(tmp_path / "fused.adapter.safetensors", tmp_path))
    assert "qkv_slices=null" in message


def test_cli_exports_a_runs_adapter_and_an_offline_push_fails_in_one_line(data_root, tmp_path):
    cfg = compose_config(
        "experiment=demo",
        "trainer=smoke",
        "trainer.epochs=1",
        f"data.root={data_root}",
        f"paths.results={tmp_path / 'runs'}",
        "adapter=pvera",
        "adapter.convention=peft",
        "adapter.r=16",
    )
    run(cfg)
    result, folder = expected_result_path(cfg), tmp_path / "peft"
    completed = run_cli(
        str(result), "--out", str(folder), "--push-to-hub", "someone/adapter", module="pvera_bench.export"
    )
    assert completed.returncode != 0 and "Traceback" not in completed.stderr  # HF_HUB_OFFLINE=1: no network
    [line] = completed.stderr.strip().splitlines()
    assert line.startswith("error: cannot push") and "offline" in line and f"the export is in {folder}" in line
    artefact = result.with_name(json.loads(result.read_text())["adapter_file"])
    assert_same_logits(artefact, folder, torch.randn(2, 3, 28, 28, generator=torch.Generator().manual_seed(4)))


def test_push_to_an_unreachable_hub_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    (tmp_path / "adapter_config.json").write_text("{}")
    message = one_line_error(lambda: push_to_hub(tmp_path, "someone/adapter", "http://127.0.0.1:9", "hf_unused"))
    assert message.startswith(f"cannot push {tmp_path} to the hub as someone/adapter (ConnectError")
