"""Row -> request body: `{column}` templates and per-row overrides.

A template substitutes column names only. `{{` and `}}` are literal braces in the template;
cell text is inserted verbatim, so braces inside cells stay braces. There is no attribute
access, indexing or format spec: `{a.b}` names a column called "a.b".
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class TemplateError(ValueError):
    """The template text itself is malformed."""


class MissingValue(Exception):
    """A column the templates use is null in this row."""

    def __init__(self, column: str) -> None:
        super().__init__(f"column {column!r} is empty in this row")
        self.column = column


class InvalidValue(Exception):
    """A per-row override cell that is not a value of its field (max_tokens = "abc")."""


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


class RequestRenderer:
    """Builds the Messages API body for one row from the job's request settings."""

    def __init__(
        self,
        request: Mapping[str, Any],
        prompt: Template,
        system: str | list[dict[str, Any]] | None,
        overrides: Mapping[str, str],
    ) -> None:
        self.base = {k: v for k, v in request.items() if k != "stream"}
        self.prompt = prompt
        self.system = system
        self.system_templates = system_templates(system)
        self.overrides = dict(overrides)

    def render(self, row: Mapping[str, Any]) -> dict[str, Any]:
        """The request body for `row`; raises MissingValue for a null template cell."""
        body = dict(self.base)
        if self.system is not None:
            body["system"] = self._render_system(row)
        for field, column in self.overrides.items():  # after the system: it may be one
            value = row[column]
            if value is not None:  # a null override falls back to the job's value
                try:
                    body[field] = _override_value(field, value)
                except (TypeError, ValueError):
                    raise InvalidValue(
                        f"column {column!r} holds {value!r}, not a value for {field}"
                    ) from None
        body["messages"] = [{"role": "user", "content": self.prompt.render(row)}]
        return body

    def _render_system(self, row: Mapping[str, Any]) -> str | list[dict[str, Any]]:
        if isinstance(self.system, str):
            return self.system_templates[0].render(row)
        assert self.system is not None
        return [
            {**block, "text": template.render(row)}
            for block, template in zip(self.system, self.system_templates, strict=True)
        ]


def system_templates(system: str | list[dict[str, Any]] | None) -> list[Template]:
    """Templates of the system prompt: one, or one per text block."""
    if system is None:
        return []
    if isinstance(system, str):
        return [Template(system)]
    return [Template(block["text"]) for block in system]


def _override_value(field: str, value: Any) -> Any:
    if field in ("max_tokens", "top_k"):
        number = float(value)
        if not number.is_integer() or number < (1 if field == "max_tokens" else 0):
            raise ValueError(value)
        return int(number)
    if field in ("temperature", "top_p"):
        number = float(value)
        if not 0.0 <= number <= 1.0:  # also refuses NaN
            raise ValueError(value)
        return number
    return str(value)
