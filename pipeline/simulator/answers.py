"""Deterministic answers: pure functions of the request and the simulator's seed.

An answer is a label when the prompt names choices (a word-list guess), a tool call when a
tool is forced, otherwise filler text whose words and length come from a hash of the request.
Scripted `[[sim:...]]` directives in the last user message let tests force the rest.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import random
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import orjson

from pipeline.simulator.lexicon import (
    CONTRAST_WORDS,
    DIMINISHERS,
    HEDGE_PHRASES,
    HEDGE_WORDS,
    INTENSIFIERS,
    MILD_NEGATIVE_PHRASES,
    MILD_POSITIVE_PHRASES,
    NEGATIVE_NAMES,
    NEGATIVE_PHRASES,
    NEGATIVE_WORDS,
    NEGATORS,
    NEUTRAL_NAMES,
    NOT_AFTER_TOO,
    POSITIVE_NAMES,
    POSITIVE_PHRASES,
    POSITIVE_WORDS,
    STRONG_NEGATIVE_WORDS,
    STRONG_POSITIVE_WORDS,
    VOCABULARY,
)
from pipeline.tokens import estimate_tokens

DIRECTIVE = re.compile(r"\[\[sim:([a-z_]+)(?:=(.*?))?\]\]", re.DOTALL)
WORD = re.compile(r"[a-z0-9']+")
# Words (apostrophes only inside: "doesn't", not "'quoted'") and clause punctuation.
TOKEN = re.compile(r"[a-z0-9]+(?:'[a-z0-9]+)*|[.!?;:,()]")
# Separators inside a choice list: commas, slashes, bars and "or" (with or without a comma).
CHOICE_SEPARATOR = re.compile(r"\s*[,/|]\s*(?:or\s+)?|\s+or\s+")
# "a, b or c" on a line without a colon; the commas are optional only in a question.
BARE_CHOICE_LIST = re.compile(r"(?:[\w-]+\s*,\s*)+[\w-]+,?\s+or\s+[\w-]+")
BARE_QUESTION_CHOICES = re.compile(r"(?:[\w-]+\s*,\s*)*[\w-]+,?\s+or\s+[\w-]+")
# Words before a colon that say a list of choices follows ("Answer with one of: a, b").
CHOICE_CUES = (
    *("one of", "answer", "label", "classify", "categor", "choose", "pick", "select"),
    *("respond", "reply", "option", "choice", "either", "sentiment", "which"),
)
CHOICE_PUNCTUATION = " \t\"'`.,;:!?()[]{}*<>"
MIN_TEXT_TOKENS, MAX_TEXT_TOKENS = 20, 200
# Instructions naming choices are short; skipping long lines (data, documents) keeps the
# search linear in the prompt's size.
MAX_CHOICE_LINE = 400
_Entry = TypeVar("_Entry", str, tuple[str, ...])


@functools.lru_cache(maxsize=1 << 16)  # words repeat a lot; stemming was the hot spot
def _stem(word: str) -> str:
    """A crude stem, so that "loved", "loves" and "love" meet."""
    for suffix in ("ing", "ed", "es", "s", "ly", "en"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            word = word[: -len(suffix)]
            break
    return word[:-1] if word.endswith("e") and len(word) > 3 else word


def _weights(*groups: tuple[frozenset[_Entry], int]) -> dict[_Entry, int]:
    """Entry -> weight; an entry listed in two groups keeps the first group's weight."""
    weights: dict[_Entry, int] = {}
    for entries, weight in groups:
        for entry in entries:
            weights.setdefault(entry, weight)
    return weights


