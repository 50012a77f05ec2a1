"""The result files as one table of runs, and how the tables name their rows and columns.

:func:`load_results` reads every result JSON under a folder into one DataFrame row per run;
:func:`method_labels` labels a run's method as every table does; :func:`folders` gives the 19 VTAB-1k
tasks in column order (the dataset options of ``conf/dataset/``). Shared by the accuracy table
(:mod:`pvera_bench.reporting.accuracy`), the calibration table, the hyperparameter report and the HTML report.
"""

from __future__ import annotations

import functools
from dataclasses import fields
from pathlib import Path

import pandas as pd

from pvera_bench.artefacts.layout import read_result, result_files, variant_digest
from pvera_bench.config import ADAPTER_QUIRKS, RENAMED_PROTOCOLS, DatasetConfig, QuirksConfig, TaskGroup
from pvera_bench.core.errors import UserError
from pvera_bench.data.tasks import dataset_configs, vtab_tasks

RUN_COLUMNS = (  # what each result file contributes to the tables, and the columns of --print
    "adapter dataset backbone sampling protocol setup seed status test_top1 val_top1 test_nll test_ece "
    "adapter_params head_params epochs_run wall_s"
).split()
# The quirks of experiment=pvera_paper that every adapter has: runs with all of them are the paper's computation.
PAPER_QUIRKS = {f.name for f in fields(QuirksConfig) if f.name not in ADAPTER_QUIRKS}
BACKBONE_NAMES = {"vit_b16_in21k": "ViT-B/16 IN21k", "dinov2_vitb14": "DINOv2 ViT-B/14"}
PAPER_SETUP = "official convention · official code's quirks (experiment=pvera_paper)"
METHOD_KEYS = ["backbone", "protocol", "setup", "adapter", "sampling", "variant"]  # a row of the tables


@functools.cache
def columns() -> tuple[tuple[str, DatasetConfig], ...]:
    """(option, config) of the 19 VTAB-1k tasks in column order; results name a task by its folder, ``name``."""
    return tuple(vtab_tasks())


def folders(group: TaskGroup | None = None) -> list[str]:
    """Folder names of the 19 tasks (or of one group's), in column order."""
    return [config.name for _, config in columns() if group in (None, config.group)]


def labels() -> list[str]:
    return [config.label for _, config in columns()]


def backbone_label(backbone: str) -> str:
    """``ViT-B/16 IN21k (vit_b16_in21k)`` for the backbones the literature names, else the id."""
    return f"{BACKBONE_NAMES[backbone]} ({backbone})" if backbone in BACKBONE_NAMES else backbone


def task_label(folder: str) -> str:
    """A task's column header (``CIFAR-100`` for ``cifar``); the folder name for tasks without an option."""
    return next((config.label for config in dataset_configs().values() if config.name == folder), folder)


def task_order(task: str) -> tuple[int, str]:
    """Sort key of a task folder: the 19 VTAB-1k tasks in column order, then the others by name."""
    vtab = folders()
    return (vtab.index(task), "") if task in vtab else (len(vtab), task)


def setup_of(record: dict) -> str:
    """How a run computed, beyond its protocol: the adapter convention and the official code's quirks in force."""
    convention, quirks = record.get("convention"), set(record.get("quirks") or [])
    if convention is None:
        return "convention not recorded"
    if convention == "official" and quirks >= PAPER_QUIRKS:
        return PAPER_SETUP
    return f"{convention} convention" + (f" · quirks: {', '.join(sorted(quirks))}" if quirks else "")


def mc_dropout_of(record: dict) -> float | None:
    """The adapter dropout kept on in the MC passes of a ``sampling=mc`` run (None: no MC dropout)."""
    dropout = ((record.get("config") or {}).get("adapter") or {}).get("dropout")
    return dropout if record.get("sampling") == "mc" and dropout else None


def load_results(runs_dir: Path) -> pd.DataFrame:
    """One row per result JSON below ``runs_dir`` (missing keys stay empty), with the parsed JSON itself in
    ``record`` so that later readers need not parse it again. A file that cannot be read as a result is left out,
    its one-line reason in ``frame.attrs["unreadable"]``; UserError if no file can be read."""
    rows, unreadable = [], []
    for path in result_files(runs_dir):
        try:
            record = read_result(path)
        except UserError as error:
            unreadable.append(str(error))
            continue
        rows.append(
            {key: record.get(key) for key in RUN_COLUMNS}
            | {
                "protocol": RENAMED_PROTOCOLS.get(record.get("protocol"), record.get("protocol")),
                "setup": setup_of(record),
                "variant": variant_digest(record.get("config") or {}),
                "mc_dropout": mc_dropout_of(record),
                "error": record.get("error"),
                "path": str(path),
                "record": record,
            }
        )
    if not rows:
        if unreadable:
            raise UserError(f"no readable result file under {runs_dir}; the first: {unreadable[0]}")
        raise UserError(f"no result files under {runs_dir}; run some experiments first (see README)")
    frame = pd.DataFrame(rows, columns=[*RUN_COLUMNS, "variant", "mc_dropout", "error", "path", "record"])
    frame.attrs["unreadable"] = unreadable
    return frame


def method_labels(done: pd.DataFrame) -> pd.Series:
    """Per run, its method's row label: the adapter, its sampling mode unless ``mean`` (with the MC dropout rate),
    and the config digest where one (backbone, protocol, setup, adapter, sampling) ran under several
    configurations."""
    variants = done.groupby(METHOD_KEYS[:5]).variant.transform("nunique")
    modes = [
        "" if mode == "mean" else f" ({mode}{'' if pd.isna(dropout) else f', MC dropout {dropout:g}'})"
        for mode, dropout in zip(done.sampling, done.mc_dropout, strict=True)
    ]
    labels = done.adapter + pd.Series(modes, index=done.index, dtype=object)
    return labels + (" [" + done.variant + "]").where(variants > 1, "")


def sections(rows: list[dict]) -> list[tuple[tuple[str, str], list[dict]]]:
    """Rows by (backbone, protocol), in order of first appearance: one table each."""
    grouped: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        grouped.setdefault((row["backbone"], row["protocol"]), []).append(row)
    return list(grouped.items())
