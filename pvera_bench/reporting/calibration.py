"""The calibration table and its figures, written by ``make table`` beside the accuracy table.

``results/tables/calibration.{md,csv}``: one row per (method, task) with every successful run, a method
keyed as in ``vtab1k.md`` (backbone, protocol, setup, adapter, sampling, config variant). Each number is
the mean over seeds of the run's own value (result JSON: ``test_top1``, ``test_nll``, ``test_ece`` and the
``uncertainty`` dict), then per method a "mean (k tasks)" row. Where a method has two or more seeds with
stored predictions on a task, a seed-ensemble row gives the same numbers computed from the seeds' averaged
probabilities (val averaged too when every seed stored it), read from the predictions files: nothing is
retrained. ``reliability_<backbone>_<task>.png`` and ``risk_coverage_<backbone>_<task>.png`` draw, per
method, the ensemble's (or the single run's) test predictions.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from pathlib import Path

import pandas as pd
import torch

from pvera_bench.artefacts.layout import RunFiles
from pvera_bench.artefacts.predictions import read_predictions
from pvera_bench.config import ConformalConfig
from pvera_bench.core.errors import UserError
from pvera_bench.evaluation.predict import ECE_BINS, Predictions, classification_metrics
from pvera_bench.evaluation.uncertainty import risk_coverage_curve, uncertainty_metrics
from pvera_bench.reporting.results import METHOD_KEYS, method_labels, task_order

ENSEMBLE_SPLITS = ("test", "val")  # OOD sets ("ood-<task>") are not averaged


@dataclass
class Run:
    """A successful run, with its method and, when the file exists, its predictions file."""

    method: tuple
    section: tuple[str, str]  # (backbone, "protocol · setup"): the heading of its table
    label: str  # the method's label in vtab1k.md
    task: str
    seed: int
    record: dict
    predictions: Path | None


@dataclass
class Group:
    """The runs of one method on one task."""

    runs: list[Run]
    notes: list[str] = field(default_factory=list)

    @property
    def first(self) -> Run:
        return self.runs[0]

    def name(self) -> str:
        backbone, protocol = self.first.section
        return f"{backbone} · {protocol} · {self.first.label} on {self.first.task}"


def value(record: dict, keys: Iterable[str]) -> float | None:
    """The number at ``keys`` in a nested record; None where any level is missing."""
    for key in keys:
        if not isinstance(record, dict):
            return None
        record = record.get(key)
    return float(record) if isinstance(record, int | float) and not isinstance(record, bool) else None


def mean(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


def successful_runs(frame: pd.DataFrame) -> list[Run]:
    """Every successful run of ``load_results``'s frame, labelled as the accuracy table labels its method."""
    done = frame[(frame.status == "success") & frame[METHOD_KEYS].notna().all(axis=1)]
    runs = []
    for row, label in zip(done.itertuples(index=False), method_labels(done), strict=True):
        path, record = Path(row.path), row.record
        stored = path.with_name(record["predictions"]) if record.get("predictions") else RunFiles(path).predictions
        runs.append(
            Run(
                method=tuple(getattr(row, key) for key in METHOD_KEYS),
                section=(row.backbone, f"{row.protocol} · {row.setup}"),
                label=label,
                task=row.dataset,
                seed=int(row.seed) if row.seed is not None and not pd.isna(row.seed) else -1,
                record=record,
                predictions=stored if stored.is_file() else None,
            )
        )
    return runs


def grouped(runs: list[Run]) -> dict[tuple, dict[str, Group]]:
    """Runs by method (sorted as the accuracy table sorts them), then by task (in column order)."""
    methods: dict[tuple, dict[str, Group]] = {}
    for run in sorted(runs, key=lambda r: (tuple(map(str, r.method)), task_order(r.task), r.seed)):
        methods.setdefault(run.method, {}).setdefault(run.task, Group([])).runs.append(run)
    return methods


def conformal_config(record: dict) -> ConformalConfig:
    """The run's conformal settings (its resolved config), so an ensemble's sets use the runs' miscoverage."""
    stored = (record.get("config") or {}).get("conformal") or {}
    known = {f.name for f in fields(ConformalConfig)}
    return ConformalConfig(**{k: v for k, v in stored.items() if k in known})


