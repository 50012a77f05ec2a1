"""``pvera-bench params backbone=<id> adapter=<name> [overrides]``: trainable-parameter counts; the last line is one
JSON object."""

from __future__ import annotations

import argparse
import json


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="pvera-bench params", description=__doc__)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, as for pvera-bench run (e.g. adapter=lora)")
    overrides = parser.parse_args(argv).overrides
    from pvera_bench.pipeline.params import parameter_report  # after the arguments: --help needs no torch

    report = parameter_report(overrides)
    print(f"backbone        {report['backbone']} (random weights), head for {report['num_classes']} classes")
    print(f"adapter         {report['adapter']}")
    print(f"adapter params  {report['adapter_params']:,}")
    print(f"head params     {report['head_params']:,}")
    print(f"total params    {report['total_params']:,}")
    print(json.dumps({k: report[k] for k in ("adapter", "adapter_params", "head_params", "total_params")}))
