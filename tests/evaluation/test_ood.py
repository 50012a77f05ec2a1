"""Out-of-distribution detection: metrics against scikit-learn, the ood group's task lists and errors, and an
OOD run on mock VTAB-1k tasks whose result recomputes from its stored predictions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import compose_config, expected_result_path, predictions_file, run_cli
from omegaconf import OmegaConf
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from pvera_bench.artefacts.predictions import read_predictions
from pvera_bench.core.errors import UserError
from pvera_bench.data import load_split
from pvera_bench.data.tasks import vtab_tasks
from pvera_bench.evaluation.ood import detection_metrics, ood_metrics
from pvera_bench.evaluation.predict import Predictions
from pvera_bench.pipeline.run import run
from pvera_bench.pipeline.validate import validate


def test_detection_metrics_by_hand():
    # in-distribution 0.9, 0.8, 0.7 against OOD 0.1, 0.75: 5 of the 6 pairs are ordered right
    measured = detection_metrics(torch.tensor([0.9, 0.8, 0.7]), torch.tensor([0.1, 0.75]))
    assert measured["auroc"] == pytest.approx(5 / 6)
    # accepting 95 % of the in-distribution images needs the threshold 0.7, which also accepts OOD 0.75
    assert measured["fpr95"] == pytest.approx(1 / 2)
    # AUPR-In: precision 1, 1, 3/4 at the three in-distribution images, each a third of the recall
    assert measured["aupr"] == pytest.approx((1 + 1 + 3 / 4) / 3)


def test_detection_metrics_equal_scikit_learns_with_ties():
    generator = torch.Generator().manual_seed(0)
    inside = torch.randint(0, 20, (300,), generator=generator).float() / 10 + 0.5  # ties on purpose
    outside = torch.randint(0, 20, (200,), generator=generator).float() / 10
    scores = np.concatenate([inside.numpy(), outside.numpy()])
    target = np.concatenate([np.ones(300), np.zeros(200)])
    fpr, tpr, _ = roc_curve(target, scores)
    measured = detection_metrics(inside, outside)  # torchmetrics computes in float32
    assert measured["auroc"] == pytest.approx(roc_auc_score(target, scores), rel=1e-6)
    assert measured["aupr"] == pytest.approx(average_precision_score(target, scores), rel=1e-6)
    assert measured["fpr95"] == pytest.approx(fpr[np.argmax(tpr >= 0.95)], rel=1e-6)


def test_ood_metrics_per_set_and_mean_and_mutual_information_only_with_passes():
    labels = torch.zeros(4, dtype=torch.long)
    confident = Predictions(labels, torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.95, 0.05], [0.85, 0.15]]))
    unsure = Predictions(labels[:2], torch.tensor([[0.5, 0.5], [0.6, 0.4]]))
    partly = Predictions(labels[:2], torch.tensor([[0.5, 0.5], [0.99, 0.01]]))
    metrics = ood_metrics({"test": confident, "ood-a": unsure, "ood-b": partly})
    assert set(metrics) == {"mean", "a", "b"}
    assert set(metrics["a"]) == {"msp", "entropy"}  # no MC passes: no mutual information
    assert metrics["a"]["msp"]["auroc"] == 1.0 and metrics["b"]["msp"]["auroc"] == pytest.approx(4 / 8)
    assert metrics["mean"]["msp"]["auroc"] == pytest.approx((1.0 + 0.5) / 2)
    assert ood_metrics({"test": confident}) == {}


def test_near_and_far_expand_to_the_other_tasks_of_the_group_and_of_the_other_groups():
    natural = {config.name for _, config in vtab_tasks() if config.group == "natural"}
    near = compose_config("dataset=cifar100", "ood=near")
    assert {t.name for t in tasks_of(near)} == natural - {"cifar"}
    far = {t.name for t in tasks_of(compose_config("dataset=cifar100", "ood=far"))}
    assert len(far) == 12 and not far & natural
    mixed = tasks_of(compose_config("dataset=dtd", "ood.tasks=[svhn,eurosat,dtd,svhn]"))
    assert [t.name for t in mixed] == ["svhn", "eurosat"]  # the run's own task and repeats left out


def tasks_of(cfg):
    from pvera_bench.data.tasks import ood_tasks

    return ood_tasks(cfg.ood, cfg.dataset)


def test_a_bad_ood_task_is_one_line_naming_the_valid_ones(data_root, tmp_path):
    with pytest.raises(UserError, match=r"^ood.tasks: unknown task 'cifar10'; choose from near, far, caltech101, "):
        validate(compose_config("dataset=cifar100", "ood.tasks=[cifar10]"))
    with pytest.raises(UserError, match=r"leaves no task other than mnist5k .* e.g. ood=far"):
        validate(compose_config("experiment=demo", "ood=near"))
    completed = run_cli("experiment=demo", "ood.tasks=[nosuch]", f"data.root={data_root}", f"paths.results={tmp_path}")
    assert completed.returncode != 0 and not any(tmp_path.iterdir())
    [line] = completed.stderr.strip().splitlines()
    assert line.startswith("error: ood.tasks: unknown task 'nosuch'; choose from near, far, caltech101")


def test_load_split_limit_takes_a_fixed_subset_in_file_order(mock_root):
    whole = load_split(mock_root / "svhn", "test", 10, (16, 16), progress=False)
    first = load_split(mock_root / "svhn", "test", 10, (16, 16), progress=False, limit=7)
    again = load_split(mock_root / "svhn", "test", 10, (16, 16), progress=False, limit=7)  # from the cache
    assert len(whole) > 7 and len(first) == 7
    assert torch.equal(first.images, again.images) and torch.equal(first.labels, again.labels)
    matches = [int(np.flatnonzero((whole.images == image).flatten(1).all(dim=1).numpy())[0]) for image in first.images]
    assert matches == sorted(matches)  # a subset, in the split file's order


@pytest.mark.slow
def test_an_ood_run_on_mock_tasks_writes_detection_metrics_that_recompute_from_its_predictions(mock_root, tmp_path):
    cfg = compose_config(
        "experiment=demo",
        "trainer=smoke",
        "dataset=dtd",
        "adapter=pvera",
        "sampling=mc",
        "sampling.n=3",
        "ood.tasks=[svhn,eurosat]",
        "ood.max_images=20",
        f"data.root={mock_root}",
        f"paths.results={tmp_path}",
    )
    record = run(cfg)
    ood = record["uncertainty"]["ood"]
    assert set(ood) == {"mean", "svhn", "eurosat"}
    for task in ("svhn", "eurosat"):
        assert set(ood[task]) == {"msp", "entropy", "mutual_information"}
        for score in ood[task].values():
            assert 0 <= score["auroc"] <= 1 and 0 <= score["fpr95"] <= 1 and 0 < score["aupr"] <= 1
    assert OmegaConf.to_container(cfg.ood)["tasks"] == record["config"]["ood"]["tasks"]
    stored = read_predictions(predictions_file(expected_result_path(cfg)))
    assert sorted(stored) == ["ood-eurosat", "ood-svhn", "test", "val"]
    assert len(stored["ood-svhn"].labels) == 20 and stored["ood-svhn"].per_pass.shape[0] == 3
    recomputed = ood_metrics(stored)
    for task, scores in ood.items():
        for score, metrics in scores.items():  # the MI from float16 passes may order a few images differently
            assert recomputed[task][score] == pytest.approx(metrics, abs=0 if score == "msp" else 0.02)
