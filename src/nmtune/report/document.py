"""The report as a list of blocks, and its two renderings: self-contained HTML and Markdown.

A block (:class:`Heading`, :class:`Paragraph`, :class:`Bullets`, :class:`Table`,
:class:`Image`) renders itself both ways, so the two documents always say the same thing.
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass

import pandas as pd


def _markdown_cell(value) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


@dataclass(frozen=True)
class Heading:
    """A section heading (``level`` 1 is the title)."""

    text: str
    level: int = 2

    def to_markdown(self, figure_dir: str) -> str:
        return f"{'#' * self.level} {self.text}"

    def to_html(self) -> str:
        return f"<h{self.level}>{html.escape(self.text)}</h{self.level}>"


@dataclass(frozen=True)
class Paragraph:
    """A paragraph of plain text."""

    text: str

    def to_markdown(self, figure_dir: str) -> str:
        return self.text

    def to_html(self) -> str:
        return f"<p>{html.escape(self.text)}</p>"


@dataclass(frozen=True)
class Bullets:
    """A bulleted list of plain-text items."""

    items: list[str]

    def to_markdown(self, figure_dir: str) -> str:
        return "\n".join(f"- {_markdown_cell(item)}" for item in self.items)

    def to_html(self) -> str:
        return "<ul>" + "".join(f"<li>{html.escape(i)}</li>" for i in self.items) + "</ul>"


@dataclass(frozen=True)
class Table:
    """A table; a ``verdict`` column gets one colour per verdict in HTML."""

    frame: pd.DataFrame

    def to_markdown(self, figure_dir: str) -> str:
        rows = [[_markdown_cell(c) for c in self.frame.columns]]
        rows += [[_markdown_cell(v) for v in row] for row in self.frame.itertuples(index=False)]
        lines = ["| " + " | ".join(r) + " |" for r in rows]
        lines.insert(1, "|" + "---|" * len(self.frame.columns))
        return "\n".join(lines)

    def to_html(self) -> str:
        columns = list(self.frame.columns)
        head = "".join(f"<th>{html.escape(str(c))}</th>" for c in columns)
        body = []
        for row in self.frame.itertuples(index=False):
            cells = []
            for column, value in zip(columns, row, strict=True):
                # Verdict cells get a colour class: the eye finds the outcome first.
                css = _verdict_class(str(value)) if column == "verdict" else ""
                cells.append(f"<td{css}>{html.escape(str(value))}</td>")
            body.append(f"<tr>{''.join(cells)}</tr>")
        return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


@dataclass(frozen=True)
class Image:
    """A PNG figure: ``figures/<name>.png`` in Markdown, embedded as base64 in HTML."""

    name: str
    png: bytes
    caption: str

    def to_markdown(self, figure_dir: str) -> str:
        return f"![{self.caption}]({figure_dir}/{self.name}.png)\n\n*{self.caption}*"

    def to_html(self) -> str:
        data = base64.b64encode(self.png).decode("ascii")
        return (
            f'<figure><img alt="{html.escape(self.name)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{html.escape(self.caption)}</figcaption></figure>"
        )


_CSS = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; color: #222;
       line-height: 1.45; padding: 0 1em; }
h1 { border-bottom: 2px solid #ddd; padding-bottom: .3em; }
table { border-collapse: collapse; margin: .8em 0 1.5em; font-size: .88em; }
th, td { border: 1px solid #ddd; padding: .3em .6em; text-align: left; vertical-align: top; }
th { background: #f4f4f4; }
tr:nth-child(even) td { background: #fafafa; }
figure { margin: 1em 0 2em; } figure img { max-width: 100%; }
figcaption { color: #555; font-size: .9em; }
.verdict-reproduced { color: #11691f; font-weight: bold; }
.verdict-contradicted { color: #a11; font-weight: bold; }
.verdict-no-effect { color: #1f4f91; font-weight: bold; }
.verdict-underpowered { color: #a66800; font-weight: bold; }
.verdict-not-testable { color: #666; font-weight: bold; }
"""
#: Verdicts with a colour; a verdict cell may say more after them ("underpowered: 6 seeds...").
_VERDICT_CLASSES = ("reproduced", "contradicted", "no effect", "underpowered", "not testable")


def _verdict_class(text: str) -> str:
    verdict = next((v for v in _VERDICT_CLASSES if text.startswith(v)), None)
    return f' class="verdict-{verdict.replace(" ", "-")}"' if verdict else ""


def render_markdown(blocks: list, figure_dir: str) -> str:
    """The blocks as one Markdown document; images link into ``figure_dir``."""
    return "\n\n".join(block.to_markdown(figure_dir) for block in blocks) + "\n"


def render_html(blocks: list, title: str) -> str:
    """The blocks as one self-contained HTML page (inline CSS, embedded images)."""
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head>\n<body>\n"
        + "\n".join(block.to_html() for block in blocks)
        + "\n</body></html>\n"
    )
