"""``pvera-bench export <run>.json|<run>.adapter.safetensors --out DIR [--push-to-hub REPO]``: a run's adapter as a
Hugging Face PEFT adapter folder (:mod:`pvera_bench.artefacts.export`)."""

from __future__ import annotations

import argparse
from pathlib import Path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="pvera-bench export", description="Export a run's adapter as a Hugging Face PEFT adapter."
    )
    parser.add_argument("artefact", type=Path, help="the run's result JSON or its .adapter.safetensors file")
    parser.add_argument("--out", type=Path, required=True, help="folder to write the PEFT adapter to")
    parser.add_argument("--push-to-hub", metavar="REPO_ID", help="also upload the folder to this hub model repo")
    parser.add_argument(
        "--pvera-as", default="pvera", help="pvera: PEFT's PVeRA (default); vera: PVeRA's mean latent as a VeRA adapter"
    )
    args = parser.parse_args(argv)
    from pvera_bench.artefacts.export import export_peft  # after the arguments: --help needs no torch
    from pvera_bench.artefacts.hub import push_to_hub

    out = export_peft(args.artefact, args.out, args.pvera_as)
    print(f"wrote {out}")
    if args.push_to_hub:
        print(f"pushed to {push_to_hub(out, args.push_to_hub)}")