def ensemble(group: Group) -> tuple[dict[str, Predictions] | None, list[Run]]:
    """The seeds' averaged test (and val) predictions, and the runs averaged; None with notes when it cannot be.

    Runs without a predictions file, or with one that cannot be read, are left out (noted).
    """
    stored = [run for run in group.runs if run.predictions is not None]
    absent = [run for run in group.runs if run.predictions is None]
    if absent and len(group.runs) >= 2:
        seeds = ", ".join(str(run.seed) for run in absent)
        group.notes.append(
            f"{group.name()}: seed{'s' if len(absent) > 1 else ''} {seeds} stored no predictions file (older "
            f"run{'s' if len(absent) > 1 else ''}); left out of the ensemble"
        )
    loaded: list[tuple[Run, dict[str, Predictions]]] = []
    for run in stored:
        try:
            splits = read_predictions(run.predictions)
            loaded.append((run, {k: Predictions(p.labels, p.probs) for k, p in splits.items() if k in ENSEMBLE_SPLITS}))
        except UserError as error:
            group.notes.append(f"{group.name()}: seed {run.seed} left out of the ensemble: {error}")
    if len(loaded) < 2:
        return None, [run for run, _ in loaded]
    runs = [run for run, _ in loaded]
    splits = [splits for _, splits in loaded]
    if any("test" not in s for s in splits):
        group.notes.append(f"{group.name()}: a predictions file has no test split; no ensemble")
        return None, runs
    averaged = {}
    for split in ENSEMBLE_SPLITS:
        if not all(split in s for s in splits):
            if split == "val" and any(split in s for s in splits):
                group.notes.append(f"{group.name()}: not every seed stored val; the ensemble has no val columns")
            continue
        first = splits[0][split]
        same = all(
            torch.equal(s[split].labels, first.labels) and s[split].probs.shape == first.probs.shape for s in splits
        )
        if not same:
            if split == "test":
                group.notes.append(f"{group.name()}: the seeds' test labels or classes differ; no ensemble")
                return None, runs
            group.notes.append(f"{group.name()}: the seeds' val labels or classes differ; the ensemble has no val")
            continue
        probs = torch.stack([s[split].probs.float() for s in splits]).mean(dim=0)
        averaged[split] = Predictions(first.labels, probs)
    return averaged, runs


def ensemble_record(predictions: dict[str, Predictions], conformal: ConformalConfig) -> dict:
    """The averaged predictions' numbers, keyed as a result JSON keeps a run's (so :data:`COLUMNS` read both)."""
    test = predictions["test"]
    metrics = classification_metrics(test.probs, test.labels)
    return {
        "test_top1": metrics["top1"],
        "test_nll": metrics["nll"],
        "test_ece": metrics["ece"],
        "uncertainty": uncertainty_metrics(predictions, conformal),
    }


def reliability_bins(probs: torch.Tensor, labels: torch.Tensor, n_bins: int = ECE_BINS) -> dict[str, list]:
    """Per equal-width confidence bin ((i/n, (i+1)/n], the first one closed): image count, mean confidence
    and accuracy (None for an empty bin). The count-weighted mean gap is the ECE of
    :mod:`pvera_bench.evaluation.predict`."""
    confidence, predicted = probs.float().max(dim=-1)
    correct = (predicted == labels).float()
    index = (torch.ceil(confidence * n_bins).long() - 1).clamp(0, n_bins - 1)
    counts = torch.bincount(index, minlength=n_bins)
    conf_sum = torch.zeros(n_bins).index_add_(0, index, confidence)
    correct_sum = torch.zeros(n_bins).index_add_(0, index, correct)
    return {
        "edges": [i / n_bins for i in range(n_bins + 1)],
        "count": counts.tolist(),
        "confidence": [(c / n).item() if n else None for c, n in zip(conf_sum, counts, strict=True)],
        "accuracy": [(a / n).item() if n else None for a, n in zip(correct_sum, counts, strict=True)],
    }


def curve_entry(label: str, source: str, test: Predictions) -> dict:
    """What the two figures draw for one method."""
    probs, labels = test.probs.float(), test.labels
    coverage, risk = risk_coverage_curve(probs, labels)
    return {
        "label": label,
        "source": source,
        "bins": reliability_bins(probs, labels),
        "ece": classification_metrics(probs, labels)["ece"],
        "coverage": coverage.tolist(),
        "risk": risk.tolist(),
        "aurc": risk.mean().item(),  # as selective_risks computes it
    }
