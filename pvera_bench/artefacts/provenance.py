"""Where the numbers of a run come from: package versions, the machine, and the code's commit."""

from __future__ import annotations

import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

PACKAGE_DIR = Path(__file__).resolve().parent.parent
VERSIONED_PACKAGES = ("torch", "torchvision", "timm", "hydra-core", "omegaconf", "numpy", "pvera-bench")


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
    return {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }


def git_state() -> dict[str, Any]:
    """Commit of the code that ran, and whether tracked files had uncommitted changes ("unknown" when the
    package is not in a git checkout, e.g. installed from a wheel)."""

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(PACKAGE_DIR), *args], capture_output=True, text=True, check=True).stdout

    try:
        if Path(git("rev-parse", "--show-toplevel").strip()) / PACKAGE_DIR.name != PACKAGE_DIR:
            raise OSError  # installed inside some other checkout (e.g. a venv in it): not this code's commit
        return {
            "git_commit": git("rev-parse", "HEAD").strip(),
            "git_dirty": bool(git("status", "--porcelain", "--untracked-files=no").strip()),
        }
    except (OSError, subprocess.CalledProcessError):
        return {"git_commit": "unknown", "git_dirty": None}
