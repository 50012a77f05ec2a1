"""The results folder, owned here: where a run's result goes, the name of every file beside it, the digests
that identify a configuration, and the one parser of result files.

A run of a resolved config writes ``<results>/<backbone>/<dataset>/<name>.json`` and, beside it, files named
``<name>`` plus a suffix (:class:`RunFiles`). Nothing else in the package builds or parses these names.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pvera_bench.config import RENAMED_PROTOCOLS
from pvera_bench.core.errors import UserError

RESULT_SUFFIX = ".json"
PREDICTIONS_SUFFIX = ".predictions.safetensors"
ADAPTER_SUFFIX = ".adapter.safetensors"
CHECKPOINT_SUFFIX = ".ckpt"
LOCK_SUFFIX = ".lock"
# Settings that change where or how fast a run goes, not what it computes: left out of the run's identity.
NON_IDENTITY_KEYS = {
    "data": None,
    "paths": None,
    "logger": None,
    "trainer": ("device", "progress", "compile", "pack", "eval_batch_size", "checkpoint", "merge_for_test"),
    "dataset": ("label", "order"),  # how tables show a task, not what a run computes
}
METHOD_GROUPS = ("adapter", "grid", "protocol", "sampling", "trainer", "backbone")  # what defines a method
NUMBER, TEXT = (int, float), (str,)
RESULT_TYPES = {  # the JSON type of each key a result is read by, when the key is there (None is always allowed)
    **dict.fromkeys(("status", "adapter", "dataset", "backbone", "sampling", "protocol", "convention"), TEXT),
    **dict.fromkeys(("seed", "adapter_params", "head_params", "epochs_run", "best_epoch"), (int,)),
    **dict.fromkeys(("test_top1", "val_top1", "test_nll", "test_ece", "val_nll", "wall_s", "train_wall_s"), NUMBER),
    **dict.fromkeys(("config", "uncertainty", "machine", "versions"), (dict,)),
    **dict.fromkeys(("quirks", "grid"), (list,)),
    **dict.fromkeys(("predictions", "adapter_file", "error", "git_commit"), TEXT),
}


def sha256_of(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def config_digest(config: dict[str, Any]) -> str:
    """Eight hex digits identifying the experiment a resolved config describes (the end of its result's name)."""
    identity = {}
    for key, value in config.items():
        if key in NON_IDENTITY_KEYS:
            dropped = NON_IDENTITY_KEYS[key]
            if dropped is None:
                continue
            value = {k: v for k, v in value.items() if k not in dropped}
        identity[key] = value
    return sha256_of(identity)[:8]


def variant_digest(config: dict[str, Any]) -> str:
    """Six hex digits of everything that defines a method but the task, seed and run-time settings."""
    defining = {k: config.get(k) for k in METHOD_GROUPS}
    protocol = dict(defining.get("protocol") or {})
    if protocol.get("name") in RENAMED_PROTOCOLS:  # a run of before the rename is the same method
        defining["protocol"] = {**protocol, "name": RENAMED_PROTOCOLS[protocol["name"]]}
    trainer = dict(defining.get("trainer") or {})
    for key in NON_IDENTITY_KEYS["trainer"]:
        trainer.pop(key, None)
    defining["trainer"] = trainer if defining.get("trainer") is not None else None
    return sha256_of(defining)[:6]


def result_path(results_dir: Path, config: dict[str, Any]) -> Path:
    """``<results>/<backbone>/<dataset>/<adapter>__<sampling>__<protocol>__s<seed>__<digest>.json``."""
    sampling = config["sampling"]
    name = "__".join(
        [
            config["adapter"]["name"],
            sampling["mode"] + (str(sampling["n"]) if sampling["mode"] in ("mc", "mc_layer") else ""),
            config["protocol"]["name"],
            f"s{config['seed']}",
            config_digest(config),
        ]
    )
    return Path(results_dir) / config["backbone"]["id"] / config["dataset"]["name"] / f"{name}{RESULT_SUFFIX}"


@dataclass(frozen=True)
class RunFiles:
    """A run's result file and the files beside it, which share its name."""

    result: Path

    def sibling(self, suffix: str) -> Path:
        return self.result.with_name(self.result.name.removesuffix(RESULT_SUFFIX) + suffix)

    @property
    def predictions(self) -> Path:
        """Test (and val, OOD) predictions: :mod:`pvera_bench.artefacts.predictions`."""
        return self.sibling(PREDICTIONS_SUFFIX)

    @property
    def adapter(self) -> Path:
        """The trained adapter and head: :mod:`pvera_bench.artefacts.adapter_file`."""
        return self.sibling(ADAPTER_SUFFIX)

    @property
    def checkpoint(self) -> Path:
        """The resumable state while the run trains."""
        return self.sibling(CHECKPOINT_SUFFIX)

    @property
    def lock(self) -> Path:
        """Held (and present) while a process runs it."""
        return self.sibling(LOCK_SUFFIX)


def is_result_file(path: Path) -> bool:
    """A result is a ``.json`` file whose stem has no dot: files beside it that are JSON too would be named
    ``<name>.<kind>.json`` (and temporary files start with a dot)."""
    return path.suffix == RESULT_SUFFIX and "." not in path.stem


def result_files(runs_dir: Path) -> Iterator[Path]:
    """Every result file below ``runs_dir``, in path order (other files there are not results)."""
    return (path for path in sorted(Path(runs_dir).rglob(f"*{RESULT_SUFFIX}")) if is_result_file(path))


def read_result(path: Path) -> dict[str, Any]:
    """The parsed result at ``path``; a one-line UserError when it cannot be read or is not a result."""
    try:
        record = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise UserError(f"{path}: not a readable result file ({error}); delete or fix it") from None
    if not isinstance(record, dict):
        raise UserError(f"{path}: not a result file (a JSON object); delete or fix it")
    for key, kinds in RESULT_TYPES.items():
        value = record.get(key)
        if value is not None and (not isinstance(value, kinds) or isinstance(value, bool)):
            expected = " or ".join(kind.__name__ for kind in kinds)
            raise UserError(
                f"{path}: {key} is {value!r} ({type(value).__name__}), expected {expected}; delete or fix the file"
            )
    return record


def finished_result(path: Path) -> dict[str, Any] | None:
    """The result at ``path`` when it exists and records a success (the run is then skipped)."""
    try:
        record = read_result(path) if path.is_file() else None
    except UserError:
        return None
    return record if record is not None and record.get("status") == "success" else None
