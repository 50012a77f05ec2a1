"""One self-contained HTML report of the results: ``python -m pvera_bench.report`` (``make report``).

Writes ``results/report.html``, a single file that opens offline in any browser: inline CSS, every figure
embedded as a base64 ``data:`` URI, no external style sheet, script, font or image. It holds the tables that
``make table`` wrote into ``results/tables/`` (``vtab1k.md``, ``calibration.md`` and ``statistics.md`` when
present, converted from Markdown), every PNG figure of that folder, a per-task bar chart of test top-1 with
its seed interval per method (drawn here from the result files), and the provenance of every run: its file,
config digest, code version, machine, package versions and wall time.
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from pvera_bench.cli import run_cli
from pvera_bench.data.tasks import dataset_configs
from pvera_bench.errors import UserError
from pvera_bench.plots import pyplot
from pvera_bench.results import git_state, write_atomically
from pvera_bench.runs import load_results, method_labels, task_order
from pvera_bench.table import BACKBONE_NAMES

TABLE_FILES = (  # (file in the tables folder, section title, whether make table always writes it)
    ("vtab1k.md", "VTAB-1k accuracy", True),
    ("calibration.md", "Calibration and uncertainty", True),
    ("statistics.md", "Statistical comparison", False),
)
FIGURE_ORDER = ("accuracy_vs_params", "critical_difference", "reliability", "risk_coverage")  # the rest after these
FIGURE_TITLES = {
    "accuracy_vs_params": "Accuracy against trainable adapter parameters",
    "critical_difference": "Critical-difference diagram",
    "reliability": "Reliability diagrams",
    "risk_coverage": "Risk-coverage curves",
}
NOT_RECORDED = "not recorded"
PROVENANCE_HEADER = (
    "Run file",
    "Status",
    "Adapter",
    "Task",
    "Seed",
    "Config digest",
    "Code version",
    "Host",
    "GPU",
    "Device",
    "Packages",
    "Wall time",
)

CSS = """
:root { color-scheme: light; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
       color: #1b1f24; background: #fff; margin: 0 auto; padding: 1.5em 2em 4em; max-width: 1500px; }
h1 { font-size: 1.8em; margin: 0 0 .3em; }
h2 { font-size: 1.4em; margin: 2em 0 .5em; padding-bottom: .2em; border-bottom: 2px solid #d0d7de; }
h3 { font-size: 1.15em; margin: 1.5em 0 .4em; }
h4 { font-size: 1em; margin: 1.2em 0 .3em; }
code { font: .92em ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; background: #f3f4f6;
       padding: .05em .3em; border-radius: 3px; }
.meta { border-collapse: collapse; margin: .5em 0 1em; }
.meta th { text-align: left; padding: .15em 1em .15em 0; color: #57606a; font-weight: 600; white-space: nowrap; }
.meta td { padding: .15em 0; }
.scroll { overflow-x: auto; margin: .5em 0 1.2em; border: 1px solid #d0d7de; border-radius: 4px; }
table.data { border-collapse: collapse; font-size: 12.5px; width: max-content; min-width: 100%; }
table.data th, table.data td { border-bottom: 1px solid #e1e4e8; padding: .3em .6em; vertical-align: top; }
table.data th { background: #f6f8fa; text-align: left; position: sticky; top: 0; white-space: nowrap; }
table.data td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
table.data tbody tr:nth-child(even) { background: #fafbfc; }
table.data tbody tr:hover { background: #eef4ff; }
figure { margin: 0 0 1.5em; }
.figures { display: grid; grid-template-columns: repeat(auto-fill, minmax(min(100%, 600px), 1fr)); gap: 0 1.5em; }
table.provenance td { white-space: nowrap; }
table.provenance td.wrap { white-space: normal; min-width: 14em; }
figure img { max-width: min(100%, 1000px); height: auto; border: 1px solid #d0d7de; border-radius: 4px;
             background: #fff; }
figcaption { color: #57606a; font-size: .95em; margin-top: .3em; }
.note { background: #fff8e6; border-left: 4px solid #d4a72c; padding: .5em .8em; margin: .8em 0; }
.legend { background: #f6f8fa; border-radius: 4px; padding: .6em 1em; }
.legend li { margin: .2em 0; }
nav ul { columns: 2; margin: .3em 0; }
.failed { color: #b42318; font-weight: 600; }
.muted { color: #8c959f; }
@media print { .scroll { overflow: visible; } table.data th { position: static; } }
"""

# Counts the figures the browser decoded (for a reader's sanity and the headless-browser test); no network.
SCRIPT = """
window.addEventListener("load", function () {
  var images = Array.prototype.slice.call(document.images);
  var shown = images.filter(function (img) { return img.complete && img.naturalWidth > 0; });
  document.body.dataset.imagesLoaded = String(shown.length);
  document.body.dataset.imagesTotal = String(images.length);
});
"""


# --- Markdown (the subset the tables are written in) -------------------------------------------------------------

TABLE_SEPARATOR = re.compile(r"^\s*\|?\s*:?-{3,}:?\s*(\|\s*:?-{3,}:?\s*)*\|?\s*$")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
BULLET = re.compile(r"^\s*[-*+]\s+(.*)$")
NUMBER = re.compile(r"^[-+−]?\d[\d,]*(\.\d+)?\s*(%|± ?[-+]?\d[\d,]*(\.\d+)?|[–-]\d+)?$")  # 1.5, 61.0 ± 1.4, 1–2
LINK = re.compile(r"\[([^\]]+)\]\(([^)\s]+)\)")
BOLD = re.compile(r"\*\*(?=\S)(.+?)(?<=\S)\*\*")
CODE = re.compile(r"`([^`]+)`")
KEPT = re.compile("\x00(\\d+)\x00")
ITALIC = re.compile(r"(?<![\w*])\*(?=[^\s*])([^*]+?)(?<=\S)\*(?![\w*])")


def slug(text: str) -> str:
    """An id for an in-page anchor."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "section"


def inline(text: str) -> str:
    """Markdown inline markup to HTML: `code`, **bold**, *italic*; a link becomes its text (in-page anchors stay
    links), so the report never points outside itself. Everything else is escaped."""
    kept: list[str] = []

    def keep(fragment: str) -> str:
        kept.append(fragment)
        return f"\x00{len(kept) - 1}\x00"

    def link(match: re.Match) -> str:
        label, target = html.escape(match.group(1)), match.group(2)
        return keep(f'<a href="{html.escape(target)}">{label}</a>' if target.startswith("#") else label)

    text = LINK.sub(link, text.replace("\x00", ""))
    text = CODE.sub(lambda match: keep(f"<code>{html.escape(match.group(1))}</code>"), text)
    text = html.escape(text, quote=False)
    text = BOLD.sub(r"<strong>\1</strong>", text)
    text = ITALIC.sub(r"<em>\1</em>", text)
    return KEPT.sub(lambda match: kept[int(match.group(1))], text)


def table_cells(line: str) -> list[str]:
    """The cells of a ``| a | b |`` row (``\\|`` is a literal bar)."""
    line = line.strip()
    line = line[1:] if line.startswith("|") else line
    line = line[:-1] if line.endswith("|") and not line.endswith("\\|") else line
    return [cell.strip().replace("\\|", "|") for cell in re.split(r"(?<!\\)\|", line)]


def html_table(header: list[str], rows: list[list[str]]) -> str:
    """A scrollable HTML table; numeric cells are right-aligned."""
    head = "".join(f"<th>{inline(cell)}</th>" for cell in header)
    body = []
    for row in rows:
        row = row + [""] * (len(header) - len(row))
        cells = "".join(
            f'<td class="num">{inline(cell)}</td>'
            if NUMBER.match(cell.replace("**", ""))
            else f"<td>{inline(cell)}</td>"
            for cell in row
        )
        body.append(f"<tr>{cells}</tr>")
    return (
        f'<div class="scroll"><table class="data"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table></div>"
    )


def markdown_to_html(text: str, heading_offset: int = 1, id_prefix: str = "") -> str:
    """The Markdown of the table files as HTML: ``#`` headings (shifted down by ``heading_offset`` levels, with
    ids), paragraphs, ``| a | b |`` tables with a ``|---|`` line under the header, ``-`` lists and inline
    `code`, **bold** and *italic*."""
    lines = text.splitlines()
    out: list[str] = []
    paragraph: list[str] = []

    def flush() -> None:
        if paragraph:
            out.append(f"<p>{inline(' '.join(line.strip() for line in paragraph))}</p>")
            paragraph.clear()

    i = 0
    while i < len(lines):
        line = lines[i]
        heading = HEADING.match(line)
        if not line.strip():
            flush()
            i += 1
        elif heading:
            flush()
            level = min(6, len(heading.group(1)) + heading_offset)
            title = heading.group(2)
            out.append(f'<h{level} id="{id_prefix}{slug(title)}">{inline(title)}</h{level}>')
            i += 1
        elif line.lstrip().startswith("|") and i + 1 < len(lines) and TABLE_SEPARATOR.match(lines[i + 1]):
            flush()
            header, rows = table_cells(line), []
            i += 2
            while i < len(lines) and lines[i].lstrip().startswith("|"):
                rows.append(table_cells(lines[i]))
                i += 1
            out.append(html_table(header, rows))
        elif BULLET.match(line):
            flush()
            items: list[str] = []
            while i < len(lines) and lines[i].strip():
                bullet = BULLET.match(lines[i])
                if bullet:
                    items.append(bullet.group(1).strip())
                elif items and lines[i][:1].isspace():  # an indented continuation line
                    items[-1] += " " + lines[i].strip()
                else:
                    break
                i += 1
            out.append("<ul>" + "".join(f"<li>{inline(item)}</li>" for item in items) + "</ul>")
        else:
            paragraph.append(line)
            i += 1
    flush()
    return "\n".join(out)


# --- figures -----------------------------------------------------------------------------------------------------


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def figure_html(png: bytes, caption: str, alt: str | None = None) -> str:
    return (
        f'<figure><img src="{data_uri(png)}" alt="{html.escape(alt or caption)}">'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
    )


def task_labels() -> dict[str, str]:
    """Column header of each task by its folder name (``cifar`` -> ``CIFAR-100``)."""
    return {config.name: config.label for config in dataset_configs().values()}


def backbone_label(backbone: str) -> str:
    return f"{BACKBONE_NAMES[backbone]} ({backbone})" if backbone in BACKBONE_NAMES else backbone


def caption_of(path: Path, backbones: Sequence[str] = ()) -> str:
    """A caption from a figure's file name: ``reliability_vit_b16_in21k_cifar.png`` ->
    ``Reliability diagrams · ViT-B/16 IN21k (vit_b16_in21k) · CIFAR-100 (reliability_vit_b16_in21k_cifar.png)``."""
    stem, parts = path.stem, []
    for prefix in sorted(FIGURE_TITLES, key=len, reverse=True):
        if stem == prefix or stem.startswith(prefix + "_"):
            parts.append(FIGURE_TITLES[prefix])
            stem = stem[len(prefix) + 1 :]
            break
    if stem:
        for backbone in sorted({*backbones, *BACKBONE_NAMES}, key=len, reverse=True):
            if stem == backbone or stem.startswith(backbone + "_"):
                parts.append(backbone_label(backbone))
                stem = stem[len(backbone) + 1 :]
                break
    if stem:
        parts.append(task_labels().get(stem, stem.replace("_", " ")))
    if not parts:
        parts.append(path.stem.replace("_", " "))
    return f"{' · '.join(parts)} ({path.name})"


def figure_key(path: Path) -> tuple[int, str]:
    for rank, prefix in enumerate(FIGURE_ORDER):
        if path.stem == prefix or path.stem.startswith(prefix + "_"):
            return rank, path.name
    return len(FIGURE_ORDER), path.name


def seed_bar_chart(runs: pd.DataFrame, title: str) -> bytes:
    """PNG of a grouped bar chart: per task and method, the mean test top-1 (%) over seeds, an error bar of
    ± one standard deviation over seeds (none with one seed) and a dot per seed."""
    plt = pyplot()
    labels = task_labels()
    tasks = sorted(runs.dataset.unique(), key=task_order)
    methods = sorted(runs.label.unique())
    width = 0.8 / len(methods)
    figure, axes = plt.subplots(figsize=(min(24.0, max(7.0, 1.6 + 0.35 * len(tasks) * max(2, len(methods)))), 4.6))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for m, method in enumerate(methods):
        mine = runs[runs.label == method]
        colour = colours[m % len(colours)]
        xs, means, stds = [], [], []
        for t, task in enumerate(tasks):
            values = 100 * mine[mine.dataset == task].test_top1.astype(float)
            if values.empty:
                continue
            x = t - 0.4 + width * (m + 0.5)
            xs.append(x)
            means.append(values.mean())
            stds.append(values.std() if len(values) > 1 else 0.0)
            axes.scatter([x] * len(values), values, s=10, color="black", zorder=3, linewidths=0)
        seeds = mine.groupby("dataset").seed.nunique()
        seed_text = f"{seeds.min()}" if seeds.min() == seeds.max() else f"{seeds.min()}-{seeds.max()}"
        axes.bar(xs, means, width=width * 0.92, color=colour, label=f"{method} ({seed_text} seeds)", zorder=2)
        axes.errorbar(xs, means, yerr=stds, fmt="none", ecolor="#333333", capsize=3, linewidth=1, zorder=4)
    axes.set_xticks(range(len(tasks)))
    rotate = len(tasks) > 6
    axes.set_xticklabels(
        [labels.get(t, t) for t in tasks], rotation=35 if rotate else 0, ha="right" if rotate else "center"
    )
    axes.set_xlim(-0.6, len(tasks) - 0.4)
    axes.set_ylabel("test top-1 (%)")
    axes.set_title(title, fontsize=9)
    axes.grid(axis="y", alpha=0.3, zorder=0)
    axes.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    plt.close(figure)
    return buffer.getvalue()


def bar_charts(frame: pd.DataFrame) -> list[tuple[str, bytes]]:
    """One (title, PNG) per (backbone, protocol, setup) with successful runs, as the tables' sections."""
    done = frame[(frame.status == "success") & frame.test_top1.notna()]
    if done.empty:
        return []
    done = done.assign(label=method_labels(done))
    charts = []
    for (backbone, protocol, setup), runs in done.groupby(["backbone", "protocol", "setup"], sort=True):
        title = f"{backbone_label(backbone)} · {protocol} · {setup}"
        charts.append((title, seed_bar_chart(runs, title)))
    return charts


# --- provenance --------------------------------------------------------------------------------------------------


def config_digest_of(path: Path) -> str:
    """The digest a run's file name ends in (``<adapter>__<sampling>__<protocol>__s<seed>__<digest>``)."""
    parts = path.stem.split("__")
    return parts[-1] if len(parts) == 5 and re.fullmatch(r"[0-9a-f]{6,64}", parts[-1]) else "—"


def code_version(record: dict) -> str:
    commit = record.get("git_commit")
    if not commit:
        return NOT_RECORDED
    if commit == "unknown":
        return "unknown (not a git checkout)"
    dirty = record.get("git_dirty")
    state = {True: "dirty", False: "clean"}.get(dirty, "dirty state unknown")
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
    machine = record.get("machine")
    versions = record.get("versions")
    if isinstance(versions, dict) and versions:
        packages = " · ".join(f"{name} {versions.get(name, '?')}" for name in ("torch", "timm"))
    else:
        packages = NOT_RECORDED
    try:
        where = str(path.relative_to(runs_dir))
    except ValueError:
        where = str(path)
    status = str(record.get("status", NOT_RECORDED))
    if status != "success" and record.get("error"):
        status += f": {record['error']}"
    return {
        "Run file": path.name,
        "Path": where,
        "Status": status,
        "Adapter": str(record.get("adapter", "")),
        "Task": str(record.get("dataset", "")),
        "Seed": str(record.get("seed", "")),
        "Config digest": config_digest_of(path),
        "Code version": code_version(record),
        "Host": str(machine.get("hostname") or NOT_RECORDED) if isinstance(machine, dict) else NOT_RECORDED,
        "GPU": (machine.get("gpu") or "CPU") if isinstance(machine, dict) else NOT_RECORDED,
        "Device": str(record.get("device") or NOT_RECORDED),
        "Packages": packages,
        "Wall time": duration(record.get("wall_s")),
    }


def provenance_table(frame: pd.DataFrame, runs_dir: Path) -> str:
    rows = [provenance(Path(path), record, runs_dir) for path, record in zip(frame.path, frame.record, strict=True)]
    head = "".join(f"<th>{html.escape(h)}</th>" for h in PROVENANCE_HEADER)
    body = []
    for row in rows:
        cells = []
        for column in PROVENANCE_HEADER:
            value = html.escape(row[column])
            if column == "Run file":
                value = f'<code title="{html.escape(row["Path"])}">{value}</code>'
            elif column == "Config digest":
                value = f"<code>{value}</code>"
            classes = []
            if column == "Status" and not row[column].startswith("success"):
                classes.append("failed wrap")
            if row[column] in (NOT_RECORDED, "—"):
                classes.append("muted")
            if column in ("Seed", "Wall time"):
                classes.append("num")
            attribute = f' class="{" ".join(classes)}"' if classes else ""
            cells.append(f"<td{attribute}>{value}</td>")
        body.append(f"<tr>{''.join(cells)}</tr>")
    return (
        f'<div class="scroll"><table class="data provenance" id="provenance-table"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table></div>"
    )


# --- the page ----------------------------------------------------------------------------------------------------


@dataclass
class Section:
    anchor: str
    title: str
    body: str


def stale_tables(runs_dir: Path, tables_dir: Path) -> bool:
    """Whether some result file is newer than the oldest table file present (``make table`` not rerun)."""
    tables = [tables_dir / name for name, _, _ in TABLE_FILES if (tables_dir / name).is_file()]
    results = list(runs_dir.rglob("*.json"))
    if not tables or not results:
        return False
    return max(p.stat().st_mtime for p in results) > min(p.stat().st_mtime for p in tables)


def table_sections(tables_dir: Path) -> list[Section]:
    sections = []
    for name, title, always in TABLE_FILES:
        path = tables_dir / name
        anchor = slug(Path(name).stem)
        if path.is_file():
            body = f'<p class="muted">From <code>{html.escape(str(path))}</code>.</p>' + markdown_to_html(
                path.read_text(encoding="utf-8"), heading_offset=2, id_prefix=f"{anchor}-"
            )
        elif always:
            body = f'<p class="note">{html.escape(str(path))} not found: run <code>make table</code> first.</p>'
        else:
            body = f'<p class="muted">{html.escape(name)} is not in {html.escape(str(tables_dir))}: none written.</p>'
        sections.append(Section(anchor, title, body))
    return sections


def figure_section(tables_dir: Path, backbones: list[str]) -> Section:
    pngs = sorted(tables_dir.glob("*.png"), key=figure_key) if tables_dir.is_dir() else []
    if not pngs:
        body = f'<p class="muted">No PNG figures in {html.escape(str(tables_dir))}.</p>'
    else:
        figures = "".join(figure_html(png.read_bytes(), caption_of(png, backbones)) for png in pngs)
        body = f'<div class="figures">{figures}</div>'
    return Section("figures", f"Figures from {tables_dir.name}/ ({len(pngs)})", body)


def build_report(runs_dir: Path, tables_dir: Path, generated: datetime | None = None) -> str:
    """The report's HTML for the result files under ``runs_dir`` and the tables in ``tables_dir``."""
    frame = load_results(runs_dir)
    generated = generated or datetime.now(UTC)
    succeeded = int((frame.status == "success").sum())
    failed = len(frame) - succeeded
    here = git_state()
    charts = bar_charts(frame)
    chart_body = (
        "".join(
            figure_html(
                png,
                f"Test top-1 per task, {title}: bar = mean over seeds, error bar = ± 1 std over seeds, "
                "dots = single seeds.",
                alt=f"Test top-1 per task, {title}",
            )
            for title, png in charts
        )
        or '<p class="muted">No successful runs to plot.</p>'
    )
    sections = [
        *table_sections(tables_dir),
        Section("per-task-accuracy", "Per-task test top-1 with seed intervals", chart_body),
        figure_section(tables_dir, sorted(frame.backbone.dropna().unique())),
        Section(
            "provenance",
            f"Provenance of the {len(frame)} runs",
            "<p>One row per result file (hover a name for its path under the runs folder). <em>Config digest</em>: "
            "the last part of the file name, a hash of the resolved config without its run-time settings (same "
            "digest, same computation). <em>Code version</em>: the commit the run's code was at, and whether the "
            "tree had uncommitted changes (dirty). <em>not recorded</em>: the run file predates that key.</p>"
            + provenance_table(frame, runs_dir),
        ),
    ]
    stale = (
        '<p class="note">Some result files are newer than the tables: run <code>make table</code> (or '
        "<code>make report</code>) again so that the tables match the runs.</p>"
        if stale_tables(runs_dir, tables_dir)
        else ""
    )
    meta = [
        ("Generated", html.escape(generated.strftime("%Y-%m-%d %H:%M:%S %Z").strip())),
        ("Runs folder", f"<code>{html.escape(str(runs_dir))}</code>"),
        ("Tables folder", f"<code>{html.escape(str(tables_dir))}</code>"),
        (
            "Runs",
            f"{len(frame)} result files: {succeeded} successful, "
            + (f'<span class="failed">{failed} failed</span>' if failed else "0 failed"),
        ),
        ("Report code", html.escape(code_version(here))),
    ]
    meta_rows = "".join(f"<tr><th>{key}</th><td>{value}</td></tr>" for key, value in meta)
    legend = (
        '<ul class="legend">'
        "<li>Accuracies are test top-1 in %; <em>mean ± std</em> is over seeds (sample standard deviation); a "
        "group mean or average is shown only when all its tasks are present.</li>"
        "<li>A method row is the adapter, its test-time sampling mode unless <code>mean</code>, and a config "
        "digest in brackets where one method ran under several configurations.</li>"
        "<li>Failed runs are listed but never averaged. Published rows carry their source and protocol.</li>"
        "<li>This file is self-contained: every figure is embedded; nothing is loaded from the network.</li>"
        "</ul>"
    )
    toc = "".join(f'<li><a href="#{s.anchor}">{html.escape(s.title)}</a></li>' for s in sections)
    body = "".join(f'<section id="{s.anchor}"><h2>{html.escape(s.title)}</h2>{s.body}</section>' for s in sections)
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        "<title>pvera_bench results report</title>"
        f"<style>{CSS}</style></head>\n<body>"
        f'<header><h1>pvera_bench results</h1><table class="meta">{meta_rows}</table>{stale}'
        f"<h3>Legend</h3>{legend}<nav><h3>Contents</h3><ul>{toc}</ul></nav></header>\n"
        f"{body}\n<script>{SCRIPT}</script></body></html>\n"
    )


def write_report(runs_dir: Path, tables_dir: Path, out: Path) -> Path:
    """Write the report to ``out`` atomically; returns ``out``."""
    write_atomically(out, build_report(runs_dir, tables_dir).encode("utf-8"))
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=Path, default=Path("results/runs"), help="folder of result JSONs")
    parser.add_argument("--tables", type=Path, default=Path("results/tables"), help="what make table wrote")
    parser.add_argument("--out", type=Path, default=Path("results/report.html"), help="the HTML file to write")
    args = parser.parse_args(argv)
    if not args.runs.is_dir():
        raise UserError(f"{args.runs} does not exist; run some experiments first (see README)")
    print(f"wrote {write_report(args.runs, args.tables, args.out)}")


if __name__ == "__main__":
    run_cli(main)
