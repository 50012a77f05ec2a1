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

from pvera_bench.config import ConformalConfig
from pvera_bench.errors import UserError
from pvera_bench.evaluation import ECE_BINS, Predictions, classification_metrics
from pvera_bench.plots import reliability_diagrams, risk_coverage_plot
from pvera_bench.predictions import predictions_path, read_predictions
from pvera_bench.runs import METHOD_KEYS, method_labels, number, sections, task_order
from pvera_bench.uncertainty import risk_coverage_curve, uncertainty_metrics

ENSEMBLE_SPLITS = ("test", "val")  # OOD sets ("ood-<task>") are not averaged


@dataclass(frozen=True)
class Column:
    """One number of the table: where a result record keeps it, and how it is shown."""

    name: str  # CSV column
    header: str  # Markdown column
    keys: tuple[str, ...]  # path into the result record
    scale: float = 1.0  # 100: shown in percent
    digits: int = 4


COLUMNS = (
    Column("top1_pct", "Top-1 (%)", ("test_top1",), 100, 2),
    Column("nll", "NLL", ("test_nll",)),
    Column("ece", "ECE", ("test_ece",)),
    Column("brier", "Brier", ("uncertainty", "brier")),
    Column("aurc", "AURC", ("uncertainty", "aurc")),
    Column("nll_after_scaling", "NLL (TS)", ("uncertainty", "nll_after_scaling")),
    Column("mutual_information", "MI", ("uncertainty", "mutual_information")),
    Column("aps_coverage_pct", "APS cov. (%)", ("uncertainty", "conformal", "aps", "coverage"), 100, 1),
    Column("aps_set_size", "APS size", ("uncertainty", "conformal", "aps", "set_size"), 1, 3),
    Column("lac_coverage_pct", "LAC cov. (%)", ("uncertainty", "conformal", "lac", "coverage"), 100, 1),
    Column("lac_set_size", "LAC size", ("uncertainty", "conformal", "lac", "set_size"), 1, 3),
    Column("ood_auroc_msp", "OOD AUROC (MSP)", ("uncertainty", "ood", "mean", "msp", "auroc"), 1, 3),
    Column("ood_auroc_mi", "OOD AUROC (MI)", ("uncertainty", "ood", "mean", "mutual_information", "auroc"), 1, 3),
)
CSV_COLUMNS = ("backbone", "protocol", "method", "kind", "task", "seeds", *(c.name for c in COLUMNS))

HEADER = """# Calibration and uncertainty on the test split

Recomputed from what each run stored (its result JSON and its predictions file), never retrained. One row per
method and task: the mean over seeds of each run's value (a column's mean is over the seeds that recorded it;
empty where none did). *Seeds*: successful runs. *Top-1*: test accuracy. *NLL*: mean negative log-likelihood
of the true class. *ECE*: expected calibration error, 15 equal-width confidence bins. *Brier*: multi-class
Brier score (squared distance to the one-hot label, summed over classes). *AURC*: area under the risk-coverage
curve (error rate among the accepted images, most confident accepted first; lower is better). *NLL (TS)*: test
NLL after temperature scaling fitted on val200. *MI*: mean mutual information between the prediction and the
random draw over the MC passes (`sampling=mc` only; 0 when the passes agree). *APS / LAC cov.* and *size*:
test coverage (share of images whose set holds the true class) and mean set size of split-conformal prediction
sets calibrated on val200{target}. *OOD AUROC*: how well the maximum softmax probability (MSP), or the MC
mutual information (MI, `sampling=mc` only), tells the test images from other tasks' images, averaged over the
OOD sets (0.5: chance). Rows "· ensemble of k seeds" average the k seeds' stored probabilities (and val, when
every seed stored it) and compute every column from the average; their MI and OOD cells stay empty (the passes
and the OOD sets are not averaged). "mean (k tasks)" averages the k task rows of a method with two or more
tasks (or of its ensembles); a column's mean needs every task.
"""


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
        stored = path.with_name(record["predictions"]) if record.get("predictions") else predictions_path(path)
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


