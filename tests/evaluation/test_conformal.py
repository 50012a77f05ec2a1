"""Split conformal prediction: scores, quantile and sets by hand, and coverage on a real run's predictions."""

from __future__ import annotations

import json
import math
from itertools import pairwise

import pytest
import torch
from helpers import expected_result_path, predictions_file

from pvera_bench.artefacts.predictions import read_predictions
from pvera_bench.config import ConformalConfig
from pvera_bench.evaluation.conformal import (
    aps_scores,
    at_labels,
    by_set_size,
    conformal_metrics,
    conformal_quantile,
    coverage,
    lac_scores,
    prediction_sets,
    raps_scores,
    set_size,
    worst_class_coverage,
)
from pvera_bench.evaluation.predict import Predictions
from pvera_bench.pipeline.run import run

PROBS = torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.6, 0.3], [0.25, 0.15, 0.6], [0.7, 0.2, 0.1]])
LABELS = torch.tensor([0, 2, 1, 2])  # ranks of the true class: 1, 2, 3, 3
U = torch.tensor([0.5, 0.25, 0.5, 0.1])


def random_predictions(n: int, classes: int = 10, seed: int = 0) -> Predictions:
    generator = torch.Generator().manual_seed(seed)
    probs = torch.randn(n, classes, generator=generator).mul(2).softmax(dim=-1)
    return Predictions(torch.randint(0, classes, (n,), generator=generator), probs)


def test_the_three_scores_by_hand():
    lac = at_labels(lac_scores(PROBS), LABELS)
    torch.testing.assert_close(lac, torch.tensor([0.5, 0.7, 0.85, 0.9], dtype=torch.float64))  # 1 - p_y
    aps = at_labels(aps_scores(PROBS, U), LABELS)
    # mass ranked strictly above y + u p_y: 0 + 0.5*0.5, 0.6 + 0.25*0.3, (0.6 + 0.25) + 0.5*0.15, (0.7 + 0.2) + 0.1*0.1
    torch.testing.assert_close(aps, torch.tensor([0.25, 0.675, 0.925, 0.91], dtype=torch.float64))
    raps = at_labels(raps_scores(PROBS, U, raps_lambda=0.1, raps_k_reg=1), LABELS)
    # APS + 0.1 max(0, rank - 1): 0.25 + 0, 0.675 + 0.1*1, 0.925 + 0.1*2, 0.91 + 0.1*2
    torch.testing.assert_close(raps, torch.tensor([0.25, 0.775, 1.125, 1.11], dtype=torch.float64))
    # every candidate class of image 0 with its u = 0.5: 0 + 0.5*0.5, 0.5 + 0.5*0.3, (0.5 + 0.3) + 0.5*0.2
    torch.testing.assert_close(aps_scores(PROBS, U)[0], torch.tensor([0.25, 0.65, 0.9], dtype=torch.float64))


def test_the_quantile_is_the_ceil_n_plus_1_times_1_minus_alpha_th_smallest_score():
    scores = torch.tensor([0.9, 0.5, 0.85, 0.7])
    assert conformal_quantile(scores, 0.2) == pytest.approx(0.9)  # n = 4: ceil(5 * 0.8) = 4th smallest
    assert conformal_quantile(scores, 0.4) == pytest.approx(0.85)  # ceil(5 * 0.6) = 3rd smallest
    assert conformal_quantile(scores, 0.5) == pytest.approx(0.85)  # ceil(5 * 0.5) = ceil(2.5) = 3rd smallest
    assert conformal_quantile(scores, 0.6) == pytest.approx(0.7)  # ceil(5 * 0.4) = 2nd smallest
    assert conformal_quantile(scores[:3], 0.1) == math.inf  # n = 3: ceil(4 * 0.9) = 4 > 3
    assert conformal_quantile(torch.arange(9.0), 0.7) == 2.0  # n = 9: 10 * (1 - 0.7) = 3.0000000000000004 -> 3rd


def test_sets_and_their_metrics_by_hand():
    scores = lac_scores(PROBS)
    threshold = conformal_quantile(at_labels(scores, LABELS), 0.4)  # 0.85: the classes with p >= 0.15
    sets = prediction_sets(scores, threshold)
    expected = [[True, True, True], [False, True, True], [True, True, True], [True, True, False]]
    assert sets.tolist() == expected  # image 2's true class scores exactly 0.85: a tie is in the set
    assert coverage(sets, LABELS) == 0.75  # image 3's true class (p = 0.1) is left out
    assert set_size(sets) == 2.5  # (3 + 2 + 3 + 2) / 4
    assert worst_class_coverage(sets, LABELS) == 0.5  # class 2: image 1 covered, image 3 not
    assert not prediction_sets(aps_scores(PROBS, U), 0.2)[0].any()  # a randomized set may be empty: 0.25 > 0.2


