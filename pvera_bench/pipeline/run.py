"""One run, as the protocol reads: validate → load the task → fit each grid point → select on val →
retrain if the protocol says so → test once → write one result JSON.

A run whose result already exists with ``status: success`` is skipped. The run state is
checkpointed every epoch (:mod:`pvera_bench.training.checkpoint`), so a run killed at any point resumes
where it was and ends with the same numbers.
"""

from __future__ import annotations

import functools
import logging
import sys
import time
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate, to_absolute_path
from omegaconf import DictConfig, OmegaConf
from torch import nn

from pvera_bench.adapters import copy_model, is_mergeable, merge_adapter, samples_at_test
from pvera_bench.artefacts.adapter_file import save_run_adapter
from pvera_bench.artefacts.layout import RunFiles, finished_result, result_path
from pvera_bench.artefacts.predictions import write_predictions
from pvera_bench.artefacts.provenance import git_state, machine_info, package_versions
from pvera_bench.config import Split
from pvera_bench.config.grid import grid_points, with_point
from pvera_bench.core.errors import UserError
from pvera_bench.core.files import WriteError, write_json
from pvera_bench.data import check_split, load_split, locate_task
from pvera_bench.data.mnist5k import build_mnist5k
from pvera_bench.data.tasks import ood_tasks
from pvera_bench.evaluation.ood import is_ood_key, ood_key
from pvera_bench.evaluation.predict import Predictions, predict
from pvera_bench.models.backbone import input_spec
from pvera_bench.models.build import build_model
from pvera_bench.models.runtime import Normalizer, Runtime, resolve_device, reuse_freed_host_memory
from pvera_bench.pipeline.guards import ensure_writable, exclusive, stop_on_sigterm
from pvera_bench.pipeline.record import Outcome, outcome_fields, run_identity
from pvera_bench.pipeline.validate import validate
from pvera_bench.training.checkpoint import Checkpoint
from pvera_bench.training.inputs import TaskInputs
from pvera_bench.training.loggers import NullLogger
from pvera_bench.training.loop import Preempted
from pvera_bench.training.selection import StageFitter, needs_search, search_grid

log = logging.getLogger(__name__)

OFFLINE_BUILDERS = {"mnist5k": build_mnist5k}  # tasks that need no download
PREEMPTED_EXIT_CODE = 143  # 128 + SIGTERM, the status a scheduler expects from a terminated job


def run(cfg: DictConfig) -> dict[str, Any]:
    """Train and test one configuration and write its result file; returns the result."""
    started = time.perf_counter()
    validate(cfg)
    config = OmegaConf.to_container(cfg, resolve=True)
    path = result_path(Path(to_absolute_path(cfg.paths.results)), config)
    if (previous := finished_result(path)) is not None:
        log.info("skipped: %s already has a successful result", path.name)
        return previous
    inputs = task_inputs(cfg)
    ensure_writable(path.parent)
    files = RunFiles(path)
    with exclusive(files.lock) as owner:
        if not owner:
            log.warning("skipped: another process is running %s (it holds %s)", path.name, files.lock)
            return run_identity(cfg, "running elsewhere")
        if (previous := finished_result(path)) is not None:  # another process finished it while this one started
            log.info("skipped: %s was finished by another process", path.name)
            return previous
        record = execute(cfg, inputs, path, config, started)
    log.info(
        "%s %s: test top-1 %.4f (val %s) in %.1f s",
        cfg.adapter.name,
        cfg.dataset.name,
        record["test_top1"],
        f"{record['val_top1']:.4f}" if record["val_top1"] is not None else "n/a",
        record["wall_s"],
    )
    return record


def train_and_test(cfg: DictConfig, fitter: StageFitter) -> Outcome:
    """Fit each grid point and select on val, retrain the choice if the protocol says so, then test once."""
    protocol = cfg.protocol
    started = time.perf_counter()
    state = fitter.checkpoint.load()
    points = grid_points(cfg)
    if needs_search(points, protocol):
        search_grid(cfg, points, fitter, state)
    chosen = with_point(cfg, points[state.selected_index()])
    if protocol.retrain_split is not None:
        model = fitter.new_model(chosen)
        fitted = fitter.fit(chosen, model, protocol.retrain_split, None, "retrain", state)
    else:
        model, fitted = fitter.new_model(chosen, state.chosen_weights), state.chosen_fit
    train_wall_s = time.perf_counter() - started
    return Outcome(model, fitted, state.grid, predict_for_test(cfg, model, fitter.inputs), train_wall_s)


def predict_for_test(cfg: DictConfig, model: nn.Module, inputs: TaskInputs) -> dict[str, Predictions]:
    """The tested model's predictions, with the test-time sampling, on test, on each OOD set, and, when the model
    never trained on it (no retraining), on val: the split that calibration may be fitted on. Mergeable adapters
    are folded into a copy of the weights first (same predictions, no adapter cost), unless the predictions
    sample."""
    if (
        cfg.trainer.merge_for_test
        and not samples_at_test(model, cfg.sampling.mode)
        and not cfg.trainer.compile
        and is_mergeable(model)
    ):
        model = merge_adapter(copy_model(model).eval())
    splits = {"test": Split.test}
    if cfg.protocol.val_split is not None and cfg.protocol.retrain_split is None:
        splits = {"val": cfg.protocol.val_split, **splits}
    splits |= {key: key for key in inputs.loaders if is_ood_key(key)}
    predictions = {}
    for key, split in splits.items():
        network, data, runtime = inputs.for_model(model, split)
        predictions[key] = predict(network, data, runtime, cfg.trainer.eval_batch_size, cfg.sampling)
    return predictions


