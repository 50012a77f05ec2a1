"""The protocol end to end, in-process, on the real mnist5k digits with the tiny backbone."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from helpers import expected_result_path, predictions_file, results

from pvera_bench.artefacts.predictions import read_predictions
from pvera_bench.core.errors import UserError
from pvera_bench.evaluation.predict import prediction_metrics
from pvera_bench.evaluation.uncertainty import uncertainty_metrics
from pvera_bench.pipeline.run import run

REQUIRED_KEYS = {
    "status",
    "adapter",
    "dataset",
    "backbone",
    "sampling",
    "protocol",
    "seed",
    "test_top1",
    "val_top1",
    "test_nll",
    "test_ece",
    "adapter_params",
    "head_params",
    "wall_s",
    "config",
    "versions",
    "git_commit",
}


def test_run_writes_one_complete_result(demo_config):
    cfg = demo_config("adapter=pvera")
    record = run(cfg)
    path = expected_result_path(cfg)
    assert list(Path(cfg.paths.results).rglob("*.json")) == [path]
    written = json.loads(path.read_text())
    assert REQUIRED_KEYS <= written.keys()
    assert written == json.loads(json.dumps(record))
    assert written["status"] == "success"
    assert (written["adapter"], written["dataset"], written["backbone"]) == ("pvera", "mnist5k", "tiny")
    assert 0.0 <= written["test_top1"] <= 1.0 and 0.0 <= written["val_top1"] <= 1.0
    assert written["test_nll"] > 0 and 0.0 <= written["test_ece"] <= 1.0
    assert written["adapter_params"] == 4 * 2 * (2 * 256 + 192)  # depth 4, q and v, d has 2r, b has 192
    assert written["head_params"] == 192 * 10 + 10
    assert written["epochs_run"] == 2 and len(written["history"]) == 2
    assert written["config"]["trainer"]["epochs"] == 2
    assert written["pretrained"] is False
    assert (written["convention"], written["quirks"]) == ("official", [])
    assert written["val_loss"] == written["val_nll"]  # without the double-softmax quirk the criterion is the NLL
    assert set(written["versions"]) >= {"python", "torch", "timm"}
    assert path.parent.parent.name == "tiny" and path.parent.name == "mnist5k"
    assert path.name.startswith("pvera__mean__early_stop__s0__")


@pytest.mark.slow
def test_same_seed_same_result_and_other_seed_differs(demo_config, tmp_path):
    # two results folders: in one, the second run would be served from the first run's JSON
    first_cfg = demo_config("adapter=lora", "seed=3", f"paths.results={tmp_path / 'first'}")
    second_cfg = demo_config("adapter=lora", "seed=3", f"paths.results={tmp_path / 'second'}")
    first, second = run(first_cfg), run(second_cfg)
    other = run(demo_config("adapter=lora", "seed=4"))
    first_path, second_path = expected_result_path(first_cfg), expected_result_path(second_cfg)
    # the same run identity, and each folder holds a result its own run trained and wrote
    assert first_path.name == second_path.name and first_path.is_file() and second_path.is_file()
    assert (first["test_top1"], first["test_nll"]) == (second["test_top1"], second["test_nll"])
    assert first["history"] == second["history"]
    assert other["test_nll"] != first["test_nll"]


def test_vtab_protocol_trains_on_train800val200_without_validation(demo_config):
    record = run(demo_config("adapter=linear", "protocol=vtab"))
    assert record["protocol"] == "vtab"
    assert record["val_top1"] is None
    assert record["best_epoch"] == record["epochs_run"] == 2
    assert all("val_nll" not in epoch for epoch in record["history"])
    stored = read_predictions(predictions_file(expected_result_path(demo_config("adapter=linear", "protocol=vtab"))))
    assert list(stored) == ["test"]  # val200 was trained on: no val predictions to calibrate on


def test_early_stopping_stops_after_patience(demo_config):
    # a learning rate this small barely moves the loss, so no epoch improves it by 50 %
    record = run(
        demo_config(
            "adapter=linear",
            "trainer.epochs=20",
            "trainer.lr=1e-9",
            "protocol.patience=3",
            "protocol.min_rel_improvement=0.5",
        )
    )
    assert record["best_epoch"] == 1
    assert record["epochs_run"] == 4


def test_predictions_are_stored_and_give_back_the_results_metrics(demo_config, data_root):
    cfg = demo_config("adapter=pvera", "sampling=mc", "sampling.n=3")
    record = run(cfg)
    path = predictions_file(expected_result_path(cfg))
    assert record["predictions"] == path.name and path.is_file()
    stored = read_predictions(path)
    assert list(stored) == ["test", "val"]
    test, val = stored["test"], stored["val"]
    assert test.probs.dtype == torch.float32 and test.per_pass.dtype == torch.float16
    assert test.probs.shape == (4000, 10) and test.per_pass.shape == (3, 4000, 10) and val.probs.shape == (200, 10)
    metrics = prediction_metrics(test)
    assert (metrics["top1"], metrics["nll"], metrics["ece"]) == (
        record["test_top1"],
        record["test_nll"],
        record["test_ece"],
    )
    assert metrics["predictive_std"] == pytest.approx(record["test_predictive_std"], rel=1e-2)  # float16 passes
    torch.testing.assert_close(test.per_pass.float().mean(dim=0), test.probs, atol=1e-3, rtol=0)
    uncertainty = record["uncertainty"]
    assert uncertainty["mutual_information"] > 0  # PVeRA's passes disagree
    assert uncertainty["temperature"] > 0 and uncertainty["ece"] == record["test_ece"]
    recomputed = uncertainty_metrics(stored)  # from the file alone; MC passes are stored in float16
    assert recomputed.pop("conformal") == uncertainty["conformal"]  # from the float32 probabilities: exact
    assert uncertainty["conformal"]["aps"]["set_size"] < 10  # sets calibrated on val200, smaller than all classes
    assert recomputed == pytest.approx({k: v for k, v in uncertainty.items() if k != "conformal"}, rel=1e-2, abs=1e-4)
    assert {k: recomputed[k] for k in ("brier", "aurc", "augrc", "temperature")} == {
        k: uncertainty[k] for k in ("brier", "aurc", "augrc", "temperature")
    }


def test_a_deterministic_adapter_under_mc_sampling_has_no_mutual_information_and_says_why(demo_config, caplog):
    record = run(demo_config("adapter=lora", "sampling=mc", "sampling.n=3"))
    assert record["uncertainty"]["mutual_information"] == pytest.approx(0.0, abs=1e-6)  # identical passes
    assert "sampling.mode=mc had no effect: lora has no latent to sample and no adapter.dropout" in caplog.text


@pytest.mark.parametrize("adapter", ["lora", "vera"])
def test_mc_dropout_keeps_the_adapters_dropout_on_at_test_time(demo_config, adapter):
    cfg = demo_config(f"adapter={adapter}", "adapter.dropout=0.3", "sampling=mc", "sampling.n=3")
    record = run(cfg)
    assert record["uncertainty"]["mutual_information"] > 0  # the passes drop different inputs
    stored = read_predictions(predictions_file(expected_result_path(cfg)))["test"]
    assert not torch.equal(stored.per_pass[0], stored.per_pass[1])
    single = run(demo_config(f"adapter={adapter}", "adapter.dropout=0.3"))  # sampling=mean: dropout off
    assert single["history"] == record["history"]  # validation never samples
    assert single["test_nll"] != record["test_nll"]


def test_an_unreadable_predictions_file_is_one_line(tmp_path):
    path = tmp_path / "run.predictions.safetensors"
    path.write_bytes(b"not a safetensors file")
    with pytest.raises(UserError, match=r"run.predictions.safetensors: not a readable predictions file"):
        read_predictions(path)


def test_mc_sampling_records_predictive_std(demo_config):
    record = run(demo_config("adapter=pvera", "sampling=mc", "sampling.n=3"))
    assert record["sampling"] == "mc"
    assert record["test_predictive_std"] > 0
    [name] = results(Path(demo_config().paths.results))
    assert "__mc3__" in name


@pytest.mark.slow
def test_pvera_sampling_modes_change_the_test_but_never_the_validation(demo_config):
    modes = ("mean", "fixed", "random", "mc_layer")
    results = {mode: run(demo_config("adapter=pvera", f"sampling={mode}")) for mode in modes}
    nll = {mode: record["test_nll"] for mode, record in results.items()}
    assert len(set(nll.values())) == len(modes), nll
    assert {record["sampling"] for record in results.values()} == set(modes)
    histories = [record["history"] for record in results.values()]
    assert all(history == histories[0] for history in histories)  # validation always uses the mean latent


def test_bad_adapter_value_fails_before_anything_is_built(demo_config):
    cfg = demo_config("adapter=lora", "adapter.r=0")
    with pytest.raises(UserError, match=r"^adapter=lora: adapter.r must be >= 1, got 0$"):
        run(cfg)
    assert not Path(cfg.paths.results).exists()


@pytest.mark.slow
def test_bf16_autocast_runs_on_cpu_and_changes_the_numerics(demo_config):
    fp32 = run(demo_config("adapter=pvera"))
    bf16 = run(demo_config("adapter=pvera", "trainer.bf16=true"))
    assert bf16["status"] == "success" and bf16["config"]["trainer"]["bf16"] is True
    assert bf16["test_nll"] != fp32["test_nll"]
    assert abs(bf16["test_nll"] - fp32["test_nll"]) < 0.2  # the same model, at lower precision


@pytest.mark.slow
def test_torch_compile_path_gives_the_eager_result(demo_config, tmp_path):
    eager = run(demo_config("adapter=lora", "trainer.epochs=1"))
    # its own results folder: compile is not part of a run's identity, so the eager result would be reused
    compiled_dir = tmp_path / "compiled"
    compiled = run(
        demo_config("adapter=lora", "trainer.epochs=1", "trainer.compile=true", f"paths.results={compiled_dir}")
    )
    assert compiled["config"]["trainer"]["compile"] is True and len(list(compiled_dir.rglob("*.json"))) == 1
    assert compiled["test_top1"] == pytest.approx(eager["test_top1"], abs=2e-3)
    assert compiled["test_nll"] == pytest.approx(eager["test_nll"], rel=1e-3)


def test_linear_probe_on_cached_features_matches_the_image_path(demo_config, tmp_path):
    cached = run(demo_config("adapter=linear"))
    direct = run(demo_config("adapter=linear", "trainer.cache_features=false", f"paths.results={tmp_path / 'direct'}"))
    assert cached["features_cached"] is True and direct["features_cached"] is False
    assert cached["test_top1"] == pytest.approx(direct["test_top1"], abs=1e-3)
    assert cached["test_nll"] == pytest.approx(direct["test_nll"], rel=1e-4)
    assert [e["train_loss"] for e in cached["history"]] == pytest.approx([e["train_loss"] for e in direct["history"]])


def test_adapters_that_train_inside_the_backbone_never_use_cached_features(demo_config):
    assert run(demo_config("adapter=lora"))["features_cached"] is False


def test_a_packed_grid_run_gives_the_numbers_of_the_same_run_unpacked(demo_config, tmp_path):
    """trainer.pack: PVeRA's three learning rates (training noise on) in one forward per step."""
    overrides = ("adapter=pvera", "grid=pvera", "trainer.epochs=5")
    records, stored = {}, {}
    for packed in (True, False):
        cfg = demo_config(*overrides, f"trainer.pack={packed}", f"paths.results={tmp_path / str(packed)}")
        records[packed] = run(cfg)
        stored[packed] = read_predictions(predictions_file(expected_result_path(cfg)))["test"].probs
    packed, alone = records[True], records[False]
    assert packed["packed"] and not alone["packed"]
    assert [r["packed_with"] for r in packed["grid"]] == [[0, 1, 2]] * 3 and "packed_with" not in alone["grid"][0]
    for one, other in zip(packed["grid"], alone["grid"], strict=True):
        assert len(one["val_curve"]) == 5
        torch.testing.assert_close(torch.tensor(one["val_curve"]), torch.tensor(other["val_curve"]), rtol=1e-5, atol=0)
        assert (one["best_epoch"], one.get("selected")) == (other["best_epoch"], other.get("selected"))
    torch.testing.assert_close(stored[True], stored[False], rtol=1e-5, atol=1e-7)
    assert packed["test_top1"] == alone["test_top1"]


def test_a_grid_whose_frozen_backbone_draws_trains_each_point_alone(demo_config, tmp_path, caplog):
    """Stochastic depth in the frozen blocks: one draw for a packed batch is not each point's own, so trainer.pack
    leaves such points alone and the run computes what trainer.pack=false computes."""
    overrides = ("adapter=lora", "grid=pvera", "trainer.epochs=2", "+backbone.model_kwargs.drop_path_rate=0.2")
    records = {}
    for packed in (True, False):
        cfg = demo_config(*overrides, f"trainer.pack={packed}", f"paths.results={tmp_path / str(packed)}")
        with caplog.at_level(logging.INFO, logger="pvera_bench.training.packed"):
            records[packed] = run(cfg)
    assert "grid point 1 trains alone: its frozen layers draw random numbers" in caplog.text
    assert not records[True]["packed"]
    for one, other in zip(records[True]["grid"], records[False]["grid"], strict=True):
        assert one["val_curve"] == other["val_curve"]
