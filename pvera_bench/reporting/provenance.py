"""The report's provenance table: where each run's numbers come from (file, config digest, code, machine)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from pvera_bench.artefacts.layout import config_digest

NOT_RECORDED = "not recorded"


def code_version(record: dict) -> str:
    commit = record.get("git_commit")
    if not commit:
        return NOT_RECORDED
    if commit == "unknown":
        return "unknown (not a git checkout)"
    state = {True: "dirty", False: "clean"}.get(record.get("git_dirty"), "dirty state unknown")
    return f"{commit[:8]} ({state})"


def duration(seconds) -> str:
    if not isinstance(seconds, int | float) or seconds != seconds:
        return NOT_RECORDED
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def provenance(path: Path, record: dict, runs_dir: Path) -> dict[str, str]:
    """One row of the provenance table for the result ``record`` read from ``path``."""
    machine = record.get("machine") if isinstance(record.get("machine"), dict) else None
    versions = record.get("versions")
    if isinstance(versions, dict) and versions:
        packages = " · ".join(f"{name} {versions.get(name, '?')}" for name in ("torch", "timm"))
    else:
        packages = NOT_RECORDED
    status = str(record.get("status", NOT_RECORDED))
    if status != "success" and record.get("error"):
        status += f": {record['error']}"
    config = record.get("config")
    return {
        "Run file": str(path.relative_to(runs_dir)) if path.is_relative_to(runs_dir) else str(path),
        "Status": status,
        "Adapter": str(record.get("adapter", "")),
        "Task": str(record.get("dataset", "")),
        "Seed": str(record.get("seed", "")),
        "Config digest": config_digest(config) if isinstance(config, dict) else NOT_RECORDED,
        "Code version": code_version(record),
        "Host": str(machine.get("hostname") or NOT_RECORDED) if machine else NOT_RECORDED,
        "GPU": (machine.get("gpu") or "CPU") if machine else NOT_RECORDED,
        "Device": str(record.get("device") or NOT_RECORDED),
        "Packages": packages,
        "Wall time": duration(record.get("wall_s")),
    }


def provenance_frame(frame: pd.DataFrame, runs_dir: Path) -> pd.DataFrame:
    """One row per result file of ``load_results``'s frame."""
    rows = [provenance(Path(path), record, runs_dir) for path, record in zip(frame.path, frame.record, strict=True)]
    return pd.DataFrame(rows)