def plotted_tasks(runs: list[Run], requested: list[str] | None) -> list[str]:
    """The tasks that get figures: those requested (each must have stored predictions), else every such task."""
    available = sorted({run.task for run in runs if run.predictions is not None}, key=task_order)
    if requested is None:
        return available
    missing = [task for task in requested if task not in available]
    if missing:
        raise UserError(
            f"--plot-task {', '.join(missing)}: no stored predictions of a successful run on "
            f"{'that task' if len(missing) == 1 else 'those tasks'}; tasks with predictions: "
            f"{', '.join(available) or 'none'}"
        )
    return list(dict.fromkeys(requested))


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
    and accuracy (None for an empty bin). The count-weighted mean gap is the ECE of :mod:`pvera_bench.evaluation`."""
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


def row(group: Group, kind: str, method: str, task: str, seeds: str, records: list[dict]) -> dict:
    backbone, protocol = group.first.section
    numbers = {}
    for c in COLUMNS:
        seed_mean = mean(value(r, c.keys) for r in records)
        numbers[c.name] = None if seed_mean is None else seed_mean * c.scale
    identity = {"backbone": backbone, "protocol": protocol, "method": method, "kind": kind, "task": task}
    return {**identity, "seeds": seeds, **numbers}


def task_mean(rows: list[dict], kind: str, method: str) -> dict:
    """The mean over a method's task rows; a column's mean needs every task."""
    counts = sorted({int(r["seeds"]) for r in rows})
    means = {}
    for c in COLUMNS:
        values = [r[c.name] for r in rows]
        means[c.name] = None if None in values else sum(values) / len(values)
    return {
        **{k: rows[0][k] for k in ("backbone", "protocol")},
        "method": method,
        "kind": kind,
        "task": f"mean ({len(rows)} tasks)",
        "seeds": str(counts[0]) if len(counts) == 1 else f"{counts[0]}–{counts[-1]}",
        **means,
    }


def calibration_rows(runs: list[Run], plot_tasks: Iterable[str] = ()) -> tuple[list[dict], list[str], dict]:
    """Table rows, notes, and per (backbone, task) in ``plot_tasks`` the figures' entries of every method."""
    plot_tasks = set(plot_tasks)
    rows, notes, curves = [], [], {}
    for groups in grouped(runs).values():
        per_run, ensembles = [], []
        for task, group in groups.items():
            label = group.first.label
            per_run.append(row(group, "runs", label, task, str(len(group.runs)), [r.record for r in group.runs]))
            rows.append(per_run[-1])
            averaged, used = ensemble(group)
            if averaged is not None:
                record = ensemble_record(averaged, conformal_config(used[0].record))
                name = f"{label} · ensemble of {len(used)} seeds"
                ensembles.append(row(group, "ensemble", name, task, str(len(used)), [record]))
                rows.append(ensembles[-1])
            if task in plot_tasks and used:
                if averaged is not None:
                    entry = curve_entry(label, f"ensemble of {len(used)} seeds", averaged["test"])
                else:
                    run = used[0]
                    entry = curve_entry(label, f"seed {run.seed}", read_predictions(run.predictions)["test"])
                backbone, protocol = group.first.section
                curves.setdefault((backbone, task), []).append({**entry, "section": protocol})
            notes += group.notes
        label = next(iter(groups.values())).first.label
        if len(per_run) > 1:
            rows.append(task_mean(per_run, "runs mean", label))
        if len(ensembles) > 1:
            rows.append(task_mean(ensembles, "ensemble mean", f"{label} · seed ensembles"))
    return rows, notes, curves


def coverage_target(runs: list[Run]) -> str:
    """The conformal sets' target coverage for the header, when every run that has sets used the same one."""
    miscoverages = {value(run.record, ("uncertainty", "conformal", "miscoverage")) for run in runs} - {None}
    return f" (target coverage {100 * (1 - miscoverages.pop()):g} %)" if len(miscoverages) == 1 else ""


def markdown(rows: list[dict], notes: list[str], target: str = "") -> str:
    lines = [HEADER.format(target=target)]
    if not rows:
        lines += ["No successful runs yet.", ""]
    header = ["Method", "Task", "Seeds", *(c.header for c in COLUMNS)]
    for (backbone, protocol), section in sections(rows):
        lines += [f"## {backbone} · {protocol}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for r in section:
            values = [r["method"], r["task"], r["seeds"], *(number(r[c.name], c.digits) for c in COLUMNS)]
            if r["kind"].endswith("mean"):
                values[:2] = [f"**{values[0]}**", f"**{values[1]}**"]
            lines.append("| " + " | ".join(values) + " |")
        lines.append("")
    lines += ["## Notes", ""]
    lines += [f"- {note}" for note in notes] if notes else ["None."]
    return "\n".join(lines) + "\n"


def write_calibration(frame: pd.DataFrame, out_dir: Path, plot_tasks: list[str] | None = None) -> list[Path]:
    """Write ``calibration.md``, ``calibration.csv`` and the figures of ``plot_tasks`` (default: every task with
    stored predictions) from ``load_results``'s frame; returns their paths."""
    runs = successful_runs(frame)
    chosen = plotted_tasks(runs, plot_tasks)
    rows, notes, curves = calibration_rows(runs, chosen)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / "calibration.md", out_dir / "calibration.csv"]
    paths[0].write_text(markdown(rows, notes, coverage_target(runs)))
    pd.DataFrame(rows, columns=list(CSV_COLUMNS)).to_csv(paths[1], index=False)
    for (backbone, task), entries in sorted(curves.items(), key=lambda item: (item[0][0], task_order(item[0][1]))):
        several = len({entry["section"] for entry in entries}) > 1
        for entry in entries:
            if several:
                entry["label"] += f" ({entry['section']})"
        reliability = out_dir / f"reliability_{backbone}_{task}.png"
        risk = out_dir / f"risk_coverage_{backbone}_{task}.png"
        reliability_diagrams(entries, f"{task} · {backbone}", reliability)
        risk_coverage_plot(entries, f"{task} · {backbone}", risk)
        paths += [reliability, risk]
    return paths
