"""The report's document builder: `_Doc` collects headings, paragraphs, tables and figures and
renders them to both markdown and HTML, with a table of contents (the same anchor ids in both).

Also the pieces it renders with: `inline_html` (markdown `code` and **bold** in HTML), anchor
slugs, captions cut for the contents, and the HTML page's stylesheet (`_CSS`).
Imports: `_tables` (markdown / HTML tables) and massact.dataset (atomic writes) only.
"""

from __future__ import annotations

import base64
import html
import re
from typing import TYPE_CHECKING

from ..dataset import atomic_write_bytes
from ._tables import html_table, markdown_table

if TYPE_CHECKING:
    from pathlib import Path

    import pandas as pd


_CODE = re.compile(r"`([^`]+)`")
_BOLD = re.compile(r"\*\*(.+?)\*\*")


def inline_html(text: str) -> str:
    """Markdown inline text as HTML: escaped, `code` and **bold** rendered (no raw backticks)."""
    out = html.escape(text)
    out = _CODE.sub(lambda m: f"<code>{m.group(1)}</code>", out)
    return _BOLD.sub(lambda m: f"<b>{m.group(1)}</b>", out)


def _slug(text: str) -> str:
    words = re.sub(r"[^0-9a-z]+", "-", text.lower()).strip("-")
    return words[:60].rstrip("-") or "section"


class _Doc:
    """A report as blocks, rendered to both markdown and HTML, with a table of contents: every
    heading, table and figure gets an anchor (the same id in both) and an entry."""

    def __init__(self) -> None:
        self.md: list[str] = []
        self.html: list[str] = []
        self.entries: list[tuple[int, str, str]] = []  # (level, text, anchor)
        self._anchors: set[str] = set()
        self._toc_at: int | None = None
        self._level = 1

    def anchor(self, text: str) -> str:
        base = _slug(text)
        name, n = base, 2
        while name in self._anchors:
            name, n = f"{base}-{n}", n + 1
        self._anchors.add(name)
        return name

    def heading(self, text: str, level: int = 2) -> None:
        aid = self.anchor(text)
        if level > 1:
            self.entries.append((level, text, aid))
            self._level = level
        self.md.append(f'<a id="{aid}"></a>\n\n' + "#" * level + " " + text)
        self.html.append(f'<h{level} id="{aid}">{html.escape(text)}</h{level}>')

    def contents(self) -> None:
        """Where the table of contents goes (filled in by `render`)."""
        self._toc_at = len(self.md)
        self.md.append("")
        self.html.append("")

    def para(self, text: str) -> None:
        self.md.append(text)
        self.html.append(f"<p>{inline_html(text)}</p>")

    def bullets(self, items: list[str]) -> None:
        self.md.append("\n".join(f"- {n}" for n in items))
        self.html.append("<ul>" + "".join(f"<li>{inline_html(n)}</li>" for n in items) + "</ul>")

    def table(
        self, frame: pd.DataFrame, caption: str, *, floatfmt=".4f", bold=None, csv: Path = None
    ) -> None:
        aid = self.anchor(caption.split(".")[0] if caption.startswith("Table") else caption)
        self.entries.append((self._level + 1, _short(caption), aid))
        self.md.append(
            f'<a id="{aid}"></a>\n\n**{caption}**\n\n'
            + markdown_table(frame, floatfmt=floatfmt, bold=bold)
        )
        self.html.append(
            f'<p id="{aid}"><b>{inline_html(caption)}</b></p>'
            + html_table(frame, floatfmt=floatfmt, bold=bold)
        )
        if csv is not None:
            atomic_write_bytes(csv, frame.to_csv().encode())

    def figure(self, path: Path, caption: str, root: Path) -> None:
        aid = self.anchor("figure " + path.stem)
        self.entries.append((self._level + 1, _short(caption), aid))
        rel = path.relative_to(root).as_posix()
        self.md.append(f'<a id="{aid}"></a>\n\n![{caption}]({rel})\n\n*{caption}*')
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        self.html.append(
            f'<figure id="{aid}"><img src="data:image/png;base64,{data}" '
            f'alt="{html.escape(caption)}"><figcaption>{inline_html(caption)}</figcaption></figure>'
        )

    def render(self) -> tuple[str, str]:
        """(markdown, HTML body) with the table of contents in place."""
        md, body = list(self.md), list(self.html)
        if self._toc_at is not None:
            top = min((lv for lv, _, _ in self.entries), default=2)
            md[self._toc_at] = "## Contents\n\n" + "\n".join(
                "  " * (lv - top) + f"- [{text}](#{aid})" for lv, text, aid in self.entries
            )
            items, depth = [], 0  # nested lists: a deeper entry opens a list in its parent's <li>
            for lv, text, aid in self.entries:
                want = lv - top + 1
                if want > depth:
                    items.append("<ul><li>" * (want - depth))
                else:
                    items.append("</li></ul>" * (depth - want) + "</li><li>")
                depth = want
                items.append(f'<a href="#{aid}">{inline_html(text)}</a>')
            items.append("</li></ul>" * depth)
            body[self._toc_at] = '<nav id="contents"><h2>Contents</h2>' + "".join(items) + "</nav>"
        return "\n\n".join(md) + "\n", "\n".join(body)


def _short(caption: str, width: int = 90) -> str:
    """A caption cut to `width` characters at a word, for the table of contents."""
    text = caption.rstrip(".")
    if len(text) <= width:
        return text
    return text[: width - 3].rsplit(" ", 1)[0].rstrip(",;:") + "..."


_CSS = (
    "body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
    "table{border-collapse:collapse;margin:0.5em 0 1.5em}td,th{border:1px solid #bbb;"
    "padding:3px 8px;text-align:right}img{max-width:100%}figure{margin:1em 0 2em}"
    "pre{background:#f4f4f4;padding:1em;overflow-x:auto}"
)
