"""One run: validate → data → model → fit → test → one result JSON."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch
from hydra.utils import to_absolute_path
from omegaconf import DictConfig, OmegaConf
from torch import nn

from pvera_bench.adapters import ADAPTERS, adapter_parameters, apply_adapter, head_parameters, is_stochastic
from pvera_bench.backbone import create_backbone, input_spec
from pvera_bench.config import SAMPLING_MODES, VTAB_GROUPS
from pvera_bench.data import SPLITS, load_split, locate_task
from pvera_bench.data.mnist5k import build_mnist5k
from pvera_bench.engine import Normalizer, Runtime, evaluate, fit, place_split, resolve_device, seed_everything
from pvera_bench.errors import UserError
from pvera_bench.results import git_state, package_versions, result_path, write_json

log = logging.getLogger(__name__)

OFFLINE_BUILDERS = {"mnist5k": build_mnist5k}  # tasks that need no download


def validate(cfg: DictConfig) -> None:
    """Reject bad values and combinations in one line each, before anything is built."""
    hparams = OmegaConf.to_container(cfg.adapter, resolve=True)
    name = hparams.pop("name", None)
    if name not in ADAPTERS:
        raise UserError(f"adapter.name={name!r} is not registered; choose one of {', '.join(sorted(ADAPTERS))}")
    try:
        ADAPTERS[name].config_cls(name=name, **hparams)
    except (TypeError, ValueError) as error:
        raise UserError(f"adapter={name}: {error}") from None
    checks = [
        (cfg.sampling.mode in SAMPLING_MODES, f"sampling.mode={cfg.sampling.mode} must be one of {SAMPLING_MODES}"),
        (cfg.sampling.n >= 1, f"sampling.n={cfg.sampling.n} must be >= 1"),
        (cfg.dataset.beta > 0, f"dataset.beta={cfg.dataset.beta} must be positive (the KL weight is 1/beta)"),
        (cfg.dataset.num_classes >= 2, f"dataset.num_classes={cfg.dataset.num_classes} must be >= 2"),
        (cfg.dataset.group in VTAB_GROUPS, f"dataset.group={cfg.dataset.group} must be one of {VTAB_GROUPS}"),
        (
            cfg.protocol.train_split in SPLITS,
            f"protocol.train_split={cfg.protocol.train_split} must be one of {SPLITS}",
        ),
        (
            cfg.protocol.val_split in (*SPLITS, None),
            f"protocol.val_split={cfg.protocol.val_split} must be one of {SPLITS} or null",
        ),
        (cfg.protocol.patience >= 1, f"protocol.patience={cfg.protocol.patience} must be >= 1"),
        (cfg.trainer.epochs >= 1, f"trainer.epochs={cfg.trainer.epochs} must be >= 1"),
        (cfg.trainer.batch_size >= 1, f"trainer.batch_size={cfg.trainer.batch_size} must be >= 1"),
        (cfg.trainer.eval_batch_size >= 1, f"trainer.eval_batch_size={cfg.trainer.eval_batch_size} must be >= 1"),
        (cfg.trainer.lr > 0, f"trainer.lr={cfg.trainer.lr} must be positive"),
        (cfg.trainer.weight_decay >= 0, f"trainer.weight_decay={cfg.trainer.weight_decay} must be >= 0"),
        (
            cfg.trainer.scheduler in ("constant", "cosine"),
            f"trainer.scheduler={cfg.trainer.scheduler} must be constant or cosine",
        ),
        (
            0 <= cfg.trainer.warmup_epochs < cfg.trainer.epochs,
            f"trainer.warmup_epochs={cfg.trainer.warmup_epochs} must be in [0, trainer.epochs)",
        ),
    ]
    for ok, message in checks:
        if not ok:
            raise UserError(message)


def build_model(cfg: DictConfig) -> nn.Module:
    """Backbone with a fresh head for the task, the adapter injected, everything else frozen."""
    model = create_backbone(cfg.backbone, cfg.dataset.num_classes)
    hparams = OmegaConf.to_container(cfg.adapter, resolve=True)
    return apply_adapter(model, hparams.pop("name"), **hparams)


def count_parameters(model: nn.Module) -> dict[str, int]:
    return {
        "adapter_params": sum(p.numel() for p in adapter_parameters(model).values()),
        "head_params": sum(p.numel() for p in head_parameters(model).values()),
        "total_params": sum(p.numel() for p in model.parameters()),
    }


def run(cfg: DictConfig) -> dict[str, Any]:
    """Train and test one configuration and write its result file; returns the result."""
    started = time.perf_counter()
    validate(cfg)
    config = OmegaConf.to_container(cfg, resolve=True)
    path = result_path(Path(to_absolute_path(cfg.paths.results)), config)
    record = {
        "status": "running",
        "adapter": cfg.adapter.name,
        "dataset": cfg.dataset.name,
        "group": cfg.dataset.group,
        "backbone": cfg.backbone.id,
        "pretrained": bool(cfg.backbone.pretrained or cfg.backbone.weights),
        "sampling": cfg.sampling.mode,
        "protocol": cfg.protocol.name,
        "seed": cfg.seed,
    }
    device = resolve_device(cfg.trainer.device)
    task_dir = locate_task(Path(to_absolute_path(cfg.data.root)), cfg.dataset.name, OFFLINE_BUILDERS)
    seed_everything(cfg.seed)
    model = build_model(cfg).to(device)
    spec = input_spec(model)

    def split(name: str):
        data = load_split(
            task_dir,
            name,
            cfg.dataset.num_classes,
            spec["size"],
            spec["interpolation"],
            cfg.data.decode_workers,
            cfg.trainer.progress,
        )
        return place_split(data, device)

    train = split(cfg.protocol.train_split)
    val = split(cfg.protocol.val_split) if cfg.protocol.val_split else None
    test = split("test")
    if cfg.sampling.mode != "mean" and not is_stochastic(model):
        log.warning(
            "sampling.mode=%s has no effect on the deterministic adapter %s", cfg.sampling.mode, cfg.adapter.name
        )
    record.update(count_parameters(model))
    log.info(
        "%s on %s/%s: %d adapter + %d head parameters trainable, result -> %s",
        cfg.adapter.name,
        cfg.backbone.id,
        cfg.dataset.name,
        record["adapter_params"],
        record["head_params"],
        path,
    )
    if cfg.trainer.compile:
        model.compile()
    runtime = Runtime(device, Normalizer(spec["mean"], spec["std"]).to(device), cfg.trainer.bf16, cfg.trainer.progress)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    try:
        fitted = fit(
            model,
            train,
            val,
            runtime,
            cfg.trainer,
            cfg.protocol,
            cfg.sampling,
            adapter_lr=cfg.adapter.lr,
            regularization_weight=1.0 / cfg.dataset.beta,
            seed=cfg.seed,
        )
        test_metrics = evaluate(model, test, runtime, cfg.trainer.eval_batch_size, cfg.sampling)
    except FloatingPointError as error:
        record.update(
            status="failed",
            error=str(error),
            wall_s=time.perf_counter() - started,
            config=config,
            versions=package_versions(),
            **git_state(),
        )
        write_json(path, record)
        raise UserError(f"run failed: {error} (recorded in {path})") from None
    record.update(
        status="success",
        test_top1=test_metrics["top1"],
        test_nll=test_metrics["nll"],
        test_ece=test_metrics["ece"],
        val_top1=fitted.val["top1"] if fitted.val else None,
        val_nll=fitted.val["nll"] if fitted.val else None,
        **({"test_predictive_std": test_metrics["predictive_std"]} if "predictive_std" in test_metrics else {}),
        epochs_run=fitted.epochs_run,
        best_epoch=fitted.best_epoch,
        train_images_per_s=fitted.train_images_per_s,
        peak_memory_mb=(torch.cuda.max_memory_allocated(device) / 2**20) if device.type == "cuda" else None,
        device=str(device),
        wall_s=time.perf_counter() - started,
        history=fitted.history,
        config=config,
        versions=package_versions(),
        **git_state(),
    )
    write_json(path, record)
    log.info(
        "%s %s: test top-1 %.4f (val %s) in %.1f s",
        cfg.adapter.name,
        cfg.dataset.name,
        record["test_top1"],
        f"{record['val_top1']:.4f}" if record["val_top1"] is not None else "n/a",
        record["wall_s"],
    )
    return record
