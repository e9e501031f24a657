"""Row -> request body: the job's templates (job.template) filled from the row, per-row
overrides checked like the job file's fields, empty prompts refused. A row that cannot be
sent raises an `Unsendable` (an error row, never sent)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pipeline.job.checks import Invalid
from pipeline.job.fields import across_fields, cell_value
from pipeline.job.template import EmptyPrompt, InvalidValue, Template, system_templates


class RequestRenderer:
    """Builds the Messages API body for one row from the job's request settings."""

    def __init__(
        self,
        request: Mapping[str, Any],
        prompt: Template,
        system: str | list[dict[str, Any]] | None,
        overrides: Mapping[str, str],
        after: str | None = None,
    ) -> None:
        """`after`: a text block sent after the prompt's (job.prompt_after)."""
        self.base = {k: v for k, v in request.items() if k != "stream"}
        self.prompt = prompt
        self.system = system
        self.system_templates = system_templates(system)
        self.overrides = dict(overrides)
        self.after = after

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
        prompt: str | list[dict[str, Any]] = self._render_prompt(row)
        if self.after is not None:
            prompt = [{"type": "text", "text": prompt}, {"type": "text", "text": self.after}]
        body["messages"] = [{"role": "user", "content": prompt}]
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


def _override_value(field: str, column: str, value: Any) -> Any:
    """The cell as its field's value, by the same check the job file's field gets."""
    try:
        return cell_value(field, value)
    except Invalid as e:
        message = f"column {column!r} holds {value!r}, not a value for {field}: {e}"
        raise InvalidValue(message) from None
