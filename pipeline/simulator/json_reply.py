"""The answer to a prompt that asks for JSON: one object holding the keys the prompt names
(see json_fields), each a value of its guessed type, so that a `kind = "json"` job run on
the simulator gets answers its extraction takes.

A key with choices ("positive|negative|neutral", or the choices the prompt names elsewhere)
is a label, chosen by the model's Judge like a choice prompt's answer (so models differ in
skill here too); other values are plausible draws from the request's hash.
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass, replace
from typing import Any

import orjson

from pipeline.simulator.json_fields import FieldGuess, keys_in, mentions_json
from pipeline.simulator.lexicon import VOCABULARY
from pipeline.simulator.profiles import Judge
from pipeline.simulator.sentiment import find_choices

# Without named keys, JSON counts as asked for only in words like these ("reply in JSON",
# "as a JSON object"): a review that mentions JSON does not turn a label into an object.
ASKED = re.compile(
    r"\b(?:in|as|return|output|reply|respond|answer|format(?:ted)?|give|provide|produce|"
    r"emit|valid|only)\b\W+(?:\w+\W+){0,3}?json\b|\bjson\s+(?:object|format|only)\b",
    re.I,
)
DEFAULT_KEY = "answer"
SENTIMENTS = ("positive", "negative", "neutral")


@dataclass(frozen=True, slots=True)
class JsonAsk:
    fields: tuple[FieldGuess, ...]
    subject: str  # the text the answer is about: the prompt without what asked for the keys


def json_ask(user_text: str, system_text: str = "") -> JsonAsk | None:
    """What the prompt wants when it asks for JSON (the user message or the system prompt
    mentions it); None when it does not."""
    if not (mentions_json(user_text) or mentions_json(system_text)):
        return None
    subject, found = user_text, keys_in(user_text)
    if found is not None:
        start, end = found.span
        subject = user_text[:start] + user_text[end:]
    else:
        found = keys_in(system_text)
    if found is None:
        if ASKED.search(user_text) is None and ASKED.search(system_text) is None:
            return None
        return _with_choices((FieldGuess(DEFAULT_KEY),), subject)
    return _with_choices(found.fields, subject)


def _with_choices(fields: tuple[FieldGuess, ...], subject: str) -> JsonAsk:
    """The choices the rest of the prompt names go to the string key without choices of
    its own that the choice line names, else to the first one."""
    named = find_choices(subject)
    open_keys = [f for f in fields if f.kind == "string" and not f.options]
    if named is None or not open_keys:
        return JsonAsk(fields, subject)
    choices, rest = named
    line = next((x for x in subject.splitlines() if x not in rest.splitlines()), "").lower()
    target = next((f for f in open_keys if f.name.lower() in line), open_keys[0])
    fields = tuple(replace(f, options=tuple(choices)) if f is target else f for f in fields)
    return JsonAsk(fields, rest)


def json_answer(ask: JsonAsk, judge: Judge, rng: random.Random) -> str:
    """The object as compact JSON text: each key's value in the prompt's order."""
    subject = ask.subject.strip()
    return orjson.dumps({f.name: _value(f, subject, judge, rng) for f in ask.fields}).decode()


def _value(field: FieldGuess, subject: str, judge: Judge, rng: random.Random) -> Any:
    if field.options:
        return judge.label(subject, list(field.options))
    if field.kind == "string" and "sentiment" in field.name.lower():  # what such a key holds
        return judge.label(subject, list(SENTIMENTS))
    if field.kind == "integer":
        low, high = field.low if field.low is not None else 0, field.high or 100
        low, high = math.ceil(low), math.floor(high)
        return rng.randint(low, high) if low <= high else low
    if field.kind == "number":
        low, high = field.low if field.low is not None else 0.0, field.high or 1.0
        return round(rng.uniform(low, high), 2)
    if field.kind == "boolean":
        return rng.random() < 0.5
    if field.kind == "array":
        return [_words(rng) for _ in range(rng.randint(1, 3))]
    if field.kind == "object":
        return {"text": _words(rng)}
    return _words(rng)


def _words(rng: random.Random) -> str:
    return " ".join(rng.choices(VOCABULARY, k=rng.randint(1, 6)))
