"""The API key never leaves through what a server sends back.

A hostile or buggy server can echo the key anywhere: an error's type or message, the
`request-id` header, the answer's model, its text, a tool call's input, a redirect's
`Location`. Every such string reaches the output directory, stderr or a report, so the
client scrubs the key (as written, JSON-escaped, or percent-encoded) from the raw body and
headers before anything parses them, and again from every parsed string, since a JSON
`\\u` escape or text split across stream events can spell it only after parsing.

Only a key of MIN_SECRET characters or more is scrubbed: a shorter one ("none", "k") is
no secret and is ordinary text, which scrubbing would mangle ("none of the above" became
"[key] of the above", and a raw body its JSON). The key read from the environment is
refused at start below that length (run.plan.api_key_from_env): none goes unscrubbed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any
from urllib.parse import quote

import orjson

from pipeline.providers.base import Answer

MARK = "[key]"
MIN_SECRET = 8  # characters: a real key has dozens


class Scrubber:
    def __init__(self, secret: str | None) -> None:
        spellings = set()
        if secret and len(secret) >= MIN_SECRET:  # as written, as JSON and a URL write it
            spellings = {secret, orjson.dumps(secret).decode()[1:-1], quote(secret, safe="")}
        self._texts = sorted(spellings, key=len, reverse=True)  # the longest first
        self._raw = [s.encode() for s in self._texts]

    def text(self, text: str) -> str:
        for spelling in self._texts:
            if spelling in text:
                text = text.replace(spelling, MARK)
        return text

    def optional(self, text: str | None) -> str | None:
        return None if text is None else self.text(text)

    def raw(self, data: bytes) -> bytes:
        for spelling in self._raw:
            if spelling in data:
                data = data.replace(spelling, MARK.encode())
        return data

    def headers(self, headers: Mapping[str, str]) -> dict[str, str]:
        # One search of all the values joined finds any spelling a value holds (a match
        # across two of them is a false alarm, which only costs the value-by-value pass).
        joined = "\n".join(headers.values())
        if not any(spelling in joined for spelling in self._texts):
            return dict(headers)
        return {name: self.text(value) for name, value in headers.items()}

    def value(self, value: Any) -> Any:
        """A parsed JSON value with the key scrubbed from every string, keys included."""
        if not self._texts:
            return value
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, list):
            return [self.value(item) for item in value]
        if isinstance(value, dict):
            return {self.text(str(k)): self.value(v) for k, v in value.items()}
        return value

    def answer(self, answer: Answer) -> Answer:
        if not self._texts or not self._in_answer(answer):
            return answer
        return replace(
            answer,
            text=self.text(answer.text),
            content_json=self.text(answer.content_json),
            stop_reason=self.optional(answer.stop_reason),
            model=self.optional(answer.model),
            content=self.value(answer.content),
        )

    def _in_answer(self, answer: Answer) -> bool:
        """Whether a spelling of the key is in any of the answer's strings. `content_json`
        is orjson's writing of `content`, which escapes a string a character at a time: a
        content string (or key) holding the key holds its JSON spelling there."""
        joined = "\n".join(  # as in `headers`: one search a spelling
            (answer.text, answer.content_json, answer.stop_reason or "", answer.model or "")
        )
        return any(spelling in joined for spelling in self._texts)
