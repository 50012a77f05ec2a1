"""One self-contained HTML report of the results: ``pvera-bench report`` (``make report``).

Writes the tables as ``make table`` does, then ``results/report.html``: a single file that opens offline in any
browser (inline CSS, every figure embedded as a base64 ``data:`` URI, no external style sheet, script, font or
image). It renders the same documents the table files were written from (accuracy, calibration, statistics),
every figure they drew, a per-task bar chart of test top-1 with its seed interval per method, and the provenance of
every run: its file, config digest, code version, machine, package versions and wall time. The page is the
Jinja2 template ``templates/report.html.j2``.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import jinja2
import pandas as pd

from pvera_bench.artefacts.provenance import git_state
from pvera_bench.core.files import write_atomically
from pvera_bench.reporting.document import Block, Document, Output
from pvera_bench.reporting.plots import seed_bar_chart
from pvera_bench.reporting.provenance import code_version, provenance_frame
from pvera_bench.reporting.results import backbone_label, method_labels
from pvera_bench.reporting.tables import write_tables

TEMPLATES = jinja2.Environment(
    loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"), autoescape=True, keep_trailing_newline=True
)
DOCUMENTS = (
    ("vtab1k", "VTAB-1k accuracy"),
    ("calibration", "Calibration and uncertainty"),
    ("statistics", "Statistical comparison"),
)


@dataclass
class EmbeddedFigure:
    uri: str
    caption: str

    @classmethod
    def of(cls, png: bytes, caption: str) -> EmbeddedFigure:
        return cls("data:image/png;base64," + base64.b64encode(png).decode("ascii"), caption)


@dataclass
class Section:
    """One ``<section>`` of the page."""

    anchor: str
    title: str
    blocks: list[Block] = field(default_factory=list)
    figures: list[EmbeddedFigure] = field(default_factory=list)
    source: str | None = None  # the table file the blocks were written to
    empty: str | None = None  # said when there are no figures


def bar_chart_section(frame: pd.DataFrame) -> Section:
    """One chart per (backbone, protocol, setup) with successful runs, as the tables' sections."""
    done = frame[(frame.status == "success") & frame.test_top1.notna()]
    section = Section(
        "per-task-accuracy", "Per-task test top-1 with seed intervals", empty="No successful runs to plot."
    )
    if done.empty:
        return section
    done = done.assign(label=method_labels(done))
    for (backbone, protocol, setup), runs in done.groupby(["backbone", "protocol", "setup"], sort=True):
        title = f"{backbone_label(backbone)} · {protocol} · {setup}"
        caption = f"Test top-1 per task, {title}: bar = mean over seeds, error bar = ± 1 std over seeds, dots = seeds."
        section.figures.append(EmbeddedFigure.of(seed_bar_chart(runs, title), caption))
    return section


def provenance_section(frame: pd.DataFrame, runs_dir: Path) -> Section:
    document = Document("provenance").text(
        "One row per result file, named by its path under the runs folder. Config digest: a hash of the resolved "
        "config without its run-time settings (same digest, same computation; the end of the file name). Code "
        "version: the commit the run's code was at, and whether the tree had uncommitted changes (dirty). not "
        "recorded: the run file predates that key."
    )
    document.table(provenance_frame(frame, runs_dir))
    return Section("provenance", f"Provenance of the {len(frame)} runs", document.blocks)


def build_report(frame: pd.DataFrame, tables: Output, runs_dir: Path, generated: datetime | None = None) -> str:
    """The report's HTML for the runs of ``frame`` (``load_results``'s) and what ``write_tables`` wrote."""
    sections = []
    for name, title in DOCUMENTS:
        document = tables.documents[name]
        blocks = [Block("heading", document.title), *document.blocks]
        sections.append(Section(name, title, blocks, source=str(tables.out_dir / f"{name}.md")))
    sections.append(bar_chart_section(frame))
    figures = [EmbeddedFigure.of(f.path.read_bytes(), f"{f.caption} ({f.path.name})") for f in tables.figures]
    sections.append(Section("figures", f"Figures ({len(figures)})", figures=figures, empty="No figures."))
    sections.append(provenance_section(frame, runs_dir))
    succeeded = int((frame.status == "success").sum())
    return TEMPLATES.get_template("report.html.j2").render(
        generated=(generated or datetime.now(UTC)).strftime("%Y-%m-%d %H:%M:%S %Z").strip(),
        runs_dir=str(runs_dir),
        tables_dir=str(tables.out_dir),
        n_runs=len(frame),
        n_succeeded=succeeded,
        n_failed=len(frame) - succeeded,
        report_code=code_version(git_state()),
        sections=sections,
    )


def write_report(
    frame: pd.DataFrame, runs_dir: Path, tables_dir: Path, out: Path, plot_tasks: list[str] | None = None
) -> Output:
    """Write the tables of ``frame`` into ``tables_dir``, then the report to ``out`` (atomically); returns every
    path written."""
    tables = write_tables(frame, tables_dir, plot_tasks)
    write_atomically(out, build_report(frame, tables, runs_dir))
    tables.paths.append(Path(out))
    return tables
