#!/usr/bin/env python
"""Adapter cost benchmark: ``python scripts/bench.py [--backbone NAME] [--batch-size 8] [--dtypes fp32 bf16]``.

For one backbone (random weights: nothing is downloaded), resolution, batch size and dtype,
measures per adapter, after warm-up and interleaved with the reference it is compared to:

- train-step and eval images/s, peak memory (CUDA) or peak RSS growth (CPU);
- ``step_over_floor``: train step time / the floor, the frozen backbone's forward plus the
  backward pass to its input, with no adapter;
- ``flops_over_floor``: the same ratio in FLOPs (``torch.utils.flop_counter.FlopCounterMode``);
- ``merged_eval_over_bare``: eval time with the adapter merged / eval time of the bare backbone;
- ``over_peft``: our train step time / PEFT's, same adapter, rank and layers (the whole fused
  ``attn.qkv``, which is what PEFT can target in a timm ViT) on the same model;
- ``over_peft_qv``: the same for the papers' targets (q and v; k and v for IA3): ours on the fused
  qkv, PEFT on the same weights split into q, k, v Linears (``pvera_bench.models.peft_compat``).

Writes ``results/bench/<name>.json`` and ``results/bench/<name>.md``.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import platform
import statistics
import time
from collections.abc import Callable
from importlib.metadata import version
from importlib.util import find_spec
from pathlib import Path

import pandas as pd
import timm
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from pvera_bench.adapters import ADAPTERS, adapter_loss, apply_adapter, copy_model, merge_adapter
from pvera_bench.artefacts.provenance import git_state, package_versions
from pvera_bench.models.peft_compat import split_qkv

PEFT_CONFIGS = {  # adapter -> (PEFT config class name, its kwargs, our hyperparameters on the same layers and init)
    "lora": (
        "LoraConfig",
        {"r": 8, "lora_alpha": 8, "target_modules": ["qkv"]},
        {"r": 8, "qkv_slices": None, "convention": "peft"},
    ),
    "dora": (
        "LoraConfig",
        {"r": 8, "lora_alpha": 8, "target_modules": ["qkv"], "use_dora": True},
        {"r": 8, "qkv_slices": None, "convention": "peft"},
    ),
    "vera": ("VeraConfig", {"r": 256, "target_modules": ["qkv"]}, {"r": 256, "qkv_slices": None, "convention": "peft"}),
    "pvera": (
        "PveraConfig",
        {"r": 256, "target_modules": ["qkv"]},
        {"r": 256, "qkv_slices": None, "convention": "peft"},
    ),
    "ia3": (
        "IA3Config",
        {"target_modules": ["qkv", "fc2"], "feedforward_modules": ["fc2"]},
        {"qkv_slices": None},
    ),  # no convention
}


def make_backbone(name: str, img_size: int, classes: int = 100) -> torch.nn.Module:
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=classes, img_size=img_size)
    for param in model.parameters():
        param.requires_grad_(False)
    return model


class Workload:
    """One measured step: training (forward, loss, backward, optimiser) or evaluation."""

    def __init__(
        self,
        model: torch.nn.Module,
        images: torch.Tensor,
        labels: torch.Tensor,
        dtype: str,
        train: bool,
        floor: bool = False,
    ) -> None:
        self.model, self.images, self.labels, self.train, self.floor = model, images, labels, train, floor
        self.bf16 = dtype == "bf16"
        params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=1e-4) if train and params and not floor else None
        model.train(train)

    def __call__(self) -> None:
        images = self.images.requires_grad_(True) if self.floor else self.images
        with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            if not self.train:
                with torch.no_grad():
                    self.model(images)
                return
            logits = self.model(images)
        if self.floor:
            logits.float().sum().backward(inputs=[images])  # the pass every adapter must at least pay
            images.grad = None
            return
        loss = F.cross_entropy(logits.float(), self.labels)
        regularization = adapter_loss(self.model)
        if regularization is not None:
            loss = loss + 1e-6 * regularization
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


def flops(step: Callable[[], None]) -> int:
    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops()


def paired_ratio(a: Callable[[], None], b: Callable[[], None], iters: int, warmup: int) -> dict[str, float]:
    """Times of ``a`` and ``b`` and their ratio a/b.

    The two run in pairs, in alternating order (ab, ba, ab, ...), so that machine drift and
    cache effects hit both alike. ``ratio`` is the ratio of the fastest runs (as ``timeit``
    advises: interference only ever adds time); ``pair_median``, ``pair_q1`` and ``pair_q3``
    summarise the per-pair ratios, a measure of the noise.
    """
    for _ in range(warmup):
        a(), b()
    times_a, times_b = [], []
    for i in range(iters):
        order = ((a, times_a), (b, times_b)) if i % 2 == 0 else ((b, times_b), (a, times_a))
        for step, times in order:
            start = time.perf_counter()
            step()
            times.append(time.perf_counter() - start)
    ratios = sorted(x / y for x, y in zip(times_a, times_b, strict=True))
    quartiles = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
    return {
        "a_s": min(times_a),
        "b_s": min(times_b),
        "ratio": min(times_a) / min(times_b),
        "pair_median": statistics.median(ratios),
        "pair_q1": quartiles[0],
        "pair_q3": quartiles[2],
    }


def peft_model(bare: torch.nn.Module, adapter: str, qv: bool = False) -> torch.nn.Module:
    """PEFT's adapter on the whole fused qkv, or (``qv``) on q and v of a split copy, as the papers adapt."""
    import peft

    class_name, kwargs, _ = PEFT_CONFIGS[adapter]
    if not qv:
        return peft.get_peft_model(copy.deepcopy(bare), getattr(peft, class_name)(**kwargs))
    slices = r"(k|v)" if adapter == "ia3" else r"(q|v)"
    kwargs = {**kwargs, "target_modules": rf".*attn\.qkv\.{slices}" + (r"|.*mlp\.fc2" if adapter == "ia3" else "")}
    if adapter == "ia3":
        kwargs["feedforward_modules"] = r".*mlp\.fc2"
    return peft.get_peft_model(split_qkv(copy.deepcopy(bare)), getattr(peft, class_name)(**kwargs))


