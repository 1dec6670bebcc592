"""A report as a list of blocks, written once as Markdown and once as self-contained HTML.

Text may use two inline Markdown forms, ```code``` and ``**bold**``; the HTML writer converts
them and escapes everything else. Images are referenced by file name in Markdown and inlined
as base64 ``data:`` URIs in HTML, so ``report.html`` can be mailed on its own.
"""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Heading:
    """A section title (level 1–3)."""

    level: int
    text: str


@dataclass(frozen=True)
class Paragraph:
    """A paragraph of text."""

    text: str


@dataclass(frozen=True)
class Note:
    """A remark set apart (a skipped figure, a stand-in run)."""

    text: str


@dataclass(frozen=True)
class Image:
    """A PNG in the report's directory."""

    path: Path
    alt: str


@dataclass(frozen=True)
class Table:
    """A table of text cells."""

    header: list[str]
    rows: list[list[str]]


Block = Heading | Paragraph | Note | Image | Table


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def to_markdown(blocks: list[Block]) -> str:
    """Render blocks as GitHub-flavoured Markdown."""
    out: list[str] = []
    for block in blocks:
        if isinstance(block, Heading):
            out.append("#" * block.level + " " + block.text)
        elif isinstance(block, Paragraph):
            out.append(block.text)
        elif isinstance(block, Note):
            out.append("> " + block.text)
        elif isinstance(block, Image):
            out.append(f"![{block.alt}]({block.path.name})")
        else:
            lines = [
                "| " + " | ".join(_md_cell(h) for h in block.header) + " |",
                "|" + "---|" * len(block.header),
            ]
            lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in block.rows]
            out.append("\n".join(lines))
    return "\n\n".join(out) + "\n"


def _inline_html(text: str) -> str:
    escaped = html.escape(text, quote=False)
    escaped = re.sub(r"`([^`]+)`", r"<code>\1</code>", escaped)
    return re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", escaped)


_STYLE = """
body { font-family: -apple-system, Segoe UI, Helvetica, Arial, sans-serif; max-width: 70rem;
       margin: 2rem auto; padding: 0 1rem; color: #222; line-height: 1.45; }
img { max-width: 100%; border: 1px solid #ddd; }
table { border-collapse: collapse; font-size: 0.85rem; margin: 1rem 0; }
th, td { border: 1px solid #ccc; padding: 0.3rem 0.5rem; vertical-align: top; text-align: left; }
th { background: #f3f3f3; }
blockquote { margin: 0.5rem 0; padding: 0.3rem 0.8rem; border-left: 4px solid #d9a400; background: #fffbea; }
code { background: #f3f3f3; padding: 0 0.2rem; }
td.holds { background: #e6f4e6; } td.fails { background: #fbe4e4; } td.nodata { background: #f0f0f0; }
td.unsure { background: #fff4d6; }
"""


def _cell_class(text: str) -> str:
    if text.startswith("holds"):
        return ' class="holds"'
    if "does not hold" in text:
        return ' class="fails"'
    if text.startswith("inconclusive"):
        return ' class="unsure"'
    if text.startswith("no data"):
        return ' class="nodata"'
    return ""


def to_html(blocks: list[Block], title: str) -> str:
    """Render blocks as one HTML page with every image inlined (base64 PNG)."""
    body: list[str] = []
    for block in blocks:
        if isinstance(block, Heading):
            body.append(f"<h{block.level}>{_inline_html(block.text)}</h{block.level}>")
        elif isinstance(block, Paragraph):
            body.append(f"<p>{_inline_html(block.text)}</p>")
        elif isinstance(block, Note):
            body.append(f"<blockquote>{_inline_html(block.text)}</blockquote>")
        elif isinstance(block, Image):
            data = base64.b64encode(block.path.read_bytes()).decode("ascii")
            body.append(f'<p><img alt="{html.escape(block.alt)}" src="data:image/png;base64,{data}"></p>')
        else:
            head = "".join(f"<th>{_inline_html(h)}</th>" for h in block.header)
            rows = "".join(
                "<tr>" + "".join(f"<td{_cell_class(c)}>{_inline_html(c)}</td>" for c in row) + "</tr>"
                for row in block.rows
            )
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n<style>{_STYLE}</style>\n</head>\n<body>\n"
        + "\n".join(body)
        + "\n</body>\n</html>\n"
    )
