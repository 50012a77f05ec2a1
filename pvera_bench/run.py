"""One run: validate → select on val (grid) → retrain if the protocol says so → test → one result JSON.

A run whose result already exists with ``status: success`` is skipped. Every epoch leaves a
checkpoint beside the result (trainable weights, optimiser, scheduler, every RNG, the grid
points finished so far), so a run killed at any point resumes where it was and ends with
the same numbers.
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import json
import logging
import shutil
import signal
import sys
import tempfile
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate, to_absolute_path
from omegaconf import DictConfig, OmegaConf
from torch import nn

from pvera_bench.adapters import (
    adapter_parameters,
    is_mergeable,
    is_stochastic,
    merge_adapter,
)
from pvera_bench.backbone import input_spec
from pvera_bench.config import validate
from pvera_bench.data import SplitData, load_split, locate_task
from pvera_bench.data.mnist5k import build_mnist5k
from pvera_bench.engine import (
    STOP_REQUESTED,
    FitResult,
    Normalizer,
    Preempted,
    Runtime,
    autocast,
    batches,
    evaluate,
    fit,
    place_split,
    resolve_device,
    seed_everything,
)
from pvera_bench.errors import UserError
from pvera_bench.grid import grid_points, with_point
from pvera_bench.loggers import NullLogger
from pvera_bench.model import build_model, count_parameters
from pvera_bench.results import git_state, package_versions, result_path, write_json

log = logging.getLogger(__name__)

OFFLINE_BUILDERS = {"mnist5k": build_mnist5k}  # tasks that need no download
PREEMPTED_EXIT_CODE = 143  # 128 + SIGTERM, the status a scheduler expects from a terminated job
MIN_FREE_BYTES = 256 << 20  # a results folder with less free space fails before training


def ensure_writable(folder: Path) -> None:
    """Fail now, not after hours of training, if results cannot be written there."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
            pass
    except OSError as error:
        reason = error.strerror or error
        raise UserError(f"paths.results: cannot write to {folder} ({reason}); choose another folder") from None
    free = shutil.disk_usage(folder).free
    if free < MIN_FREE_BYTES:
        raise UserError(
            f"paths.results: only {free >> 20} MiB free in {folder}; free some space or choose another folder"
        )


