"""Print the sweep that reproduces the PVeRA paper's VTAB-1k table, with a projection of its GPU-hours.

``pvera-bench reproduce [--adapters lora,vera] [--seeds 0] [--epochs 100] [--train-throughput 350]
[--infer-throughput 700] [--bench results/bench/gpu-<device>.json]``

The sweep is the paper's 8 adapters x the 19 VTAB-1k tasks (the options of ``conf/dataset/`` that have an
``order``) x seeds 0, 1, 2 under ``experiment=pvera_paper`` (docs/reproduction.md). The GPU-hours are a
projection from the assumptions below, all printed and all overridable. The training throughput is measured
when ``scripts/gpu_bench.py`` has left a report (the newest ``results/bench/gpu-*.json``, or ``--bench``): its
epoch of a real packed run. Reads only ``conf/`` and that report: no data, no network, no torch.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

import yaml

from pvera_bench.config import CONF_DIR as CONF

EXPERIMENT = "pvera_paper"
PAPER_ADAPTERS = ("linear", "lora", "dora", "vera", "pvera", "adaptformer", "bottleneck", "ia3")
TRAIN_IMAGES, VAL_IMAGES = 800, 200  # train800 and val200 of every VTAB-1k task

# Test-set sizes of the 19 tasks (the `test` split of the VTAB-1k folders), by dataset option, derived from
# google-research/task_adaptation's split definitions (``task_adaptation/data/*.py``; retinopathy confirmed in
# luogen1996/RepAdapter issue 15) and listed in docs/data.md. The two CLEVR, dSprites and smallNORB tasks share
# their test images, and each task tests on them.
TEST_IMAGES = {
    "cifar100": 10_000,
    "caltech101": 6_084,
    "dtd": 1_880,
    "oxford_flowers102": 6_149,
    "oxford_iiit_pet": 3_669,
    "svhn": 26_032,
    "sun397": 21_750,
    "patch_camelyon": 32_768,
    "eurosat": 5_400,
    "resisc45": 6_300,
    "diabetic_retinopathy": 42_670,
    "clevr_count": 15_000,
    "clevr_dist": 15_000,
    "dmlab": 22_735,
    "kitti": 711,
    "dsprites_loc": 73_728,
    "dsprites_ori": 73_728,
    "smallnorb_azi": 12_150,
    "smallnorb_ele": 12_150,
}

# Defaults of the assumptions (each printed with "assumed"):
# - Throughput. DINOv2 ViT-B/14 at 224 px (257 tokens) costs 43.9 GFLOPs per image forward and 87.5 GFLOPs per
#   training image (forward, then backward to the first block's input; the frozen backbone gets no weight
#   gradients), counted with torch.utils.flop_counter.FlopCounterMode on timm's vit_base_patch14_dinov2. The
#   official code runs in plain fp32 (no AMP) and PyTorch leaves TF32 matmuls off, so the ceiling of one H100 SXM
#   is its fp32 peak, about 67 TFLOPS. At an assumed half of that: ~760 inference and ~380 training images/s,
#   rounded down to 700 and 350 for the per-step overheads of batch 16 (optimizer step, host-device traffic).
#   Adapter FLOPs are left out (small next to the backbone's at these ranks and widths).
# - Epochs. The early_stop protocol stops a grid point after 20 epochs without a 0.1 % relative val-loss decrease, so a
#   point runs at least 21 epochs and at most 500 (trainer.epochs). With quirks.joint_early_stopping every point
#   trains until the slowest is stale, and the double softmax flattens the val loss (it floors at
#   log(1 + (C-1)/e)), which ends the improvements early. No run has been measured: 100 is a guess between the
#   bounds, and the output also gives the projection at 21 and at 500 epochs.
DEFAULT_EPOCHS = 100
DEFAULT_TRAIN_THROUGHPUT = 350.0  # training images/s (forward + backward + optimizer step)
DEFAULT_INFER_THROUGHPUT = 700.0  # inference images/s (validation, test, the linear probe's features)
MIN_EPOCHS, MAX_EPOCHS = 21, 500
BENCH_REPORTS = Path("results/bench")  # scripts/gpu_bench.py writes gpu-<device>.json here


def fail(message: str) -> NoReturn:
    """``error: <message>`` on one line of stderr and exit status 2, as every command of the project."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:
        fail(message)


def vtab_tasks() -> list[str]:
    """The dataset options of the 19 VTAB-1k tasks (those with an ``order``), in the tables' column order."""
    tasks = {}
    for path in sorted((CONF / "dataset").glob("*.yaml")):
        order = (yaml.safe_load(path.read_text()) or {}).get("order")
        if order is not None:
            tasks[path.stem] = order
    return sorted(tasks, key=tasks.get)