def task_inputs(cfg: DictConfig) -> TaskInputs:
    """The task's splits (and OOD sets) as the run will read them; fails first, before any model is built, if the
    device, a task folder, a split file (lines, labels, paths, counts) or a listed image is wrong, then if the
    adapter does not fit the backbone. Images are decoded when a stage first reads them."""
    device = resolve_device(cfg.trainer.device)
    if device.type == "cpu":
        reuse_freed_host_memory()
    root = Path(to_absolute_path(cfg.data.root))
    protocol, task_dir = cfg.protocol, locate_task(root, cfg.dataset.name, OFFLINE_BUILDERS)
    used = dict.fromkeys(s for s in (protocol.train_split, protocol.val_split, protocol.retrain_split, Split.test) if s)
    sources = {split: (task_dir, split, cfg.dataset.num_classes, None) for split in used}
    for task in ood_tasks(cfg.ood, cfg.dataset):
        ood_dir = locate_task(root, task.name, OFFLINE_BUILDERS)
        sources[ood_key(task.name)] = (ood_dir, Split.test, task.num_classes, cfg.ood.max_images)
    for folder, split, num_classes, limit in sources.values():
        check_split(folder, split, num_classes, limit)
    try:
        spec = input_spec(build_model(cfg))  # also checks the adapter against the backbone's layers
    except ValueError as error:
        raise UserError(f"adapter={cfg.adapter.name}: {error}") from None
    load = functools.partial(
        load_split,
        size=spec["size"],
        interpolation="bilinear" if cfg.quirks.bilinear_resize else spec["interpolation"],
        workers=cfg.data.decode_workers,
        progress=cfg.trainer.progress,
        cache=cfg.data.cache,
    )
    loaders = {
        key: functools.partial(load, folder, split, num_classes, limit=limit)
        for key, (folder, split, num_classes, limit) in sources.items()
    }
    runtime = Runtime(device, Normalizer(spec["mean"], spec["std"]).to(device), cfg.trainer.bf16, cfg.trainer.progress)
    return TaskInputs(loaders, runtime, cfg.trainer.eval_batch_size, cfg.trainer.cache_features)


def execute(cfg: DictConfig, inputs: TaskInputs, path: Path, config: dict, started: float) -> dict[str, Any]:
    """Train, test and write the result of a run whose lock is held."""
    device = inputs.runtime.device
    files = RunFiles(path)
    logger = instantiate(cfg.logger) if cfg.logger else NullLogger()
    checkpoint = Checkpoint(files.checkpoint, cfg.trainer.checkpoint)
    logger.start(path.stem, config)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    log.info("%s on %s/%s -> %s", cfg.adapter.name, cfg.backbone.id, cfg.dataset.name, path)
    provenance = {"config": config, "versions": package_versions(), "machine": machine_info(), **git_state()}
    try:
        with stop_on_sigterm() as should_stop:
            outcome = train_and_test(cfg, StageFitter(inputs, checkpoint, logger, should_stop))
    except Preempted:
        logger.finish({"status": "preempted"})
        saved = checkpoint.path if checkpoint.path.is_file() else "none yet, the run will restart"
        print(
            f"preempted: stopped on SIGTERM; checkpoint: {saved}; run the same command again to resume", file=sys.stderr
        )
        raise SystemExit(PREEMPTED_EXIT_CODE) from None
    except WriteError:
        raise  # the disk is full or the folder cannot be written: the last good checkpoint stays, to resume from
    except UserError:
        checkpoint.remove()  # bad input found under way (an image that does not decode): nothing is left behind
        raise
    except FloatingPointError as error:
        failed = {**run_identity(cfg, "failed"), "error": str(error), "wall_s": time.perf_counter() - started}
        write_json(path, {**failed, **provenance})
        checkpoint.remove()
        logger.finish({"status": "failed"})
        raise UserError(f"run failed: {error} (recorded in {path})") from None
    if cfg.sampling.mode != "mean" and not samples_at_test(outcome.model, cfg.sampling.mode):
        log.warning(
            "sampling.mode=%s had no effect: %s has no latent to sample%s",
            cfg.sampling.mode,
            cfg.adapter.name,
            " and no adapter.dropout for MC dropout" if cfg.sampling.mode == "mc" else "",
        )
    stored = files.predictions
    write_predictions(stored, outcome.predictions, {"sampling": cfg.sampling.mode, "n": str(cfg.sampling.n)})
    adapter_file = save_run_adapter(path, outcome.model, cfg)  # the unmerged model: the test merged a copy
    record = {
        **run_identity(cfg, "success"),
        **outcome_fields(outcome, inputs, OmegaConf.to_object(cfg.conformal)),
        "predictions": stored.name,
        "adapter_file": adapter_file.name if adapter_file else None,
        "wall_s": time.perf_counter() - started,
        "history": outcome.fitted.history,
        **provenance,
    }
    write_json(path, record)  # last: a result file means its predictions are on disk
    checkpoint.remove()
    logger.finish({k: v for k, v in record.items() if isinstance(v, (int, float, str)) and v is not None})
    return record