# Sentiment weight of a word or phrase in half steps: a plain word is one STEP, a strong word or
# a set phrase two, so that a diminished word ("a bit pricey") can be half a step. 0 marks a
# lukewarm hedge ("fine", "nothing special").
STEP = 2
WORD_WEIGHTS: dict[str, int] = _weights(
    (STRONG_POSITIVE_WORDS, 2 * STEP),
    (STRONG_NEGATIVE_WORDS, -2 * STEP),
    (POSITIVE_WORDS, STEP),
    (NEGATIVE_WORDS, -STEP),
    (HEDGE_WORDS, 0),
)
PHRASE_WEIGHTS: dict[tuple[str, ...], int] = _weights(
    (POSITIVE_PHRASES, 2 * STEP),
    (NEGATIVE_PHRASES, -2 * STEP),
    (MILD_POSITIVE_PHRASES, STEP),
    (MILD_NEGATIVE_PHRASES, -STEP),
    (HEDGE_PHRASES, 0),
)
# First word of a phrase -> the lengths of the phrases it starts, longest first.
PHRASE_LENGTHS: dict[str, tuple[int, ...]] = {
    first: tuple(sorted({len(p) for p in PHRASE_WEIGHTS if p[0] == first}, reverse=True))
    for first in {phrase[0] for phrase in PHRASE_WEIGHTS}
}
SENTENCE_ENDS = frozenset(".!?")
CLAUSE_ENDS = frozenset(".!?;:,()")
NEGATION_REACH = 3  # a negator flips sentiment up to this many words after it
DIMINISHER_REACH = 2  # "a bit pricey", "a little too small"
FAR = -100  # the position of a modifier that is out of reach
# Each hedge widens the neutral band around a zero score by a step, up to this many steps.
MAX_HEDGE_STEPS = 2
MOOD_OF_CHOICE = (
    dict.fromkeys(POSITIVE_NAMES, "+")
    | dict.fromkeys(NEGATIVE_NAMES, "-")
    | dict.fromkeys(NEUTRAL_NAMES, "0")
)


@dataclass(frozen=True, slots=True)
class Directives:
    """Scripted behaviour asked for by `[[sim:...]]` markers in the last user message."""

    status: int | None = None
    reply: str | None = None
    unknown_block: bool = False
    fail_first: int = 0
    stream_error_after: int | None = None


NO_DIRECTIVES = Directives()


@dataclass(frozen=True, slots=True)
class ToolSpec:
    name: str
    description: str = ""
    input_schema: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Prompt:
    """A request reduced to what the answer depends on (both endpoints parse into this)."""

    model: str
    system: tuple[str, ...]
    messages: tuple[tuple[str, str], ...]  # (role, text)
    max_tokens: int
    last_user_text: str = ""
    stop_sequences: tuple[str, ...] = ()
    tools: tuple[ToolSpec, ...] = ()
    forced_tool: str | None = None
    thinking_budget: int | None = None


@dataclass(frozen=True, slots=True)
class Answer:
    blocks: tuple[dict[str, Any], ...]  # content blocks, Anthropic shape
    stop_reason: str
    stop_sequence: str | None
    output_tokens: int


def parse_directives(text: str) -> Directives:
    """The `[[sim:name=value]]` markers in `text` (a value runs up to the first `]]`)."""
    if "[[sim:" not in text:
        return NO_DIRECTIVES
    found = {match.group(1): match.group(2) or "" for match in DIRECTIVE.finditer(text)}
    return Directives(
        status=_int_or_none(found.get("status")),
        reply=found.get("reply"),
        unknown_block="unknown_block" in found,
        fail_first=_int_or_none(found.get("fail_first")) or 0,
        stream_error_after=_int_or_none(found.get("stream_error_after")),
    )