@contextlib.contextmanager
def exclusive(path: Path):
    """Hold ``<result>.lock`` for the run; yields False when another process holds it (the same run is under way)."""
    with open(path.with_suffix(".lock"), "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@contextlib.contextmanager
def stop_on_sigterm():
    """SIGTERM (e.g. SLURM preemption) stops training at the next batch instead of killing the process."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    STOP_REQUESTED.clear()
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: STOP_REQUESTED.set())
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        STOP_REQUESTED.clear()


def read_result(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


class Checkpoint:
    """The resumable state of a run, saved atomically beside its result and read back weights-only."""

    def __init__(self, path: Path, enabled: bool) -> None:
        self.path = path
        self.enabled = enabled

    def load(self) -> dict:
        if not self.enabled or not self.path.is_file():
            return {}
        try:
            return torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as error:  # a truncated or foreign checkpoint restarts the run, never runs code
            log.warning("checkpoint %s is unreadable (%s); starting over", self.path, type(error).__name__)
            return {}

    def save(self, state: dict) -> None:
        if self.enabled:
            temporary = self.path.with_name(f".{self.path.name}.tmp")
            torch.save(state, temporary)
            temporary.replace(self.path)

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


class Session:
    """The data, device and bookkeeping one run's stages share."""

    def __init__(self, cfg: DictConfig, task_dir: Path, device: torch.device, spec: dict, logger) -> None:
        self.cfg = cfg
        self.task_dir = task_dir
        self.device = device
        self.spec = spec
        self.logger = logger
        self.runtime = Runtime(
            device, Normalizer(spec["mean"], spec["std"]).to(device), cfg.trainer.bf16, cfg.trainer.progress
        )
        self.splits: dict[str, SplitData] = {}

    def split(self, name: str) -> SplitData:
        if name not in self.splits:
            data = load_split(
                self.task_dir,
                name,
                self.cfg.dataset.num_classes,
                self.spec["size"],
                self.spec["interpolation"],
                self.cfg.data.decode_workers,
                self.cfg.trainer.progress,
                self.cfg.data.cache,
            )
            self.splits[name] = place_split(data, self.device)
        return self.splits[name]

    def model(self, cfg: DictConfig, weights: dict | None = None) -> nn.Module:
        """The adapted model of a config, built from the run seed (so a rebuild is identical)."""
        seed_everything(cfg.seed)
        model = build_model(cfg).to(self.device)
        if weights is not None:
            model.load_state_dict(weights, strict=False)
        if cfg.trainer.compile:
            model.compile()
        return model

    def uses_features(self, model: nn.Module) -> bool:
        """Whether only the head trains, so that the frozen backbone's features can be computed once."""
        return self.cfg.trainer.cache_features and not adapter_parameters(model)

    def data_for(self, model: nn.Module, name: str) -> tuple[nn.Module, SplitData, Runtime]:
        """What to train or evaluate on a split: the model on images, or the head on cached features."""
        if not self.uses_features(model):
            return model, self.split(name), self.runtime
        key = f"features:{name}"
        if key not in self.splits:
            self.splits[key] = backbone_features(
                model, self.split(name), self.runtime, self.cfg.trainer.eval_batch_size
            )
        return HeadOnly(model.head), self.splits[key], self.feature_runtime

    @property
    def feature_runtime(self) -> Runtime:
        return Runtime(self.device, nn.Identity(), self.cfg.trainer.bf16, self.cfg.trainer.progress)

    def train(
        self,
        cfg: DictConfig,
        model: nn.Module,
        train: str,
        val: str | None,
        stage: str,
        checkpoint: Checkpoint,
        saved: dict,
    ) -> FitResult:
        """Fit one stage, checkpointing every epoch under ``stage`` and resuming from ``saved``."""

        def on_epoch_end(record: dict, state) -> None:
            self.logger.log({f"{stage}/{k}": v for k, v in record.items()})
            if checkpoint.enabled:  # the state copies the whole loop history: build it only when it is saved
                checkpoint.save({**saved, "stage": stage, "fit": state()})

        network, train_data, runtime = self.data_for(model, train)
        return fit(
            network,
            train_data,
            self.data_for(model, val)[1] if val else None,
            runtime,
            cfg.trainer,
            cfg.protocol,
            cfg.sampling,
            adapter_lr=cfg.adapter.lr,
            regularization_weight=1.0 / cfg.dataset.beta,
            seed=cfg.seed,
            resume=saved.get("fit") if saved.get("stage") == stage else None,
            on_epoch_end=on_epoch_end,
        )

    def evaluate(self, model: nn.Module, name: str) -> dict[str, float]:
        network, data, runtime = self.data_for(model, name)
        return evaluate(network, data, runtime, self.cfg.trainer.eval_batch_size, self.cfg.sampling)

    def test(self, model: nn.Module) -> dict[str, float]:
        """Test metrics; mergeable adapters are folded into a copy of the weights first (same predictions, no
        adapter cost), unless PVeRA is asked to sample at test time."""
        samples = self.cfg.sampling.mode != "mean" and is_stochastic(model)
        if self.cfg.trainer.merge_for_test and not samples and not self.cfg.trainer.compile and is_mergeable(model):
            model = merge_adapter(copy.deepcopy(model).eval())
        return self.evaluate(model, "test")


class HeadOnly(nn.Module):
    """The classification head alone, trained on cached backbone features (its parameters stay ``head.*``)."""

    def __init__(self, head: nn.Module) -> None:
        super().__init__()
        self.head = head

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(features)


@torch.no_grad()
def backbone_features(model: nn.Module, data: SplitData, runtime: Runtime, batch_size: int) -> SplitData:
    """The pre-logits features of a frozen timm model for every image of a split (float32)."""
    model.eval()
    features = []
    for images, _ in batches(data, batch_size, runtime.device):
        with autocast(runtime.device, runtime.bf16):
            features.append(
                model.forward_head(model.forward_features(runtime.normalize(images)), pre_logits=True).float()
            )
    return SplitData(torch.cat(features), data.labels)


def is_better(candidate: dict, best: dict | None, metric: str) -> bool:
    if best is None:
        return True
    if metric == "top1":
        return (candidate["val_top1"], -candidate["val_nll"]) > (best["val_top1"], -best["val_nll"])
    return candidate["val_nll"] < best["val_nll"]


def select_and_train(session: Session, checkpoint: Checkpoint) -> tuple[nn.Module, FitResult, dict]:
    """Train every grid point, choose on val, retrain the choice if the protocol says so."""
    cfg, protocol = session.cfg, session.cfg.protocol
    points = grid_points(cfg)
    saved = checkpoint.load()
    finished: list[dict] = saved.get("points", [])
    search = len(points) > 1 or protocol.retrain_split is None
    for index, point in enumerate(points if search else []):
        if index < len(finished):
            continue
        point_cfg = with_point(cfg, point)
        log.info("grid point %d/%d %s", index + 1, len(points), point or "(the configured point)")
        model = session.model(point_cfg)
        fitted = session.train(
            point_cfg,
            model,
            protocol.train_split,
            protocol.val_split,
            f"point{index}",
            checkpoint,
            {**saved, "points": finished},
        )
        record = {
            "point": point,
            "val_nll": fitted.val["nll"] if fitted.val else None,
            "val_top1": fitted.val["top1"] if fitted.val else None,
            "best_epoch": fitted.best_epoch,
            "epochs_run": fitted.epochs_run,
        }
        best = next((r for r in finished if r.get("selected")), None)
        if fitted.val is None or is_better(record, best, protocol.select_metric):
            for r in finished:
                r.pop("selected", None)
            record["selected"] = True
            saved["weights"] = {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}
            saved["fitted"] = asdict(fitted)
        finished.append(record)
        saved = {**saved, "points": finished, "stage": "selected", "fit": None}
        checkpoint.save(saved)
    chosen_index = next((i for i, r in enumerate(finished) if r.get("selected")), 0)
    chosen = with_point(cfg, points[chosen_index])
    if protocol.retrain_split is not None:
        model = session.model(chosen)
        fitted = session.train(
            chosen, model, protocol.retrain_split, None, "retrain", checkpoint, {**saved, "points": finished}
        )
    else:
        model = session.model(chosen, saved["weights"])
        fitted = FitResult(**saved["fitted"])
    selection = {"grid": finished, "grid_point": points[chosen_index] if finished else {}}
    if finished:
        selection.update(val_top1=finished[chosen_index]["val_top1"], val_nll=finished[chosen_index]["val_nll"])
    return model, fitted, selection


def run(cfg: DictConfig) -> dict[str, Any]:
    """Train and test one configuration and write its result file; returns the result."""
    started = time.perf_counter()
    validate(cfg)
    config = OmegaConf.to_container(cfg, resolve=True)
    path = result_path(Path(to_absolute_path(cfg.paths.results)), config)
    previous = read_result(path)
    if previous is not None and previous.get("status") == "success":
        log.info("skipped: %s already has a successful result", path.name)
        return previous
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
    try:
        spec = input_spec(build_model(cfg))  # also checks the adapter against the backbone's layers
    except ValueError as error:
        raise UserError(f"adapter={cfg.adapter.name}: {error}") from None
    ensure_writable(path.parent)
    with exclusive(path) as owner:
        if not owner:
            log.warning("skipped: another process is running %s (it holds %s)", path.name, path.with_suffix(".lock"))
            return {**record, "status": "running elsewhere"}
        logger = instantiate(cfg.logger) if cfg.logger else NullLogger()
        return execute(Session(cfg, task_dir, device, spec, logger), record, config, path, started)


def execute(session: Session, record: dict, config: dict, path: Path, started: float) -> dict:
    """Train, test and write the result of a run whose lock is held."""
    cfg, device, logger = session.cfg, session.device, session.logger
    checkpoint = Checkpoint(path.with_suffix(".ckpt"), cfg.trainer.checkpoint)
    logger.start(path.stem, config)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    log.info("%s on %s/%s -> %s", cfg.adapter.name, cfg.backbone.id, cfg.dataset.name, path)
    provenance = {"config": config, "versions": package_versions(), **git_state()}
    try:
        with stop_on_sigterm():
            training_started = time.perf_counter()
            model, fitted, selection = select_and_train(session, checkpoint)
            train_wall_s = time.perf_counter() - training_started
            test = session.test(model)
    except Preempted:
        logger.finish({"status": "preempted"})
        saved = checkpoint.path if checkpoint.path.is_file() else "none yet, the run will restart"
        print(
            f"preempted: stopped on SIGTERM; checkpoint: {saved}; run the same command again to resume", file=sys.stderr
        )
        raise SystemExit(PREEMPTED_EXIT_CODE) from None
    except FloatingPointError as error:
        record.update(status="failed", error=str(error), wall_s=time.perf_counter() - started, **provenance)
        write_json(path, record)
        checkpoint.remove()
        logger.finish({"status": "failed"})
        raise UserError(f"run failed: {error} (recorded in {path})") from None
    if cfg.sampling.mode != "mean" and not is_stochastic(model):
        log.warning("sampling.mode=%s had no effect on the deterministic %s", cfg.sampling.mode, cfg.adapter.name)
    record.update(
        status="success",
        test_top1=test["top1"],
        test_nll=test["nll"],
        test_ece=test["ece"],
        val_top1=selection.get("val_top1"),
        val_nll=selection.get("val_nll"),
        **({"test_predictive_std": test["predictive_std"]} if "predictive_std" in test else {}),
        **count_parameters(model),
        features_cached=session.uses_features(model),
        grid_point=selection["grid_point"],
        grid=selection["grid"],
        epochs_run=fitted.epochs_run,
        best_epoch=fitted.best_epoch,
        train_images_per_s=fitted.train_images_per_s,
        peak_memory_mb=(torch.cuda.max_memory_allocated(device) / 2**20) if device.type == "cuda" else None,
        device=str(device),
        train_wall_s=train_wall_s,
        wall_s=time.perf_counter() - started,
        history=fitted.history,
        **provenance,
    )
    write_json(path, record)
    checkpoint.remove()
    logger.finish({k: v for k, v in record.items() if isinstance(v, (int, float, str)) and v is not None})
    log.info(
        "%s %s: test top-1 %.4f (val %s) in %.1f s",
        cfg.adapter.name,
        cfg.dataset.name,
        record["test_top1"],
        f"{record['val_top1']:.4f}" if record["val_top1"] is not None else "n/a",
        record["wall_s"],
    )
    return record
