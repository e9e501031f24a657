"""Answers: pure functions of the request and the simulator's seed (at temperature 0).

An answer is a tool call when a tool is forced; a JSON object when the prompt asks for JSON
(the keys and types it names, see `json_reply`); a label when the prompt names choices (the
simulator's verdict, see `sentiment`, as the model's profile degrades it, see `profiles`),
followed by a line `Confidence: N` when the last user message asks for one (contains
STATED_MARKER); otherwise filler text whose words and length come from a hash of the request.
Scripted `[[sim:...]]` directives in the last user message let tests force the rest
(`[[sim:reply=TEXT]]`: the answer's text is exactly TEXT).
"""

from __future__ import annotations

import base64
import hashlib
import math
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from pipeline.input.tokens import estimate_tokens
from pipeline.simulator.json_reply import json_answer, json_ask
from pipeline.simulator.lexicon import VOCABULARY
from pipeline.simulator.profiles import STATED_MARKER, Judge, Skills, check_skill, skill_of

# Re-exported (the `as` form) because callers import the label guess from here.
from pipeline.simulator.sentiment import find_choices as find_choices
from pipeline.simulator.sentiment import guess_label as guess_label

DIRECTIVE = re.compile(r"\[\[sim:([a-z_]+)(?:=(.*?))?\]\]", re.DOTALL)
MIN_TEXT_TOKENS, MAX_TEXT_TOKENS = 20, 200
INT_REACH = 2**53  # an integer beyond it is not exact as JSON a client parses as a double


@dataclass(frozen=True, slots=True)
class Directives:
    """Scripted behaviour asked for by `[[sim:...]]` markers in the last user message."""

    status: int | None = None
    reply: str | None = None
    unknown_block: bool = False
    fail_first: int = 0
    stream_error_after: int | None = None
    stream_error_first: int = 0  # the first N streams of this body break mid-way
    corrupt_event_at: int | None = None  # every stream: the data of event K is not JSON
    corrupt_event_first: int = 0  # the first N streams of this prompt have one such event
    skill: float | None = None  # this request's model skill, instead of its profile's
    difficulty: float | None = None  # this request's text difficulty, instead of its hash


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
    temperature: float = 0.0  # unset is 0 here (the API's default is 1): reproducible runs


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
        stream_error_first=_int_or_none(found.get("stream_error_first")) or 0,
        corrupt_event_at=_int_or_none(found.get("corrupt_event_at")),
        corrupt_event_first=_int_or_none(found.get("corrupt_event_first")) or 0,
        skill=_share_or_none(found.get("skill")),
        difficulty=_share_or_none(found.get("difficulty")),
    )