def bench_dtype(args, dtype: str) -> list[dict]:
    bare = make_backbone(args.backbone, args.img_size)
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(args.batch_size, 3, args.img_size, args.img_size, generator=generator)
    labels = torch.randint(0, 100, (args.batch_size,), generator=generator)
    floor = Workload(bare, images.clone(), labels, dtype, train=True, floor=True)
    bare_eval = Workload(bare, images, labels, dtype, train=False)
    floor_flops = flops(floor)
    rows = []
    for name in args.adapters:
        model = apply_adapter(copy.deepcopy(bare), name)  # the adapter's defaults
        step = Workload(model, images, labels, dtype, train=True)
        train = paired_ratio(step, floor, args.iters, args.warmup)
        row = {
            "adapter": name,
            "dtype": dtype,
            "step_s": train["a_s"],
            "floor_s": train["b_s"],
            "train_images_per_s": args.batch_size / train["a_s"],
            "step_over_floor": train["ratio"],
            "flops_over_floor": flops(step) / floor_flops,
        }
        row["step/flops"] = row["step_over_floor"] / row["flops_over_floor"]
        eval_step = Workload(model, images, labels, dtype, train=False)
        evaluation = paired_ratio(eval_step, bare_eval, args.eval_iters, args.warmup)
        row["eval_images_per_s"] = args.batch_size / evaluation["a_s"]
        if ADAPTERS[name].mergeable:
            merged = Workload(merge_adapter(copy_model(model).eval()), images, labels, dtype, train=False)
            row["merged_eval_over_bare"] = paired_ratio(merged, bare_eval, args.eval_iters, args.warmup)["ratio"]
        if name in PEFT_CONFIGS and not args.no_peft:
            on_fused_qkv = apply_adapter(copy.deepcopy(bare), name, **PEFT_CONFIGS[name][2])
            ours = Workload(on_fused_qkv, images, labels, dtype, train=True)
            theirs = Workload(peft_model(bare, name), images, labels, dtype, train=True)
            fused = paired_ratio(ours, theirs, args.peft_iters, args.warmup)
            row.update(
                over_peft=fused["ratio"],
                over_peft_pair_q1=fused["pair_q1"],
                over_peft_pair_q3=fused["pair_q3"],
                peft_images_per_s=args.batch_size / fused["b_s"],
            )
            theirs_qv = Workload(peft_model(bare, name, qv=True), images, labels, dtype, train=True)
            row["over_peft_qv"] = paired_ratio(step, theirs_qv, args.peft_iters, args.warmup)["ratio"]
            del on_fused_qkv, ours, theirs, theirs_qv
        rows.append(row)
        print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
        del model, step, eval_step
        gc.collect()
    return rows


def linear_probe_speedup(epochs: int) -> dict:
    """Wall time of one real linear-probe run (offline demo task and backbone) with and without cached features."""
    import tempfile

    from pvera_bench.pipeline.compose import compose_config
    from pvera_bench.pipeline.run import run

    times = {}
    with tempfile.TemporaryDirectory() as folder:
        for cached in (True, False):
            cfg = compose_config(
                [
                    "experiment=demo",
                    "adapter=linear",
                    f"trainer.epochs={epochs}",
                    "protocol.early_stopping=false",
                    "trainer.progress=false",
                    "trainer.checkpoint=false",
                    f"trainer.cache_features={cached}",
                    f"paths.results={folder}/{cached}",
                ]
            )
            run(cfg)  # the first call also builds mnist5k and the decoded cache: time the second
            (Path(folder) / str(cached)).rename(Path(folder) / f"{cached}-done")
            record = run(cfg)
            kind = "cached" if cached else "uncached"
            times.update(
                {
                    f"{kind}_train_s": record["train_wall_s"],
                    f"{kind}_run_s": record["wall_s"],
                    f"{kind}_top1": record["test_top1"],
                }
            )
    return {
        "epochs": epochs,
        **times,
        "train_speedup": times["uncached_train_s"] / times["cached_train_s"],
        "run_speedup": times["uncached_run_s"] / times["cached_run_s"],
    }


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


