#!/usr/bin/env python
"""Training throughput on the GPU: ``python scripts/gpu_bench.py [--device cuda] [--budget-s 270]``.

For each adapter of the PVeRA paper on a random-init backbone (default DINOv2-B/14 at 224 px, as
``experiment=pvera_paper`` runs it), measures with the harness's own trainer (``EpochLoop``, ``Pack``):

- train images/s at ``trainer.batch_size`` images per grid point and step: one grid point alone, the adapter's
  whole grid (``grid=pvera``) trained in turn (``trainer.pack=false``), and packed (``trainer.pack``); each the
  median of ``--repeats`` timed epochs of ``--steps`` steps, after ``--warmup`` epochs (2), in turn and packed epochs
  alternating (``time_over_first``: packed time / in-turn time, the median of the pairs);
- model FLOP utilisation (MFU): FLOPs per step counted with ``torch.utils.flop_counter.FlopCounterMode`` (eager)
  times steps/s over the device's dense peak for the dtype (fp32 without TF32, or bf16);
- each in fp32 and under bf16 autocast, eager and with ``torch.compile``.

Eager cells run first; compiled cells follow while ``--budget-s`` lasts, at least one (the rest are listed as
not measured).
Then one epoch of a real run (``pvera-bench run``: mnist5k resized to the backbone's input, PVeRA's grid packed).
Writes ``results/bench/gpu-<device>.json`` and ``.md``; ``pvera-bench reproduce`` takes its throughput from
the newest such file.
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
from torch.utils.flop_counter import FlopCounterMode

from pvera_bench.artefacts.provenance import git_state, package_versions
from pvera_bench.config.grid import grid_points, with_point
from pvera_bench.data import SplitData
from pvera_bench.models.build import seeded_model
from pvera_bench.models.runtime import Normalizer, Runtime, resolve_device, reuse_freed_host_memory
from pvera_bench.pipeline.compose import compose_config
from pvera_bench.pipeline.run import run
from pvera_bench.training.loop import EpochLoop, Objective, elapsed_since
from pvera_bench.training.packed import Pack

ADAPTERS = ("lora", "dora", "vera", "pvera", "adaptformer", "bottleneck", "ia3")
# Dense peak FLOP/s by device name (NVIDIA data sheets; fp32 is the non-tensor-core rate, TF32 being off).
PEAK_FLOPS = {
    "H100 PCIe": {"fp32": 51e12, "bf16": 756e12},
    "H100": {"fp32": 67e12, "bf16": 989e12},  # SXM
    "H200": {"fp32": 67e12, "bf16": 989e12},
    "A100": {"fp32": 19.5e12, "bf16": 312e12},
}


def host_page_faults() -> int:
    """Minor page faults of this process so far (on a CPU run, each is a fresh page of activation memory)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def peak_flops(device: torch.device) -> tuple[str, dict[str, float] | None]:
    """The device's name and its dense peak FLOP/s per dtype (None where unknown, e.g. a CPU)."""
    if device.type != "cuda":
        return "cpu", None
    name = torch.cuda.get_device_name(device)
    return name, next((peak for key, peak in PEAK_FLOPS.items() if key in name), None)


# One grid point alone; then the grid one point after another and packed, side by side (their epochs alternate).
MODES = (("alone",), ("in_turn", "packed"))


def pack_of(cfg, points: list[dict], runtime: Runtime, data: SplitData, packed: bool) -> Pack:
    """The grid points' epoch loops, each built as a run builds it, without validation."""
    loops = []
    for point in points:
        point_cfg = with_point(cfg, point)
        model = seeded_model(point_cfg, runtime.device)
        objective = Objective(adapter_lr=point_cfg.adapter.lr, regularization_weight=1.0 / point_cfg.dataset.beta)
        loops.append(EpochLoop(model, data, None, runtime, point_cfg.trainer, point_cfg.protocol, objective, 0))
    return Pack(loops, packed)


