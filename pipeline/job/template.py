"""`{column}` templates, parsed when the job is loaded, and why a row cannot be sent.

A template substitutes column names only. `{{` and `}}` are literal braces in the template;
cell text is inserted verbatim, so braces inside cells stay braces. There is no attribute
access, indexing or format spec: `{a.b}` names a column called "a.b". A null cell is
`MissingValue`; input.render adds the other `Unsendable` rows (a bad override, an empty
prompt): error rows, never sent, costing nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pipeline.errors import EmptyPrompt as EmptyPrompt
from pipeline.errors import InvalidValue as InvalidValue
from pipeline.errors import MissingValue as MissingValue
from pipeline.errors import TemplateError as TemplateError
from pipeline.errors import Unsendable as Unsendable


class Template:
    """A parsed `{column}` template: literal text and column names, alternating."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.parts = _parse(text)  # even indexes: literal text; odd indexes: column names
        self.columns: tuple[str, ...] = tuple(self.parts[1::2])

    def render(self, row: Mapping[str, Any]) -> str:
        if not self.columns:
            return self.parts[0]
        pieces = list(self.parts)
        for i in range(1, len(pieces), 2):
            value = row[pieces[i]]
            if value is None:
                raise MissingValue(pieces[i])
            pieces[i] = value if isinstance(value, str) else _cell_text(value)
        return "".join(pieces)

    def __repr__(self) -> str:
        return f"Template({self.text!r})"


def _cell_text(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value)) if abs(value) < 2**53 else repr(value)
    return str(value)


def _parse(text: str) -> list[str]:
    parts: list[str] = []
    literal: list[str] = []
    i, n = 0, len(text)
    while i < n:
        char = text[i]
        if char in "{}" and text[i : i + 2] in ("{{", "}}"):
            literal.append(char)
            i += 2
        elif char == "}":
            raise TemplateError(f"single '}}' at position {i}: write '}}}}' for a literal brace")
        elif char == "{":
            end = text.find("}", i + 1)
            name = text[i + 1 : end] if end != -1 else ""
            if end == -1 or "{" in name:
                raise TemplateError(f"unclosed '{{' at position {i}: write '{{{{' for a brace")
            if not name.strip():
                raise TemplateError(f"empty '{{}}' at position {i}: name a column inside")
            parts += ["".join(literal), name]
            literal = []
            i = end + 1
        else:
            literal.append(char)
            i += 1
    parts.append("".join(literal))
    return parts


def system_templates(system: str | list[dict[str, Any]] | None) -> list[Template]:
    """Templates of the system prompt: one, or one per text block."""
    if system is None:
        return []
    if isinstance(system, str):
        return [Template(system)]
    return [Template(block["text"]) for block in system]
