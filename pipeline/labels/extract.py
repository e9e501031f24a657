"""How an answer becomes label columns: `text` (the answer itself), `choice`, or typed
fields from a JSON object (`json`) or a forced tool call (`tool`, see structured.py).

A `choice` answer is matched leniently (case, surrounding whitespace and punctuation
ignored; an unambiguous prefix, or exactly one choice found as a whole word) and otherwise
marked `invalid` with the reason. Invalid labels keep their paid answer: nothing is re-sent.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from pipeline.job.model import ExtractSpec
from pipeline.labels.structured import column_type, field_values, object_in_text, tool_input

_STRIP = string.whitespace + string.punctuation + "\u201c\u201d\u2018\u2019\u00ab\u00bb\u2026"


@dataclass(slots=True)
class Label:
    value: str | None
    status: str  # "ok" | "invalid"
    error: str | None = None


class Extractor:
    def __init__(self, spec: ExtractSpec) -> None:
        self.spec = spec
        self.column = spec.column
        self._choices = {choice.strip(_STRIP).lower(): choice for choice in spec.choices}
        self._words = {key: re.compile(rf"(?<!\w){re.escape(key)}(?!\w)") for key in self._choices}

    def fields(self) -> list[pa.Field]:
        """The label columns this extraction adds, before label_status and label_error."""
        if self.spec.kind in ("json", "tool"):
            return [pa.field(n, column_type(t)) for n, t in self.spec.fields.items()]
        return [pa.field(self.column, pa.string())]

    def record(self, text: str, content: list[Any]) -> dict[str, Any]:
        """The label columns of one answer: values, label_status and label_error."""
        if self.spec.kind not in ("json", "tool"):
            label = self.extract(text)
            return {
                self.column: label.value,
                "label_status": label.status,
                "label_error": label.error,
            }
        try:
            found = (
                tool_input(content, str(self.spec.tool))
                if self.spec.kind == "tool"
                else object_in_text(text)
            )
        except ValueError as e:  # no object at all: every field is null
            return {
                **dict.fromkeys(self.spec.fields),
                "label_status": "invalid",
                "label_error": str(e),
            }
        # A bad field makes the label invalid, but the good fields keep their values.
        typed = field_values(found, self.spec.fields)
        error = "; ".join(typed.errors) or None
        return {**typed.values, "label_status": "invalid" if error else "ok", "label_error": error}

    def extract(self, text: str) -> Label:
        if self.spec.kind == "choice":
            return self._choice(text)
        stripped = text.strip()
        if not stripped:
            return Label(None, "invalid", "empty answer")
        return Label(stripped, "ok")

    def _choice(self, text: str) -> Label:
        answer = text.strip(_STRIP).lower()
        if not answer:
            return Label(None, "invalid", "empty answer")
        if answer in self._choices:
            return Label(self._choices[answer], "ok")
        prefixed = [key for key in self._choices if key.startswith(answer)]
        if len(prefixed) == 1:
            return Label(self._choices[prefixed[0]], "ok")
        shown = text.strip()[:80]
        if prefixed:
            names = ", ".join(self._choices[k] for k in prefixed)
            return Label(
                None, "invalid", f"answer is a prefix of several choices ({names}): {shown!r}"
            )
        found = [key for key, word in self._words.items() if word.search(answer)]
        # "very good" found means "good" was found inside it: the longer choice is meant.
        found = [
            key
            for key in found
            if not any(key != other and self._words[key].search(other) for other in found)
        ]
        if len(found) == 1:
            return Label(self._choices[found[0]], "ok")
        if found:
            names = ", ".join(self._choices[k] for k in found)
            return Label(None, "invalid", f"answer names several choices ({names}): {shown!r}")
        return Label(None, "invalid", f"answer is none of the choices: {shown!r}")
