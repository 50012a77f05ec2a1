"""Trainable-parameter counts of a configuration, from the adapted model built with random weights (no data, no
download)."""

from __future__ import annotations

from pvera_bench.models.backbone import random_weights_expected
from pvera_bench.models.build import build_model, count_parameters
from pvera_bench.pipeline.compose import compose_config
from pvera_bench.pipeline.validate import validate


def parameter_report(overrides: list[str]) -> dict:
    """Counts for the model the overrides describe, built with random weights."""
    cfg = compose_config([*overrides, "backbone.pretrained=false", "backbone.weights=null"])
    validate(cfg)
    with random_weights_expected():
        counts = count_parameters(build_model(cfg))
    return {"adapter": cfg.adapter.name, "backbone": cfg.backbone.id, "num_classes": cfg.dataset.num_classes, **counts}
