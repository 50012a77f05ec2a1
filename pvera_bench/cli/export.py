"""``pvera-bench export <run>.json|<run>.adapter.safetensors --out DIR [--push-to-hub REPO]``: a run's adapter as a
Hugging Face PEFT adapter folder (:mod:`pvera_bench.artefacts.export`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from pvera_bench.artefacts.export import PVERA_AS, export_peft
from pvera_bench.artefacts.hub import push_to_hub


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="pvera-bench export", description="Export a run's adapter as a Hugging Face PEFT adapter."
    )
    parser.add_argument("artefact", type=Path, help="the run's result JSON or its .adapter.safetensors file")
    parser.add_argument("--out", type=Path, required=True, help="folder to write the PEFT adapter to")
    parser.add_argument("--push-to-hub", metavar="REPO_ID", help="also upload the folder to this hub model repo")
    parser.add_argument(
        "--pvera-as", choices=PVERA_AS, default="pvera", help="PVeRA as PEFT's PVeRA, or its mean latent as VeRA"
    )
    args = parser.parse_args(argv)
    out = export_peft(args.artefact, args.out, args.pvera_as)
    print(f"wrote {out}")
    if args.push_to_hub:
        print(f"pushed to {push_to_hub(out, args.push_to_hub)}")