def measure(cfg, modes: tuple[str, ...], runtime: Runtime, args: argparse.Namespace, count_flops: bool) -> list[dict]:
    """For each mode: train images/s of all its points together, the median of ``args.repeats`` epochs after
    ``args.warmup`` untimed ones, the modes' epochs taken in turn (side by side), and the FLOPs of one step of
    every point. The second of two modes also gets ``time_over_first``: the median of its per-repeat time ratios
    to the first (``time_over_first_pairs``)."""
    batch, size, steps = cfg.trainer.batch_size, cfg.backbone.img_size, args.steps
    images = torch.randint(0, 256, (batch * steps, 3, size, size), dtype=torch.uint8, device=runtime.device)
    data = SplitData(images, torch.randint(0, cfg.dataset.num_classes, (batch * steps,), device=runtime.device))
    points = {mode: [{}] if mode == "alone" else grid_points(cfg) for mode in modes}
    packs = {mode: pack_of(cfg, points[mode], runtime, data, packed=mode == "packed") for mode in modes}
    times: dict[str, list[float]] = {mode: [] for mode in modes}
    faults: dict[str, list[int]] = {mode: [] for mode in modes}
    for repeat in range(args.warmup + args.repeats):  # warm-up rounds: kernels, compilation, the host heap's growth
        for mode in modes:
            faulted, start = host_page_faults(), time.perf_counter()
            packs[mode].run_epoch(list(range(len(points[mode]))))
            if repeat >= args.warmup:
                times[mode].append(elapsed_since(start, runtime.device))
                faults[mode].append(host_page_faults() - faulted)
    results = []
    for mode in modes:
        seconds = statistics.median(times[mode])
        n = len(points[mode])
        result = {"points": n, "train_images_per_s": n * batch * steps / seconds, "step_s": seconds / steps}
        result["host_page_faults"] = statistics.median(faults[mode])  # per epoch: fresh host memory touched
        if count_flops:
            for loop in packs[mode].loops:
                loop.train = SplitData(images[:batch], data.labels[:batch])
            with FlopCounterMode(display=False) as counter:
                packs[mode].run_epoch(list(range(n)))
            result["flops_per_step"] = counter.get_total_flops()
        results.append(result)
    if len(modes) == 2:
        ratios = [t / f for f, t in zip(*times.values(), strict=True)]
        results[1]["time_over_first"], results[1]["time_over_first_pairs"] = statistics.median(ratios), ratios
    return results


def throughput_cells(args: argparse.Namespace, device: torch.device) -> list[dict]:
    """Every (adapter, mode, dtype, compile) cell: eager first, then compiled while the budget lasts (at least one)."""
    _, peaks = peak_flops(device)
    deadline = time.monotonic() + args.budget_s
    flops: dict[tuple[str, str], float] = {}
    cells: list[dict] = []
    for compiled in (False, True) if args.compile else (False,):
        for adapter in args.adapters:
            for dtype in args.dtypes:
                overrides = [*args.overrides, f"adapter={adapter}", f"trainer.compile={compiled}"]
                cfg = compose_config([*overrides, f"trainer.bf16={dtype == 'bf16'}", f"trainer.device={device}"])
                normalize = Normalizer((0.5, 0.5, 0.5), (0.25, 0.25, 0.25)).to(device)  # random images: any will do
                runtime = Runtime(device, normalize, bf16=dtype == "bf16", progress=False)
                for modes in MODES:
                    group = [{"adapter": adapter, "mode": mode, "dtype": dtype, "compile": compiled} for mode in modes]
                    if compiled and time.monotonic() > deadline and any(c["compile"] for c in cells):
                        cells += [{**cell, "skipped": f"--budget-s {args.budget_s:g} spent"} for cell in group]
                        continue
                    for cell, measured in zip(group, measure(cfg, modes, runtime, args, not compiled), strict=True):
                        key = (adapter, cell["mode"])
                        flops.setdefault(key, measured.pop("flops_per_step", None))
                        achieved = flops[key] / measured["step_s"]
                        mfu = achieved / peaks[dtype] if peaks else None
                        cells.append({**cell, **measured, "model_tflops_per_s": achieved / 1e12, "mfu": mfu})
                        print(json.dumps(cells[-1]), flush=True)
    return cells


