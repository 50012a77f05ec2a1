"""The enumerations and the one check helper that every config schema shares."""

from __future__ import annotations

from enum import StrEnum

SPLITS = ("train800", "val200", "train800val200", "test")  # the split files of a VTAB-1k task folder


class SamplingMode(StrEnum):
    """PVeRA's test-time latent: mu, one draw, mu + sigma, the mean prediction of n passes (``mc``), or one
    pass whose layers each average n latent draws (``mc_layer``, the official code's N-sample mode)."""

    mean = "mean"
    random = "random"
    fixed = "fixed"
    mc = "mc"
    mc_layer = "mc_layer"


class Scheduler(StrEnum):
    constant = "constant"
    cosine = "cosine"


class SelectMetric(StrEnum):
    """What picks the grid point: the lowest val loss or the highest val accuracy."""

    nll = "nll"
    top1 = "top1"


class TaskGroup(StrEnum):
    """The VTAB-1k group of a task; ``demo`` tasks are outside the 19."""

    natural = "natural"
    specialized = "specialized"
    structured = "structured"
    demo = "demo"


# Old protocol names, still accepted (conf/protocol/<old>.yaml includes the new option) and read in old results.
RENAMED_PROTOCOLS = {"pvera": "early_stop"}  # "pvera" read as the adapter PVeRA

Split = StrEnum("Split", {split: split for split in SPLITS})
VTAB_GROUPS = (TaskGroup.natural, TaskGroup.specialized, TaskGroup.structured)


def require(ok: bool, message: str) -> None:
    """Raise ``ValueError(message)`` unless ``ok``: the one-line form of every schema check."""
    if not ok:
        raise ValueError(message)