def _int_or_none(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def find_choices(text: str) -> tuple[list[str], str] | None:
    """The choice list a prompt names and the prompt without that line, or None.

    The last line naming a list wins, since instructions usually follow the text they are about.
    """
    lines = text.splitlines()
    for index in range(len(lines) - 1, -1, -1):
        choices = _choices_in_line(lines[index])
        if choices:
            return choices, "\n".join(lines[:index] + lines[index + 1 :])
    return None


def _choices_in_line(line: str) -> list[str]:
    if len(line) > MAX_CHOICE_LINE:
        return []
    if ":" in line:
        head, tail = line.rsplit(":", 1)
        lowered = head.lower()
        if " or " not in tail and not any(cue in lowered for cue in CHOICE_CUES):
            return []
    else:
        pattern = BARE_QUESTION_CHOICES if line.rstrip().endswith("?") else BARE_CHOICE_LIST
        found = pattern.search(line)
        if found is None:
            return []
        tail = found.group(0)
    items = [item.strip(CHOICE_PUNCTUATION) for item in CHOICE_SEPARATOR.split(tail.strip())]
    items = [item for item in items if item]
    if not 2 <= len(items) <= 20 or any(len(i) > 40 or i.count(" ") > 2 for i in items):
        return []
    return items


def guess_label(text: str, choices: list[str], seed: int) -> str:
    """The choice a word-list guess picks for `text`; ties are broken by a seeded hash.

    Sentiment-named choices (positive / negative / neutral, ...) follow the lexicon's verdict;
    other choices score by how often they (or their stems) appear in the text.
    """
    if not choices:
        raise ValueError("guess_label needs at least one choice")
    tokens = TOKEN.findall(text.lower().replace("\u2019", "'"))
    mood = _mood(tokens)
    counts = Counter(_stem(token) for token in tokens if token not in CLAUSE_ENDS)
    scores = [_choice_score(choice, mood, counts) for choice in choices]
    best = max(scores)
    tied = [choice for choice, score in zip(choices, scores, strict=True) if score == best]
    if len(tied) == 1:
        return tied[0]
    return tied[_seeded_index(seed, text, len(tied))]


def _mood(tokens: Sequence[str]) -> str:
    """The lexicon's verdict on a tokenized text: "+", "-" or "0".

    Phrases are matched before words. A negator flips what follows it in its clause (to a
    single step: "not great" is a mild complaint), an intensifier adds a step to the next
    word, a diminisher halves it, and after "but" the rest of the sentence counts double.
    The verdict is neutral when the evidence is balanced, and also when it is weak and the
    review hedges: each lukewarm word ("ok", "decent", "nothing special") widens the neutral
    band around zero by a step, up to MAX_HEDGE_STEPS.
    """
    positive = negative = hedges = 0
    weight, negator_at, intensifier_at, diminisher_at = 1, FAR, FAR, FAR
    index, count = 0, len(tokens)
    while index < count:
        token = tokens[index]
        size, value = 1, None
        lengths = PHRASE_LENGTHS.get(token)
        if lengths is not None:
            for length in lengths:
                value = PHRASE_WEIGHTS.get(tuple(tokens[index : index + length]))
                if value is not None:
                    size = length
                    break
        if value is None:
            value = WORD_WEIGHTS.get(token)
        if value is None:
            if token in CLAUSE_ENDS:
                negator_at = diminisher_at = FAR
                if token in SENTENCE_ENDS:
                    weight = 1
            elif token in NEGATORS:
                negator_at = index
            elif token in INTENSIFIERS:
                intensifier_at = index
            elif token in DIMINISHERS:
                diminisher_at = index
            elif token in CONTRAST_WORDS:
                weight, negator_at, diminisher_at = 2, FAR, FAR
            elif token == "too" and index + 1 < count:
                following = tokens[index + 1]
                if following not in CLAUSE_ENDS and following not in NOT_AFTER_TOO:
                    value, size = min(-STEP, WORD_WEIGHTS.get(following) or 0), 2
            if value is None:
                index += 1
                continue
        if index - negator_at <= NEGATION_REACH:
            value = STEP if value < 0 else -STEP  # "not bad" is mild praise, "not ok" a complaint
        elif value and intensifier_at == index - 1:
            value += STEP if value > 0 else -STEP
        if value and index - diminisher_at <= DIMINISHER_REACH:
            value //= 2  # exact: every weight is a whole number of steps
        if value > 0:
            positive += value * weight
        elif value < 0:
            negative -= value * weight
        else:
            hedges += 1
        index += size
    score = positive - negative
    band = STEP * min(hedges, MAX_HEDGE_STEPS)
    return "+" if score > band else "-" if score < -band else "0"


def _choice_score(choice: str, mood: str, counts: Mapping[str, int]) -> int:
    name = choice.strip().lower()
    mentions = sum(counts.get(_stem(word), 0) for word in WORD.findall(name))
    return mentions + (1000 if MOOD_OF_CHOICE.get(name) == mood else 0)


def _seeded_index(seed: int, text: str, count: int) -> int:
    digest = hashlib.blake2b(f"{seed}\0{text}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % count


def request_digest(prompt: Prompt, seed: int) -> bytes:
    """The hash every free choice of an answer is drawn from.

    max_tokens and stop sequences are left out on purpose: a truncated answer is then a
    prefix of the full one, as it would be from a real model at temperature 0.
    """
    key = orjson.dumps([seed, prompt.model, prompt.system, prompt.messages])
    return hashlib.sha256(key).digest()


def pseudo_text(digest: bytes, tokens: int) -> str:
    """About `tokens` tokens of filler words drawn from `digest`."""
    rng = random.Random(digest)
    text = " ".join(rng.choices(VOCABULARY, k=max(1, tokens)))
    limit = max(4, tokens * 4 - 1)
    if len(text) > limit:
        text = text[:limit].rsplit(" ", 1)[0]
    return text[:1].upper() + text[1:] + "."


def truncate_to_tokens(text: str, max_tokens: int) -> str:
    """The longest prefix of `text` that estimate_tokens counts as at most `max_tokens`."""
    return text.encode()[: max_tokens * 4].decode("utf-8", "ignore")


def cut_text(
    text: str, max_tokens: int, stop_sequences: Sequence[str]
) -> tuple[str, str, str | None]:
    """(text, stop_reason, stop_sequence) after applying stop sequences and max_tokens."""
    hits = [(text.find(s), i, s) for i, s in enumerate(stop_sequences) if s and s in text]
    if hits:
        position, _, sequence = min(hits)
        if estimate_tokens(text[:position]) <= max_tokens:
            return text[:position], "stop_sequence", sequence
    if estimate_tokens(text) <= max_tokens:
        return text, "end_turn", None
    return truncate_to_tokens(text, max_tokens), "max_tokens", None


def subject_text(prompt: Prompt) -> tuple[list[str] | None, str]:
    """The choices the prompt names (if any) and the text being answered about."""
    user_text = DIRECTIVE.sub("", prompt.last_user_text)
    found = find_choices(user_text)
    if found is not None:
        return found
    if prompt.system:
        in_system = find_choices("\n".join(prompt.system))
        if in_system is not None:
            return in_system[0], user_text
    return None, user_text


def generate(prompt: Prompt, seed: int, directives: Directives = NO_DIRECTIVES) -> Answer:
    """The answer to `prompt`: the same prompt and seed always give the same answer."""
    digest = request_digest(prompt, seed)
    blocks: list[dict[str, Any]] = []
    thinking_tokens = 0
    if prompt.thinking_budget is not None:
        thinking = thinking_block(digest, prompt.thinking_budget)
        thinking_tokens = estimate_tokens(thinking["thinking"])
        blocks.append(thinking)
    room = prompt.max_tokens - thinking_tokens
    stop_sequence: str | None = None
    tool = next((t for t in prompt.tools if t.name == prompt.forced_tool), None)
    if tool is not None:
        block, stop_reason, tokens = tool_use_block(tool, prompt, digest, seed, room)
        blocks.append(block)
    else:
        text = directives.reply if directives.reply is not None else free_text(prompt, digest, seed)
        text, stop_reason, stop_sequence = cut_text(text, room, prompt.stop_sequences)
        blocks.append({"type": "text", "text": text})
        tokens = estimate_tokens(text)
    if directives.unknown_block:
        blocks.append({"type": "future_block", "data": {"kind": "simulated", "version": 2}})
    return Answer(tuple(blocks), stop_reason, stop_sequence, thinking_tokens + tokens)


def free_text(prompt: Prompt, digest: bytes, seed: int) -> str:
    """A label when the prompt names choices, else 20-200 tokens of filler."""
    choices, text = subject_text(prompt)
    if choices:
        return guess_label(text, choices, seed)
    span = MAX_TEXT_TOKENS - MIN_TEXT_TOKENS + 1
    return pseudo_text(digest, MIN_TEXT_TOKENS + int.from_bytes(digest[:2], "big") % span)


def thinking_block(digest: bytes, budget_tokens: int) -> dict[str, Any]:
    """A short thought within the budget, signed like the real API signs them."""
    text = pseudo_text(digest + b"thinking", min(budget_tokens, 20 + digest[2] % 80))
    text = truncate_to_tokens(text, budget_tokens)
    signature = base64.b64encode(hashlib.sha512(digest + text.encode()).digest()).decode()
    return {"type": "thinking", "thinking": text, "signature": signature}


def tool_use_block(
    tool: ToolSpec, prompt: Prompt, digest: bytes, seed: int, room: int
) -> tuple[dict[str, Any], str, int]:
    """(tool_use block, stop_reason, output tokens): input built from the tool's schema."""
    _, text = subject_text(prompt)
    rng = random.Random(digest + tool.name.encode())
    tool_input = _value_for(tool.input_schema or {"type": "object"}, text, seed, rng, 0)
    if not isinstance(tool_input, dict):
        tool_input = {"value": tool_input}
    tokens = estimate_tokens(orjson.dumps(tool_input).decode())
    stop_reason = "tool_use"
    if tokens > room:  # the real API stops mid-call: the input never got finished
        tool_input, tokens, stop_reason = {}, room, "max_tokens"
    block_id = "toolu_" + digest.hex()[:24]
    block = {"type": "tool_use", "id": block_id, "name": tool.name, "input": tool_input}
    return block, stop_reason, tokens


def _value_for(
    schema: Mapping[str, Any], text: str, seed: int, rng: random.Random, depth: int
) -> Any:
    """A value matching `schema`, shallowly: nesting stops after two levels."""
    enum = schema.get("enum")
    if isinstance(enum, list) and enum:
        names = [str(value) for value in enum]
        return enum[names.index(guess_label(text, names, seed))]
    if "const" in schema:
        return schema["const"]
    kind = _schema_type(schema)
    if kind == "object":
        properties = schema.get("properties")
        if depth >= 2 or not isinstance(properties, Mapping):
            return {}
        return {
            name: _value_for(sub if isinstance(sub, Mapping) else {}, text, seed, rng, depth + 1)
            for name, sub in properties.items()
        }
    if kind == "array":
        items = schema.get("items")
        if depth >= 2 or not isinstance(items, Mapping):
            return []
        return [_value_for(items, text, seed, rng, depth + 1) for _ in range(rng.randint(1, 3))]
    return _scalar_for(kind, schema, rng)


def _schema_type(schema: Mapping[str, Any]) -> str:
    kind = schema.get("type", "object" if "properties" in schema else "string")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    return kind if isinstance(kind, str) else "string"


def _scalar_for(kind: str, schema: Mapping[str, Any], rng: random.Random) -> Any:
    if kind in ("integer", "number"):
        low = _number(schema.get("minimum"), 0)
        high = _number(schema.get("maximum"), low + 100)
        low, high = (low, high) if low <= high else (high, low)
        if kind == "integer":
            return rng.randint(int(low), int(high))
        return round(rng.uniform(float(low), float(high)), 2)
    if kind == "boolean":
        return rng.random() < 0.5
    if kind == "null":
        return None
    return " ".join(rng.choices(VOCABULARY, k=rng.randint(1, 4)))


def _number(value: object, default: float) -> float:
    is_number = isinstance(value, int | float) and not isinstance(value, bool)
    return float(value) if is_number else default  # type: ignore[arg-type]
