"""``pvera-bench prepare <task>... | all [--root DIR] [--mock]``: build VTAB-1k task folders from TFDS.

Tasks are named as in ``pvera_bench/conf/dataset/`` (``cifar100``) or by folder (``cifar``). Real data needs
TensorFlow (``pip install 'pvera-bench[data]'``) and network; ``--mock`` runs every step offline on TFDS's mock
data to check a setup. Finished tasks are skipped, interrupted ones resume.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="pvera-bench prepare", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("tasks", nargs="+", help="task names, or all")
    parser.add_argument(
        "--root", type=Path, default=Path("data/vtab-1k"), help="data.root to write (default: %(default)s)"
    )
    parser.add_argument(
        "--data-dir", type=Path, help="TFDS data_dir for downloads (default: TFDS's, ~/tensorflow_datasets)"
    )
    parser.add_argument("--mock", action="store_true", help="use tfds.testing.mock_data: offline, random images")
    parser.add_argument("--workers", type=int, default=8, help="threads encoding PNGs (default: %(default)s)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    from pvera_bench.data.prepare import TaskWriter  # after the arguments: --help needs no torch
    from pvera_bench.data.tasks import load_datasets

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    for option, dataset in load_datasets(args.tasks):
        started = time.perf_counter()
        writer = TaskWriter(dataset, args.root, args.data_dir, args.mock, args.workers, progress=not args.quiet)
        if writer.prepare():
            print(f"{option}: prepared in {writer.task_dir} ({time.perf_counter() - started:.1f} s)")
        else:
            print(f"{option}: already prepared in {writer.task_dir}, nothing to do")
