"""What a prompt that asks for JSON wants: its keys, and a type for each, read from the text.

The simulator sees the request, never the job: a `kind = "json"` job sends its prompt exactly
as written, so the keys and their types must be read from the words. Where they come from,
first found wins:

1. an example object in the prompt (the last `{...}` holding `"key": value` pairs), each
   value read as an example (`4`, `0.8`, `true`, `"positive|negative"`) or a hint
   (`1-5`, `<integer>`, `...`);
2. a list after a cue word: "keys sentiment and stars", "fields: a, b", "properties:"
   followed by `- name: hint` lines;
3. quoted names on a line that mentions JSON ("JSON with "sentiment" and "stars"").

A type is guessed from the example or the hint's words (integer, number, boolean, string,
list / object; a range "1-5"; choices "positive, negative or neutral"), else from the key's
name (`is_spam` boolean, `stars` 1-5, `confidence` 0-1, else a string).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import orjson

from pipeline.simulator.sentiment import CHOICE_PUNCTUATION

MAX_INSTRUCTION = 2000  # an example object or a key list is short; data may be long
NAME = re.compile(r"""^[\s"'`*]*([A-Za-z_][\w-]*)[\s"'`*]*(.*)$""", re.S)
KEY_CUE = re.compile(
    r"\b(?:keys?|fields?|properties|attributes)\b(?:\s+(?:named|called))?\s*:?", re.I
)
JSON_WORD = re.compile(r"\bjson\b")
QUOTED_NAME = re.compile(r"""["'`]([A-Za-z_][\w-]*)["'`]""")
BULLET = re.compile(r"^\s*(?:[-*\u2022]|\d+[.)])\s+(.*\S)")
NUMBER = r"-?\d+(?:\.\d+)?"
RANGE = re.compile(rf"({NUMBER})\s*(?:-|\u2013|\.\.|to|and)\s*({NUMBER})")
OPTION_LISTS = (
    re.compile(r"[\w-]+(?:\s*\|\s*[\w-]+)+"),  # positive|negative
    re.compile(r"(?<=one of)\W+[\w-]+(?:\s*,\s*[\w-]+)+"),  # one of a, b, c
    re.compile(r"^\W*[\w-]+(?:\s*,\s*[\w-]+)+\W*$"),  # the whole hint: a, b, c
    re.compile(r"(?:[\w-]+\s*,\s*)*[\w-]+,?\s+or\s+[\w-]+"),  # a, b or c
    re.compile(r"[\w-]+(?:\s*/\s*[\w-]+)+"),  # yes/no
)
OPTION_SPLIT = re.compile(r"\s*[,|/]\s*(?:or\s+)?|\s+or\s+")
# Words that name a type, and the type; a hint's earliest such word decides.
TYPE_WORDS = re.compile(
    r"\b(?P<integer>integers?|int|whole number|number of|count|how many)\b"
    r"|\b(?P<fraction>float|decimal|fraction|probability|percentage)\b"
    r"|\b(?P<number>numbers?|numeric)\b"
    r"|\b(?P<boolean>booleans?|bool|true or false|true/false)\b"
    r"|\b(?P<array>arrays?|lists?)\b|\b(?P<object>objects?|dict|mapping)\b"
    r"|\b(?P<string>strings?|str|text|sentence|word|phrase|summary|name)\b",
    re.I,
)
NULL_WORDS = frozenset({"null", "none", "nil"})
FRACTION_NAMES = ("confidence", "probability", "ratio", "share", "fraction")
SMALL_SCALE_NAMES = ("star", "rating")
INTEGER_NAMES = ("count", "age", "year", "num", "quantity", "rank", "score", "total", "size")
BOOLEAN_PREFIXES = ("is_", "has_", "can_", "should_", "was_", "contains_")


@dataclass(frozen=True, slots=True)
class FieldGuess:
    """A key the prompt asks for. `kind`: string, integer, number (with a fraction),
    boolean, array or object. `options`: the choices of an enum-like string."""

    name: str
    kind: str = "string"
    options: tuple[str, ...] = ()
    low: float | None = None
    high: float | None = None


@dataclass(frozen=True, slots=True)
class KeySource:
    """The keys found, and the span of the text that asked for them (not the subject)."""

    fields: tuple[FieldGuess, ...]
    span: tuple[int, int]


def mentions_json(text: str) -> bool:
    # Every request asks this: a plain search first (a case-blind \b search of a 30 MB
    # prompt takes half a second, this a tenth of it).
    lowered = text.lower()
    return "json" in lowered and JSON_WORD.search(lowered) is not None


def keys_in(text: str) -> KeySource | None:
    """The keys `text` asks for (rules 1-3 of the module's doc), or None."""
    for find in (_example_object, _key_list, _quoted_names):
        found = find(text)
        if found is not None and found.fields:
            return found
    return None


def _example_object(text: str) -> KeySource | None:
    """The last `{...}` whose depth-0 entries include `key: value` pairs."""
    end = text.rfind("}")
    while end > 0:
        start = _matching_brace(text, end)
        if start is not None and end - start <= MAX_INSTRUCTION:
            entries = [_entry(part) for part in _split_top(text[start + 1 : end], ",")]
            fields = tuple(entry for entry in entries if entry is not None)
            if fields:
                return KeySource(fields, (start, end + 1))
        end = text.rfind("}", 0, end)
    return None


def _matching_brace(text: str, end: int) -> int | None:
    """Where the `{` that closes at `end` opens (quotes are not tracked: a hint's braces
    in a string are rare, and a wrong pair only fails to parse)."""
    depth = 0
    for index in range(end, max(-1, end - MAX_INSTRUCTION - 1), -1):
        depth += {"}": 1, "{": -1}.get(text[index], 0)
        if depth == 0:
            return index
    return None


def _split_top(text: str, separator: str) -> list[str]:
    """`text` split at `separator` outside quotes, brackets, braces and parentheses."""
    parts, depth, quote, start = [], 0, "", 0
    for index, char in enumerate(text):
        if quote:
            quote = "" if char == quote else quote
        elif char == '"':
            quote = char
        elif char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        elif depth == 0 and text.startswith(separator, index):
            parts.append(text[start:index])
            start = index + len(separator)
    return [*parts, text[start:]]


def _entry(part: str) -> FieldGuess | None:
    """`"key": value` as a field: the value an example when it parses, else a hint."""
    key, colon, value = part.partition(":")
    named = NAME.match(key)
    if not colon or named is None or named.group(2).strip():
        return None
    name, value = named.group(1), value.strip()
    try:
        example = orjson.loads(value)
    except orjson.JSONDecodeError:
        return from_hint(name, value)
    return _from_example(name, example)


def _from_example(name: str, example: Any) -> FieldGuess:
    if isinstance(example, bool):
        return FieldGuess(name, "boolean")
    if isinstance(example, int):
        return _integer(name, example)
    if isinstance(example, float):
        return FieldGuess(name, "number", low=min(0.0, example), high=max(1.0, example))
    if isinstance(example, list | dict):
        return FieldGuess(name, "array" if isinstance(example, list) else "object")
    if isinstance(example, str):  # "positive|negative", "1-5", "string", or a sample text
        return _from_words(name, example) or FieldGuess(name)
    return from_name(name)


def from_hint(name: str, hint: str) -> FieldGuess:
    """A field from the words describing it, else from its name."""
    return _from_words(name, hint) or from_name(name)


def _from_words(name: str, hint: str) -> FieldGuess | None:
    hint = hint.replace('"', "").replace("`", "")  # "positive" | "negative": the words
    options = _options(hint)
    kind = _type_word(hint)
    if options and kind in (None, "string"):
        if {option.lower() for option in options} == {"true", "false"}:
            return FieldGuess(name, "boolean")
        return FieldGuess(name, "string", options)
    found = RANGE.search(hint)
    if found is not None and kind in (None, "integer", "number", "fraction"):
        low, high = sorted((float(found.group(1)), float(found.group(2))))
        fraction = kind == "fraction" or "." in found.group(0) or high - low <= 1
        return FieldGuess(name, "number" if fraction else "integer", low=low, high=high)
    if kind == "fraction":
        return FieldGuess(name, "number", low=0.0, high=1.0)
    if kind in ("number", "integer"):  # a whole number suits an integer and a number column
        return _integer(name, None)
    return FieldGuess(name, kind) if kind is not None else None


def _integer(name: str, example: int | None) -> FieldGuess:
    """An integer field: the range its name suggests ("stars" 1-5), else 0 to 100 (or to
    twice the example)."""
    named = from_name(name)
    if named.kind == "integer":
        return named
    high = 100 if example is None else max(5, 2 * abs(example))
    return FieldGuess(name, "integer", low=min(0, example or 0), high=high)


def _type_word(hint: str) -> str | None:
    found = TYPE_WORDS.search(hint)
    return found.lastgroup if found is not None else None


def _options(hint: str) -> tuple[str, ...]:
    """The choices a hint lists ("one of a, b or c", "a|b", "yes/no"), nulls left out."""
    for pattern in OPTION_LISTS:
        found = pattern.search(hint)
        if found is None:
            continue
        items = [item.strip(CHOICE_PUNCTUATION) for item in OPTION_SPLIT.split(found.group(0))]
        items = [item for item in items if item and item.lower() not in NULL_WORDS]
        if len(items) >= 2 and not any(TYPE_WORDS.fullmatch(item) for item in items):
            return tuple(items)
    return ()


def from_name(name: str) -> FieldGuess:
    """A field whose prompt says nothing of its type: what its name suggests."""
    lowered = name.lower()
    if lowered.startswith(BOOLEAN_PREFIXES):
        return FieldGuess(name, "boolean")
    if any(word in lowered for word in FRACTION_NAMES):
        return FieldGuess(name, "number", low=0.0, high=1.0)
    if any(word in lowered for word in SMALL_SCALE_NAMES):
        return FieldGuess(name, "integer", low=1, high=5)
    if any(word in lowered for word in INTEGER_NAMES):
        return FieldGuess(name, "integer", low=0, high=100)
    if lowered == "tags" or lowered.endswith("_list"):
        return FieldGuess(name, "array")
    return FieldGuess(name)


def _key_list(text: str) -> KeySource | None:
    """A list after a cue word, on its line ("keys a, b and c.") or as bullets below it."""
    for cue in KEY_CUE.finditer(text):
        line_end = _end_of(text, "\n", cue.end())
        tail = text[cue.end() : line_end]
        if tail.strip():
            stop = cue.end() + _sentence_end(tail)
            items = _split_list(text[cue.end() : stop])
        else:
            items, stop = _bullets(text, line_end)
        fields = tuple(guess for guess in map(_item, items) if guess is not None)
        if fields and stop - cue.start() <= MAX_INSTRUCTION:
            return KeySource(fields, (cue.start(), stop))
    return None


def _end_of(text: str, mark: str, start: int) -> int:
    at = text.find(mark, start)
    return len(text) if at < 0 else at


def _sentence_end(tail: str) -> int:
    """Where the list in `tail` ends: a full stop or semicolon outside parentheses."""
    depth = 0
    for index, char in enumerate(tail):
        depth += {"(": 1, ")": -1}.get(char, 0)
        if depth <= 0 and (char == ";" or (char == "." and tail[index + 1 : index + 2] in " ")):
            return index
    return len(tail)


def _split_list(text: str) -> list[str]:
    return [item for part in _split_top(text, ",") for item in _split_top(part, " and ")]


def _bullets(text: str, start: int) -> tuple[list[str], int]:
    """The bullet lines right after `start` (the end of the cue's line), and where they end."""
    items, position = [], start
    for line in text[start + 1 :].split("\n"):
        bullet = BULLET.match(line)
        if bullet is None:
            break
        items.append(bullet.group(1))
        position += len(line) + 1
    return items, position


def _item(item: str) -> FieldGuess | None:
    """`name (hint)`, `name: hint` or `name - hint` as a field."""
    named = NAME.match(item.strip().removeprefix("and "))
    if named is None:
        return None
    name, hint = named.group(1), named.group(2).strip().lstrip(":-\u2013(").rstrip(")")
    if name.lower() in ("and", "or", "the", "a", "an", "with"):
        return None
    return from_hint(name, hint)


def _quoted_names(text: str) -> KeySource | None:
    """Quoted names on the lines that mention JSON; types from the names alone."""
    names: dict[str, None] = {}
    for line in text.splitlines():
        if len(line) <= MAX_INSTRUCTION and mentions_json(line):
            names.update(dict.fromkeys(QUOTED_NAME.findall(line)))
    names.pop("json", None)
    return KeySource(tuple(map(from_name, names)), (0, 0)) if names else None