COLUMNS = {  # row key -> column title
    "adapter": "adapter",
    "dtype": "dtype",
    "train_images_per_s": "train img/s",
    "eval_images_per_s": "eval img/s",
    "step_over_floor": "step_over_floor",
    "flops_over_floor": "flops_over_floor",
    "step/flops": "step/flops",
    "merged_eval_over_bare": "merged_eval_over_bare",
    "over_peft": "over_peft",
    "over_peft_pairs": "over_peft pairs q1–q3",
    "over_peft_qv": "over_peft_qv",
}


def cell(value) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def render(report: dict) -> str:
    """The Markdown summary of a ``results/bench/<name>.json`` report."""
    meta, rows, probe = report["settings"], report["rows"], report["linear_probe"]
    lines = [
        f"`python scripts/bench.py` — {meta['backbone']} (random weights) at {meta['img_size']} px, batch "
        f"{meta['batch_size']}, {meta['device']} ({meta['machine']}, {meta['threads']} threads); each time is the "
        f"fastest of {meta['iters']} steps ({meta['eval_iters']} for eval passes, "
        f"{meta['peft_iters']} against PEFT) after {meta['warmup']} warm-up, run in alternating "
        f"pairs with its reference; torch {meta['versions']['torch']}, timm {meta['versions']['timm']}"
        f"{', peft ' + meta['versions']['peft'] if 'peft' in meta['versions'] else ''}, "
        f"commit {meta['git_commit'][:10]}{' (dirty)' if meta['git_dirty'] else ''}."
    ]
    if rows:
        cells = []
        for row in rows:
            if "over_peft_pair_q1" in row:
                row = {**row, "over_peft_pairs": f"{row['over_peft_pair_q1']:.3f}–{row['over_peft_pair_q3']:.3f}"}
            cells.append({label: cell(row.get(key, "")) for key, label in COLUMNS.items()})
        lines += ["", pd.DataFrame(cells).to_markdown(index=False, disable_numparse=True)]
    if probe:
        lines += [
            "",
            f"Linear probe, one {probe['epochs']}-epoch run on mnist5k (`experiment=demo`, tiny backbone), without "
            f"/ with cached features: training (feature extraction included) {probe['uncached_train_s']:.1f} s / "
            f"{probe['cached_train_s']:.2f} s = **{probe['train_speedup']:.0f}x**; whole run, with the test pass both "
            f"do once, {probe['uncached_run_s']:.1f} s / {probe['cached_run_s']:.1f} s = {probe['run_speedup']:.1f}x; "
            f"test top-1 {probe['uncached_top1']:.4f} / {probe['cached_top1']:.4f}.",
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="vit_base_patch16_224")
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    parser.add_argument("--adapters", nargs="+", default=sorted(ADAPTERS), choices=sorted(ADAPTERS))
    parser.add_argument("--iters", type=int, default=5, help="timed steps per measurement (the fastest counts)")
    parser.add_argument("--eval-iters", type=int, default=15, help="timed eval passes per measurement (short: more)")
    parser.add_argument("--peft-iters", type=int, default=10, help="timed steps per comparison with PEFT")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--no-peft", action="store_true", help="skip the PEFT comparison")
    parser.add_argument(
        "--probe-epochs",
        type=int,
        default=100,
        help="epochs of the linear-probe run timed with and without cached features (0: skip)",
    )
    parser.add_argument("--probe-only", action="store_true", help="only the linear-probe comparison")
    parser.add_argument("--name", default=None, help="output name (default: <backbone>-<img>-b<batch>-<device>)")
    parser.add_argument("--out", type=Path, default=Path("results/bench"))
    parser.add_argument("--render", type=Path, help="rewrite the Markdown of an existing JSON report and exit")
    args = parser.parse_args()
    if args.render:
        args.render.with_suffix(".md").write_text(render(json.loads(args.render.read_text())))
        return
    torch.set_num_threads(args.threads)
    code_version = git_state()  # the code as it was when the measurements started
    probe = linear_probe_speedup(args.probe_epochs) if args.probe_epochs else None
    if probe:
        print(json.dumps(probe), flush=True)
    rows = [] if args.probe_only else [row for dtype in args.dtypes for row in bench_dtype(args, dtype)]
    name = args.name or (
        "linear-probe-cpu" if args.probe_only else f"{args.backbone}-{args.img_size}-b{args.batch_size}-cpu"
    )
    meta = {
        "backbone": args.backbone,
        "img_size": args.img_size,
        "batch_size": args.batch_size,
        "iters": args.iters,
        "eval_iters": args.eval_iters,
        "peft_iters": args.peft_iters,
        "warmup": args.warmup,
        "threads": args.threads,
        "device": "cpu",
        "machine": cpu_name(),
        "versions": {**package_versions(), **({"peft": version("peft")} if find_spec("peft") else {})},
        **code_version,
    }
    report = {"settings": meta, "rows": rows, "linear_probe": probe}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n")
    table = render(report)
    (args.out / f"{name}.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
