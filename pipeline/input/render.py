"""Row -> request body: `{column}` templates and per-row overrides.

A template substitutes column names only. `{{` and `}}` are literal braces in the template;
cell text is inserted verbatim, so braces inside cells stay braces. There is no attribute
access, indexing or format spec: `{a.b}` names a column called "a.b".
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pipeline.job.checks import Invalid
from pipeline.job.fields import across_fields, cell_value


class TemplateError(ValueError):
    """The template text itself is malformed."""


class Unsendable(Exception):
    """This row cannot become a request: an error row, never sent, costing nothing."""

    error_type = "unsendable"


class MissingValue(Unsendable):
    """A column the templates use is null in this row."""

    error_type = "missing_value"

    def __init__(self, column: str) -> None:
        super().__init__(f"column {column!r} is empty in this row")
        self.column = column


class InvalidValue(Unsendable):
    """A per-row override cell that is not a value of its field (max_tokens = "abc")."""

    error_type = "invalid_value"


class EmptyPrompt(Unsendable):
    """The prompt renders empty or whitespace only: the API refuses such a message, and
    filling it in would alter what the user wrote."""

    error_type = "empty_prompt"


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
        """The request body for `row`; raises an `Unsendable` (MissingValue, InvalidValue,
        EmptyPrompt) for a row that cannot be sent."""
        body = dict(self.base)
        if self.system is not None:
            body["system"] = self._render_system(row)
        applied = []
        for field, column in self.overrides.items():  # after the system: it may be one
            value = row[column]
            if value is not None:  # a null override falls back to the job's value
                body[field] = _override_value(field, column, value)
                applied.append(repr(column))
        broken = across_fields(body)
        if broken is not None:  # the job passed this rule: an override broke it
            raise InvalidValue(
                f"{broken[0]} {broken[1]} with this row's [overrides] ({', '.join(applied)})"
            )
        body["messages"] = [{"role": "user", "content": self._render_prompt(row)}]
        return body

    def _render_prompt(self, row: Mapping[str, Any]) -> str:
        text = self.prompt.render(row)
        if not text.strip():  # sent exactly as rendered otherwise: never stripped
            raise EmptyPrompt(_empty_prompt_message(self.prompt.columns))
        return text

    def _render_system(self, row: Mapping[str, Any]) -> str | list[dict[str, Any]]:
        if isinstance(self.system, str):
            return self.system_templates[0].render(row)
        assert self.system is not None
        blocks = []
        pairs = zip(self.system, self.system_templates, strict=True)
        for number, (block, template) in enumerate(pairs, 1):
            text = template.render(row)
            if not text.strip():  # the API refuses an empty text block; a string may be ""
                raise EmptyPrompt(_empty_prompt_message(template.columns, f"system block {number}"))
            blocks.append({**block, "text": text})
        return blocks


def _empty_prompt_message(columns: tuple[str, ...], what: str = "the prompt") -> str:
    names = ", ".join(repr(c) for c in dict.fromkeys(columns))
    plural = "s" if len(set(columns)) > 1 else ""
    where = f" (column{plural} {names}: empty or only whitespace)" if columns else ""
    return f"{what} is empty in this row{where}; the API refuses an empty message"


def system_templates(system: str | list[dict[str, Any]] | None) -> list[Template]:
    """Templates of the system prompt: one, or one per text block."""
    if system is None:
        return []
    if isinstance(system, str):
        return [Template(system)]
    return [Template(block["text"]) for block in system]


def _override_value(field: str, column: str, value: Any) -> Any:
    """The cell as its field's value, by the same check the job file's field gets."""
    try:
        return cell_value(field, value)
    except Invalid as e:
        message = f"column {column!r} holds {value!r}, not a value for {field}: {e}"
        raise InvalidValue(message) from None