def grid_sizes() -> dict[str, int]:
    """Points of each adapter's grid in ``conf/grid/pvera.yaml`` (adapters without an entry train one point)."""
    grid = yaml.safe_load((CONF / "grid" / "pvera.yaml").read_text()) or {}
    sizes = {}
    for adapter, axes in grid.items():
        size = 1
        for values in axes.values():
            size *= len(values)
        sizes[adapter] = size
    return sizes


def comma_list(text: str) -> list[str]:
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        raise argparse.ArgumentTypeError("an empty list")
    return list(dict.fromkeys(items))


def seeds(text: str) -> list[int]:
    try:
        values = [int(item) for item in comma_list(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of seeds (e.g. 0,1,2)") from None
    if any(value < 0 for value in values):
        raise argparse.ArgumentTypeError(f"{text!r}: seeds must be >= 0")
    return values


def positive(kind: Callable[[str], float]) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"{text!r} must be positive")
        return value

    return parse


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = Parser(
        prog="pvera-bench reproduce", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--adapters",
        type=comma_list,
        default=list(PAPER_ADAPTERS),
        help=f"comma-separated subset of {','.join(PAPER_ADAPTERS)} (default: all)",
    )
    parser.add_argument("--seeds", type=seeds, default=[0, 1, 2], help="comma-separated seeds (default: 0,1,2)")
    parser.add_argument(
        "--epochs",
        type=positive(int),
        default=DEFAULT_EPOCHS,
        help="assumed mean epochs per grid point (default: %(default)s; see the comment in this script)",
    )
    parser.add_argument(
        "--train-throughput",
        type=positive(float),
        help="training images/s on one GPU (default: measured in --bench, else assumed "
        f"{DEFAULT_TRAIN_THROUGHPUT:g}: one H100, fp32, DINOv2 ViT-B/14 224 px)",
    )
    parser.add_argument(
        "--bench",
        type=Path,
        help="a report of scripts/gpu_bench.py (default: the newest results/bench/gpu-*.json, if any)",
    )
    parser.add_argument(
        "--infer-throughput",
        type=positive(float),
        default=DEFAULT_INFER_THROUGHPUT,
        help="assumed inference images/s on one GPU (default: %(default)s: same machine)",
    )
    args = parser.parse_args(argv)
    unknown = [name for name in args.adapters if name not in PAPER_ADAPTERS]
    if unknown:
        parser.error(f"--adapters: unknown {', '.join(unknown)}; choose from {','.join(PAPER_ADAPTERS)}")
    args.adapters = [name for name in PAPER_ADAPTERS if name in args.adapters]  # the paper's order
    args.measured = None
    if args.train_throughput is None:
        args.measured = measured_throughput(args.bench)
        args.train_throughput = args.measured["train_images_per_s"] if args.measured else DEFAULT_TRAIN_THROUGHPUT
    elif args.bench is not None:
        parser.error("--bench and --train-throughput both set the training throughput; give one")
    return args


def measured_throughput(report: Path | None) -> dict | None:
    """The real run's training throughput in a GPU benchmark report, with the report and its device; ``report``
    None: the newest ``results/bench/gpu-*.json``, or None when there is none."""
    if report is None:
        reports = sorted(BENCH_REPORTS.glob("gpu-*.json"), key=lambda path: path.stat().st_mtime)
        reports = [path for path in reports if path.name != "gpu-cpu.json"]  # a CPU run says nothing of a GPU's
        if not reports:
            return None
        report = reports[-1]
    if not report.is_file():
        fail(f"--bench {report}: no such file; run scripts/gpu_bench.py on a GPU first, or give --train-throughput")
    try:
        content = json.loads(report.read_text())
        measured = {"train_images_per_s": float(content["real_run"]["train_images_per_s"]), "device": content["device"]}
    except (OSError, ValueError, KeyError, TypeError) as error:
        fail(f"--bench {report}: not a report of scripts/gpu_bench.py ({type(error).__name__}: {error})")
    return {**measured, "report": str(report)}


def run_seconds(adapter: str, points: int, test_images: int, epochs: int, train_ips: float, infer_ips: float) -> float:
    """Projected GPU seconds of one run: every grid point trains and validates each epoch, then one test pass.

    The linear probe trains its head on features computed once (trainer.cache_features), so it costs one
    inference pass over train800, val200 and test; its epochs on features are taken as free.
    """
    if adapter == "linear":
        return (TRAIN_IMAGES + VAL_IMAGES + test_images) / infer_ips
    epoch = TRAIN_IMAGES / train_ips + VAL_IMAGES / infer_ips
    return points * epochs * epoch + test_images / infer_ips


def projection(args: argparse.Namespace, tasks: list[str], sizes: dict[str, int], epochs: int) -> dict[str, float]:
    """Projected GPU-hours of each adapter's runs over ``tasks`` and ``args.seeds``."""
    return {
        adapter: len(args.seeds)
        * sum(
            run_seconds(
                adapter, sizes.get(adapter, 1), TEST_IMAGES[task], epochs, args.train_throughput, args.infer_throughput
            )
            for task in tasks
        )
        / 3600
        for adapter in args.adapters
    }


def main(argv: list[str] | None = None) -> None:
    if hasattr(signal, "SIGPIPE"):
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # `... | head` ends quietly
    args = parse_args(argv)
    tasks = vtab_tasks()
    missing = [task for task in tasks if task not in TEST_IMAGES]
    if missing:
        fail(f"no test-set size in pvera_bench/cli/reproduce.py for {', '.join(missing)}; add it to TEST_IMAGES")
    if not (CONF / "experiment" / f"{EXPERIMENT}.yaml").is_file():
        fail(f"conf/experiment/{EXPERIMENT}.yaml is missing")
    sizes = grid_sizes()
    runs = len(args.adapters) * len(tasks) * len(args.seeds)
    points = sum(sizes.get(adapter, 1) for adapter in args.adapters) * len(tasks) * len(args.seeds)
    sweep = (
        f"python -m pvera_bench --multirun experiment={EXPERIMENT} \\\n"
        f"    adapter={','.join(args.adapters)} \\\n"
        f"    dataset={','.join(tasks)} \\\n"
        f"    seed={','.join(map(str, args.seeds))}"
    )
    print("# The PVeRA paper's VTAB-1k table: its computation (experiment=pvera_paper, docs/reproduction.md).")
    print("# Data: data.root=<VTAB-1k folders> (docs/data.md); weights from the hub, or backbone.weights=<file>.")
    print("# One machine, runs in turn:")
    print(sweep)
    print("# A SLURM cluster: Hydra's submitit_slurm launcher through conf/hydra/launcher/slurm_gpu.yaml")
    print("# (1 GPU, 8 CPUs, 48 GB, 4 h per run, requeued when preempted):")
    print(f"{sweep} \\\n    hydra/launcher=slurm_gpu hydra.launcher.partition=<partition>")
    print("# Then: make table   (the paper's published averages beside these rows)")
    print()
    print(
        f"runs: {len(args.adapters)} adapters x {len(tasks)} tasks x {len(args.seeds)} seeds = {runs} "
        f"({points:,} grid points trained)"
    )
    print()
    print("GPU-hours: a PROJECTION from the figures below, not a measurement of the sweep")
    if args.measured:
        print(
            f"  measured training throughput {args.train_throughput:.1f} images/s on {args.measured['device']} "
            f"(one epoch of a packed run, {args.measured['report']})"
        )
    else:
        print(f"  assumed training throughput   {args.train_throughput:g} images/s (--train-throughput)")
    print(f"  assumed inference throughput  {args.infer_throughput:g} images/s (--infer-throughput)")
    print(f"  assumed epochs per grid point {args.epochs} (--epochs; early stopping: {MIN_EPOCHS} to {MAX_EPOCHS})")
    print(
        f"  per run: grid points x epochs x ({TRAIN_IMAGES} train / training throughput + {VAL_IMAGES} val / "
        "inference throughput) + test images / inference throughput"
    )
    print("  linear: features computed once (train, val, test at inference throughput), its epochs taken as free")
    sizes_text = ", ".join(f"{task} {TEST_IMAGES[task]:,}" for task in tasks)
    print(f"  test images per task (as in docs/data.md): {sizes_text}")
    print("  left out: data preparation and decoding, start-up, model building, checkpoint writes")
    hours = projection(args, tasks, sizes, args.epochs)
    print()
    print(f"  {'adapter':<12} {'grid points':>11} {'runs':>5} {'GPU-hours':>10}")
    for adapter in args.adapters:
        grid = sizes.get(adapter, 1)
        print(f"  {adapter:<12} {grid:>11} {len(tasks) * len(args.seeds):>5} {hours[adapter]:>10.1f}")
    low = sum(projection(args, tasks, sizes, MIN_EPOCHS).values())
    high = sum(projection(args, tasks, sizes, MAX_EPOCHS).values())
    print(f"projected GPU-hours: {sum(hours.values()):.1f} (assumed {args.epochs} epochs)")
    print(f"  with {MIN_EPOCHS} epochs: {low:.1f}; with {MAX_EPOCHS} epochs: {high:.1f} (same assumed throughputs)")