def _int_or_none(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _share_or_none(value: str | None) -> float | None:
    """A number in [0, 1], or None (a directive that is not one is ignored, like the others)."""
    try:
        share = float(value) if value is not None else None
        if share is not None:
            check_skill(share)
        return share
    except ValueError:
        return None


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
    user_text = _user_text(prompt)
    found = find_choices(user_text)
    if found is not None:
        return found
    if prompt.system:
        in_system = find_choices("\n".join(prompt.system))
        if in_system is not None:
            return in_system[0], user_text
    return None, user_text


def _user_text(prompt: Prompt) -> str:
    """The last user message as the model reads it: no directives, no confidence request."""
    return without_stated_request(DIRECTIVE.sub("", prompt.last_user_text))


def wants_stated_confidence(prompt: Prompt) -> bool:
    """Whether the last user message asks for a stated confidence after the answer."""
    return STATED_MARKER in prompt.last_user_text


def without_stated_request(user_text: str) -> str:
    """`user_text` without the request for a stated confidence: from the start of the line
    holding STATED_MARKER to the end, and the newline that joined that block on.

    The pipeline appends the request as the last text block of the user message (blocks are
    joined by a newline), so what is left is the text as sent without it: the same label,
    difficulty and verdict with or without the request (and its words are not judged).
    """
    at = user_text.find(STATED_MARKER)
    if at < 0:
        return user_text
    head = user_text[: user_text.rfind("\n", 0, at) + 1]
    return head.removesuffix("\n")


def generate(
    prompt: Prompt,
    seed: int,
    directives: Directives = NO_DIRECTIVES,
    *,
    skills: Skills = (),
    rng: random.Random | None = None,
) -> Answer:
    """The answer to `prompt`: at temperature 0, the same prompt and seed always give the
    same answer. `skills` override the models' profiles; `rng` is this request's random
    source above temperature 0 (None: a fresh one)."""
    digest = request_digest(prompt, seed)
    judge = judge_for(prompt, seed, directives, skills, rng)
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
        block, stop_reason, tokens = tool_use_block(tool, prompt, digest, judge, room)
        blocks.append(block)
    else:
        text = (
            directives.reply if directives.reply is not None else free_text(prompt, digest, judge)
        )
        text, stop_reason, stop_sequence = cut_text(text, room, prompt.stop_sequences)
        blocks.append({"type": "text", "text": text})
        tokens = estimate_tokens(text)
    if directives.unknown_block:
        blocks.append({"type": "future_block", "data": {"kind": "simulated", "version": 2}})
    return Answer(tuple(blocks), stop_reason, stop_sequence, thinking_tokens + tokens)


def judge_for(
    prompt: Prompt,
    seed: int,
    directives: Directives = NO_DIRECTIVES,
    skills: Skills = (),
    rng: random.Random | None = None,
) -> Judge:
    """The labeller of `prompt`: the verdict (seeded ties) degraded by the model's profile."""
    skill = directives.skill if directives.skill is not None else skill_of(prompt.model, skills)
    return Judge(
        verdict=lambda text, choices: guess_label(text, choices, seed),
        skill=skill,
        temperature=prompt.temperature,
        rng=rng,
        row_difficulty=directives.difficulty,
    )


def free_text(prompt: Prompt, digest: bytes, judge: Judge) -> str:
    """A JSON object when the prompt asks for one; a label when the prompt names choices
    (then a stated confidence if the prompt asks for one); else 20-200 tokens of filler."""
    # JSON first: a JSON prompt often names choices too, and a bare label would not parse.
    ask = json_ask(_user_text(prompt), "\n".join(prompt.system))
    if ask is not None:
        return json_answer(ask, judge, random.Random(digest + b"json"))
    choices, text = subject_text(prompt)
    if choices:
        label = judge.label(text, choices)
        if wants_stated_confidence(prompt):
            return f"{label}\nConfidence: {judge.confidence(text)}"
        return label
    span = MAX_TEXT_TOKENS - MIN_TEXT_TOKENS + 1
    return pseudo_text(digest, MIN_TEXT_TOKENS + int.from_bytes(digest[:2], "big") % span)


def thinking_block(digest: bytes, budget_tokens: int) -> dict[str, Any]:
    """A short thought within the budget, signed like the real API signs them."""
    text = pseudo_text(digest + b"thinking", min(budget_tokens, 20 + digest[2] % 80))
    text = truncate_to_tokens(text, budget_tokens)
    signature = base64.b64encode(hashlib.sha512(digest + text.encode()).digest()).decode()
    return {"type": "thinking", "thinking": text, "signature": signature}


def tool_use_block(
    tool: ToolSpec, prompt: Prompt, digest: bytes, judge: Judge, room: int
) -> tuple[dict[str, Any], str, int]:
    """(tool_use block, stop_reason, output tokens): input built from the tool's schema;
    an enum is a label, chosen by `judge`."""
    _, text = subject_text(prompt)
    rng = random.Random(digest + tool.name.encode())
    tool_input = _value_for(tool.input_schema or {"type": "object"}, text, judge, rng, 0)
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
    schema: Mapping[str, Any], text: str, judge: Judge, rng: random.Random, depth: int
) -> Any:
    """A value matching `schema`, shallowly: nesting stops after two levels."""
    enum = schema.get("enum")
    if isinstance(enum, list) and enum:
        names = [str(value) for value in enum]
        return enum[names.index(judge.label(text, names))]
    if "const" in schema:
        return schema["const"]
    branches = schema.get("anyOf") or schema.get("oneOf")
    if isinstance(branches, list) and branches and "type" not in schema:
        # the first branch that is not null: a nullable field's value, not a null
        usable = [b for b in branches if isinstance(b, Mapping) and b.get("type") != "null"]
        return _value_for(usable[0] if usable else {"type": "null"}, text, judge, rng, depth)
    kind = _schema_type(schema)
    if kind == "object":
        properties = schema.get("properties")
        if depth >= 2 or not isinstance(properties, Mapping):
            return {}
        return {
            name: _value_for(sub if isinstance(sub, Mapping) else {}, text, judge, rng, depth + 1)
            for name, sub in properties.items()
        }
    if kind == "array":
        items = schema.get("items")
        if depth >= 2 or not isinstance(items, Mapping):
            return []
        return [_value_for(items, text, judge, rng, depth + 1) for _ in range(rng.randint(1, 3))]
    return _scalar_for(kind, schema, rng)


def _schema_type(schema: Mapping[str, Any]) -> str:
    kind = schema.get("type", "object" if "properties" in schema else "string")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    return kind if isinstance(kind, str) else "string"


def _scalar_for(kind: str, schema: Mapping[str, Any], rng: random.Random) -> Any:
    if kind in ("integer", "number"):
        low = _number(schema.get("minimum"), _number(schema.get("exclusiveMinimum"), 0))
        high = _number(schema.get("maximum"), _number(schema.get("exclusiveMaximum"), low + 100))
        low, high = (low, high) if low <= high else (high, low)
        if kind == "integer":  # whole bounds inside the range, and within an int64 column
            low, high = max(math.ceil(low), -INT_REACH), min(math.floor(high), INT_REACH)
            return rng.randint(low, high) if low <= high else low
        return round(rng.uniform(float(low), float(high)), 2)
    if kind == "boolean":
        return rng.random() < 0.5
    if kind == "null":
        return None
    return " ".join(rng.choices(VOCABULARY, k=rng.randint(1, 4)))


def _number(value: object, default: float) -> float:
    is_number = isinstance(value, int | float) and not isinstance(value, bool)
    return float(value) if is_number else default  # type: ignore[arg-type]