def real_run(args: argparse.Namespace, device: torch.device) -> dict:
    """One epoch of ``pvera-bench run`` with PVeRA's grid trained packed (fp32, as the paper's code runs)."""
    with tempfile.TemporaryDirectory() as folder:
        overrides = [
            f"data.root={folder}/data",  # mnist5k is built there, unless --overrides names a data.root
            *args.overrides,
            "adapter=pvera",
            "grid=pvera",
            "dataset=mnist5k",
            "trainer.epochs=1",
            f"trainer.device={device}",
            "trainer.progress=false",
            "trainer.checkpoint=false",
        ]
        start = time.perf_counter()
        record = run(compose_config([*overrides, f"paths.results={folder}/runs"]))
    points = len(record["grid"])
    return {
        "overrides": overrides[1:],
        "points": points,
        "packed": record["packed"],
        "train_images_per_s": points * record["train_images_per_s"],  # the pack's: each point's times the points
        "wall_s": time.perf_counter() - start,
        "peak_memory_mb": record["peak_memory_mb"],
    }


def render(report: dict) -> str:
    cells = pd.DataFrame(report["cells"]).drop(columns="time_over_first_pairs", errors="ignore")  # in the JSON
    head = (
        f"`{report.get('command', 'python scripts/gpu_bench.py')}` on {report['device']}: {report['backbone']} "
        "(random weights) at "
        f"{report['img_size']} px, batch {report['batch_size']} per grid point, the median of {report['repeats']} "
        f"epochs of {report['steps']} steps after {report['warmup']} warm-up epochs; "
        f"torch {report['versions'].get('torch')}, commit {report['commit']}"
        f"{' with uncommitted changes' if report.get('dirty') else ''}.\n\n"
    )
    real = report["real_run"]
    tail = "\n"
    if real:
        tail = (
            f"\n\nOne epoch of a real run ({' '.join(real['overrides'])}): {real['points']} points packed="
            f"{real['packed']}, {real['train_images_per_s']:.1f} train images/s, {real['wall_s']:.1f} s in all.\n"
        )
    cells = cells.astype(object).where(cells.notna(), None)  # a cell without a value is left blank
    return head + cells.to_markdown(index=False, floatfmt=".3f", missingval="") + tail


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--adapters", nargs="+", default=list(ADAPTERS), choices=ADAPTERS)
    parser.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    parser.add_argument("--steps", type=int, default=10, help="steps per timed epoch")
    parser.add_argument("--repeats", type=int, default=3, help="timed epochs per cell (the median counts)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed epochs per cell before the timed ones")
    parser.add_argument("--budget-s", type=float, default=270.0, help="seconds after which compiled cells stop")
    parser.add_argument(
        "--overrides",
        nargs="*",
        default=["backbone=dinov2_vitb14", "backbone.pretrained=false"],
        help="Hydra overrides of every cell (default: random-init DINOv2-B/14 at 224 px)",
    )
    parser.add_argument("--no-compile", dest="compile", action="store_false", help="eager cells only")
    parser.add_argument("--no-real-run", dest="real_run", action="store_false", help="skip the real run's epoch")
    parser.add_argument("--out", type=Path, default=Path("results/bench"))
    args = parser.parse_args()
    device = resolve_device(args.device)
    if device.type == "cpu":
        reuse_freed_host_memory()  # as a CPU run does (pvera_bench.pipeline.run)
    name, _ = peak_flops(device)
    cfg = compose_config(args.overrides)
    report = {
        "device": name,
        "backbone": cfg.backbone.name,
        "img_size": cfg.backbone.img_size,
        "batch_size": cfg.trainer.batch_size,
        "steps": args.steps,
        "repeats": args.repeats,
        "warmup": args.warmup,
        "command": shlex.join(["python", "scripts/gpu_bench.py", *sys.argv[1:]]),
        **{key.removeprefix("git_"): value for key, value in git_state().items()},  # commit, dirty
        "versions": package_versions(),
        "cells": throughput_cells(args, device),
        "real_run": real_run(args, device) if args.real_run else None,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"gpu-{re.sub(r'[^A-Za-z0-9]+', '-', name).strip('-').lower()}"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    stem.with_suffix(".md").write_text(render(report))
    print(render(report))


if __name__ == "__main__":
    main()