def test_size_stratified_coverage_keeps_every_bucket():
    sizes = torch.tensor([0, 1, 3, 5, 12])
    sets = torch.arange(12) < sizes.unsqueeze(1)  # image i holds classes 0 .. sizes[i] - 1
    assert by_set_size(sets, torch.zeros(5, dtype=torch.int64)) == {  # true class 0: covered unless the set is empty
        "0-1": {"count": 2, "coverage": 0.5},
        "2-3": {"count": 1, "coverage": 1.0},
        "4-10": {"count": 1, "coverage": 1.0},
        "11-100": {"count": 1, "coverage": 1.0},
        "101+": {"count": 0, "coverage": None},
    }


def test_too_few_calibration_images_give_every_class_and_the_result_is_plain_json():
    metrics = conformal_metrics(Predictions(LABELS[:3], PROBS[:3]), Predictions(LABELS, PROBS), ConformalConfig())
    assert (metrics["miscoverage"], metrics["calibration_size"]) == (0.1, 3)
    for method in ("lac", "aps", "raps"):
        assert metrics[method]["threshold"] is None  # +inf: every class
        assert (metrics[method]["coverage"], metrics[method]["set_size"]) == (1.0, 3.0)
    assert json.loads(json.dumps(metrics)) == metrics


def test_raps_without_penalty_is_aps_and_a_seed_fixes_the_randomization():
    val, test = random_predictions(200, seed=1), random_predictions(1000, seed=2)
    u = torch.rand(1000, generator=torch.Generator().manual_seed(3))
    assert torch.equal(raps_scores(test.probs, u, raps_lambda=0.0, raps_k_reg=1), aps_scores(test.probs, u))
    metrics = conformal_metrics(val, test, ConformalConfig(raps_lambda=0.0), seed=5)
    assert metrics["raps"] == metrics["aps"]
    default = ConformalConfig()
    assert conformal_metrics(val, test, default, seed=5) == conformal_metrics(val, test, default, seed=5)
    assert conformal_metrics(val, test, default, seed=5)["aps"] != conformal_metrics(val, test, default, seed=6)["aps"]


def test_lac_sets_grow_as_the_miscoverage_shrinks():
    val, test = random_predictions(500, seed=1), random_predictions(1000, seed=2)
    calibration, scores = at_labels(lac_scores(val.probs), val.labels), lac_scores(test.probs)
    sets = [prediction_sets(scores, conformal_quantile(calibration, alpha)) for alpha in (0.5, 0.3, 0.2, 0.1, 0.05)]
    for larger_alpha, smaller_alpha in pairwise(sets):
        assert not (larger_alpha & ~smaller_alpha).any()
    assert set_size(sets[0]) < set_size(sets[-1])


@pytest.mark.parametrize("miscoverage", [0.0, 1.0, -0.1, 1.5])
def test_a_miscoverage_outside_0_1_is_refused(miscoverage):
    with pytest.raises(ValueError, match=r"^conformal.miscoverage=.* must be in \(0, 1\)$"):
        ConformalConfig(miscoverage=miscoverage)


@pytest.mark.slow
def test_coverage_on_random_splits_of_a_real_runs_predictions_is_1_minus_alpha(demo_config):
    cfg = demo_config("adapter=lora")
    run(cfg)
    stored = read_predictions(predictions_file(expected_result_path(cfg)))
    labels = torch.cat([stored["val"].labels, stored["test"].labels])  # 200 + 4000 images, pooled
    probs = torch.cat([stored["val"].probs, stored["test"].probs])
    coverages = {"lac": [], "aps": [], "raps": []}
    for seed in range(20):
        order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
        calibration, rest = order[:200], order[200:]  # calibrate on val200's size, measure on the other 4000
        metrics = conformal_metrics(
            Predictions(labels[calibration], probs[calibration]),
            Predictions(labels[rest], probs[rest]),
            ConformalConfig(),
            seed=seed,
        )
        for method, measured in coverages.items():
            measured.append(metrics[method]["coverage"])
    means = {method: sum(measured) / len(measured) for method, measured in coverages.items()}
    assert all(abs(mean - 0.9) <= 0.02 for mean in means.values()), means
