"""``python -m pvera_bench.params backbone=<id> adapter=<name> [overrides]``: trainable-parameter counts.

Builds the adapted model with random weights (no data, no download) for the composed
config and prints its counts; the last line is one JSON object.
"""

from __future__ import annotations

import json
import logging
import sys

from hydra import compose, initialize_config_dir

from pvera_bench.cli import CONF_DIR, run_cli
from pvera_bench.config import register_configs, validate
from pvera_bench.model import build_model, count_parameters


def parameter_report(overrides: list[str]) -> dict:
    """Counts for the model the overrides describe, built with random weights."""
    register_configs()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(
            config_name="config", overrides=[*overrides, "backbone.pretrained=false", "backbone.weights=null"]
        )
    validate(cfg)
    counts = count_parameters(build_model(cfg))
    return {"adapter": cfg.adapter.name, "backbone": cfg.backbone.id, "num_classes": cfg.dataset.num_classes, **counts}


def main() -> None:
    logging.getLogger("pvera_bench.backbone").setLevel(logging.ERROR)  # random weights are the point here
    report = parameter_report(sys.argv[1:])
    print(f"backbone        {report['backbone']} (random weights), head for {report['num_classes']} classes")
    print(f"adapter         {report['adapter']}")
    print(f"adapter params  {report['adapter_params']:,}")
    print(f"head params     {report['head_params']:,}")
    print(f"total params    {report['total_params']:,}")
    print(json.dumps({k: report[k] for k in ("adapter", "adapter_params", "head_params", "total_params")}))


if __name__ == "__main__":
    run_cli(main)
