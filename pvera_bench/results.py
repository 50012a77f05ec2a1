"""One JSON per run: a deterministic path, atomic writes, and the provenance of the numbers."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
UMASK = os.umask(0o022)  # read once (setting it is the only way to read it), then put back
os.umask(UMASK)
VERSIONED_PACKAGES = ("torch", "torchvision", "timm", "hydra-core", "omegaconf", "numpy", "pvera-bench")
# Settings that change where or how fast a run goes, not what it computes: left out of the run's identity.
NON_IDENTITY_KEYS = {
    "data": None,
    "paths": None,
    "logger": None,
    "trainer": ("device", "progress", "compile", "eval_batch_size", "checkpoint", "merge_for_test"),
    "dataset": ("label", "order"),  # how tables show a task, not what a run computes
}


def config_digest(config: dict[str, Any]) -> str:
    """Eight hex digits identifying the experiment a resolved config describes."""
    identity = {}
    for key, value in config.items():
        if key in NON_IDENTITY_KEYS:
            dropped = NON_IDENTITY_KEYS[key]
            if dropped is None:
                continue
            value = {k: v for k, v in value.items() if k not in dropped}
        identity[key] = value
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:8]


def result_path(results_dir: Path, config: dict[str, Any]) -> Path:
    """``<results>/<backbone>/<dataset>/<adapter>__<sampling>__<protocol>__s<seed>__<digest>.json``."""
    name = "__".join(
        [
            config["adapter"]["name"],
            config["sampling"]["mode"]
            + (str(config["sampling"]["n"]) if config["sampling"]["mode"] in ("mc", "mc_layer") else ""),
            config["protocol"]["name"],
            f"s{config['seed']}",
            config_digest(config),
        ]
    )
    return results_dir / config["backbone"]["id"] / config["dataset"]["name"] / f"{name}.json"


def read_result(path: Path) -> dict[str, Any] | None:
    """The result at ``path``, or None when there is none or it cannot be read."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def write_atomically(path: Path, data: bytes) -> None:
    """Write through a temporary file in the same folder and rename: readers never see half a file.

    The file gets the permissions a plain ``open(path, "w")`` would give it (0o666 less the umask), not the
    temporary file's private 0o600.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("wb", dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False) as f:
        try:
            os.fchmod(f.fileno(), 0o666 & ~UMASK)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        except BaseException:
            os.unlink(f.name)  # a failed write (full disk, bad value) leaves the previous file untouched
            raise
    os.replace(f.name, path)


def write_json(path: Path, payload: dict[str, Any]) -> None:
    write_atomically(path, (json.dumps(payload, indent=2, sort_keys=False) + "\n").encode())


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for package in VERSIONED_PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def machine_info() -> dict[str, Any]:
    """Where a run ran: host, operating system, CPU count and the CUDA device, if any."""
    import torch

    return {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }


def git_state() -> dict[str, Any]:
    """Commit of the code that ran, and whether the working tree had uncommitted changes."""

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(REPO_ROOT), *args], capture_output=True, text=True, check=True).stdout

    try:
        return {"git_commit": git("rev-parse", "HEAD").strip(), "git_dirty": bool(git("status", "--porcelain").strip())}
    except (OSError, subprocess.CalledProcessError):
        return {"git_commit": "unknown", "git_dirty": None}
