"""The one renderer: a table file's content as a :class:`Document` of headings, paragraphs, bullet lists and
tables (pandas DataFrames of display strings), written as Markdown with pandas' ``to_markdown`` and as HTML with
pandas' Styler inside the report's Jinja2 template; LaTeX tables with ``Styler.to_latex`` (booktabs rules).

Every number a table shows is formatted by :func:`number`.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from markupsafe import Markup

from pvera_bench.core.files import write_atomically

NUMERIC_CELL = re.compile(r"^[-+−]?\d[\d,]*(\.\d+)?\s*(%|± ?[-+]?\d[\d,]*(\.\d+)?|[–-]\d+)?( \[.*\])?( \(n=\d+\))?$")


def number(value: float | int | None, digits: int = 1, missing: str = "") -> str:
    """A number for a table cell with ``digits`` decimals; ``missing`` for None or NaN."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return missing
    return f"{value:.{digits}f}"


@dataclass
class Block:
    """One piece of a document: ``heading`` (with a ``level``), ``text`` (a paragraph), ``bullets`` or ``table``."""

    kind: str
    text: str = ""
    level: int = 2
    items: list[str] = field(default_factory=list)
    frame: pd.DataFrame | None = None

    def html_table(self) -> Markup:
        """The table as HTML (pandas Styler), numeric cells right-aligned; cells are escaped."""
        numeric = self.frame.map(lambda cell: "num" if NUMERIC_CELL.match(str(cell)) else "")
        uuid = hashlib.sha256(self.frame.to_csv().encode()).hexdigest()[:8]  # the same page for the same tables
        styler = self.frame.style.set_uuid(uuid).hide(axis="index").set_td_classes(numeric).format(escape="html")
        return Markup(styler.to_html(table_attributes='class="data"'))


@dataclass
class Document:
    """A table file's content, built once and rendered as Markdown and as a section of the HTML report."""

    title: str
    blocks: list[Block] = field(default_factory=list)

    def heading(self, text: str, level: int = 2) -> Document:
        self.blocks.append(Block("heading", text, level=level))
        return self

    def text(self, text: str) -> Document:
        self.blocks.append(Block("text", text))
        return self

    def bullets(self, items: list[str]) -> Document:
        self.blocks.append(Block("bullets", items=list(items)))
        return self

    def table(self, frame: pd.DataFrame) -> Document:
        self.blocks.append(Block("table", frame=frame.astype(str)))
        return self

    def markdown(self) -> str:
        parts = [f"# {self.title}"]
        for block in self.blocks:
            if block.kind == "heading":
                parts.append(f"{'#' * block.level} {block.text}")
            elif block.kind == "text":
                parts.append(block.text)
            elif block.kind == "bullets":
                parts.append("\n".join(f"- {item}" for item in block.items))
            else:
                parts.append(block.frame.to_markdown(index=False, disable_numparse=True))
        return "\n\n".join(parts) + "\n"


def latex_table(frame: pd.DataFrame, comment: str) -> str:
    """A booktabs ``tabular`` of display strings (escaped for LaTeX), after a ``% comment`` line."""
    styler = frame.astype(str).style.hide(axis="index").format(escape="latex")
    return f"% {comment}\n" + styler.to_latex(hrules=True, column_format="l" + "r" * (frame.shape[1] - 1))


@dataclass
class Figure:
    """A PNG the tables wrote, and what it shows."""

    path: Path
    caption: str


@dataclass
class Output:
    """What a table writer wrote into its folder: the files, the documents they render, and the figures."""

    out_dir: Path
    paths: list[Path] = field(default_factory=list)
    documents: dict[str, Document] = field(default_factory=dict)
    figures: list[Figure] = field(default_factory=list)

    def path(self, name: str) -> Path:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.paths.append(self.out_dir / name)
        return self.paths[-1]

    def document(self, name: str, document: Document) -> None:
        """``<name>.md``, the document as Markdown."""
        write_atomically(self.path(f"{name}.md"), document.markdown())
        self.documents[name] = document

    def csv(self, name: str, frame: pd.DataFrame) -> None:
        write_atomically(self.path(name), frame.to_csv(index=False))

    def text(self, name: str, text: str) -> None:
        write_atomically(self.path(name), text)

    def figure(self, name: str, caption: str) -> Path:
        """The path to draw a PNG at, recorded with its caption."""
        path = self.path(name)
        self.figures.append(Figure(path, caption))
        return path
