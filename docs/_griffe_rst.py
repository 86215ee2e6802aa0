"""Griffe extension: two reStructuredText constructs in docstrings are rewritten for Markdown.

A paragraph ending in ``::`` introduces an indented literal block in reST; Markdown already
reads the indented block as code, so the marker becomes a single ``:``.

A simple table is a rule of ``=`` runs separated by spaces, rows whose columns start where the
runs start, and a closing rule (a header, if any, is closed by a rule too)::

    =====  =====
    torch  ours
    =====  =====

Markdown has no such tables, so MkDocs would print the rules and run the rows together.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

RULE = re.compile(r"^( *)(=+(?: +=+)+) *$")
LITERAL_MARKER = re.compile(r"(?<=\S)::$", re.MULTILINE)


def _columns(rule: str) -> list[tuple[int, int]]:
    return [(match.start(), match.end()) for match in re.finditer(r"=+", rule)]


def _cells(line: str, columns: list[tuple[int, int]]) -> list[str]:
    starts = [start for start, _ in columns] + [None]
    return [line[start:end].strip().replace("|", r"\|") for start, end in zip(starts, starts[1:])]


def _rows_until_rule(lines: list[str], index: int) -> tuple[list[str], int]:
    """The lines from ``index`` up to the next rule, and the index after that rule."""
    rows = []
    while index < len(lines) and not RULE.match(lines[index]):
        rows.append(lines[index])
        index += 1
    return rows, index + 1


def _header_follows(lines: list[str], index: int) -> bool:
    """Whether rows and then a rule, with no blank line, follow ``index`` (the rule closing a
    header was just read)."""
    end = index
    while end < len(lines) and lines[end].strip() and not RULE.match(lines[end]):
        end += 1
    return end > index and end < len(lines) and bool(RULE.match(lines[end]))


def markdown_tables(text: str) -> str:
    """``text`` with each simple table replaced by a Markdown table (a table without a header
    gets an empty header row, which Markdown requires)."""
    lines, out, index = text.split("\n"), [], 0
    while index < len(lines):
        if not RULE.match(lines[index]):
            out.append(lines[index])
            index += 1
            continue
        columns = _columns(lines[index])
        header = [""] * len(columns)
        rows, index = _rows_until_rule(lines, index + 1)
        if _header_follows(lines, index):
            header = _cells(rows[0], columns)
            rows, index = _rows_until_rule(lines, index)
        out.append("| " + " | ".join(header) + " |")
        out.append("|" + "---|" * len(columns))
        out += ["| " + " | ".join(_cells(row, columns)) + " |" for row in rows if row.strip()]
    return "\n".join(out)


def markdown_literal_markers(text: str) -> str:
    """``text`` with each reST literal-block marker ``word::`` at a line's end as ``word:``."""
    return LITERAL_MARKER.sub(":", text)


class RstForMarkdown(griffe.Extension):
    """Rewrites every docstring's simple tables and literal-block markers for Markdown."""

    def on_object(self, *, obj: griffe.Object, loader: Any, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = markdown_literal_markers(markdown_tables(obj.docstring.value))
