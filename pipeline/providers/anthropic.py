"""The Anthropic Messages API: request headers, and parsing of answers and error bodies.

Parsing is tolerant by design: unknown fields and block types are kept in `content_json`
and otherwise ignored. Usage is not guessed at: an answer without `usage` (or without its
input or output count) has usage None, so its cost is unknown rather than zero; a count
that cannot be a token count (negative, a string, a fraction, a bool, beyond int64) makes
the answer malformed, since nothing else in it can then be trusted to be billed as shown.
"""

from __future__ import annotations

from typing import Any

import orjson

from pipeline.input.tokens import estimate_tokens
from pipeline.providers.base import Answer, MalformedAnswer, Usage
from pipeline.providers.usage_fields import (
    MAX_COUNT,
    SPLIT_KEYS,
    cache_counts,
    token_count,
    warn_unknown,
)

SPLIT = frozenset(SPLIT_KEYS)

MESSAGES_PATH = "/v1/messages"


def endpoint(base_url: str) -> str:
    return base_url.rstrip("/") + MESSAGES_PATH


def request_headers(auth: str, api_key: str, anthropic_version: str) -> dict[str, str]:
    headers = {
        "content-type": "application/json",
        "accept": "application/json",
        "anthropic-version": anthropic_version,
    }
    if auth == "x-api-key":
        headers["x-api-key"] = api_key
    else:
        headers["authorization"] = f"Bearer {api_key}"
    return headers


def estimate_input_tokens(body: dict[str, Any]) -> int:
    """Input tokens of a request before sending: the local estimate of its text, for the
    input-token limit (corrected by the answer's usage)."""
    total = _text_tokens(body.get("system"))
    for message in body.get("messages", ()):
        total += 3 + _text_tokens(message.get("content"))
    if body.get("tools"):
        total += estimate_tokens(orjson.dumps(body["tools"]).decode())
    return total


def _text_tokens(content: Any) -> int:
    if isinstance(content, str):
        return estimate_tokens(content)
    if isinstance(content, list):
        return sum(estimate_tokens(b.get("text", "")) for b in content if isinstance(b, dict))
    return 0


STREAM_ABOVE_MAX_TOKENS = 21_333  # the SDK's line: longer may outlast a 10-minute request


def streamed(messages_body: dict[str, Any]) -> bool:
    """Whether the answer is streamed: when it may be long (its attempt gets a longer
    deadline, stream_timeout_s, with timeout_s as the bound on silence)."""
    return int(messages_body.get("max_tokens", 0)) > STREAM_ABOVE_MAX_TOKENS


def body(messages_body: dict[str, Any]) -> dict[str, Any]:
    """The request body as sent: as rendered, streamed when the answer may be long."""
    return {**messages_body, "stream": True} if streamed(messages_body) else messages_body


def parse_answer(body: bytes) -> Answer:
    try:
        message = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise MalformedAnswer(f"answer is not JSON ({e})") from None
    if not isinstance(message, dict) or not isinstance(message.get("content"), list):
        raise MalformedAnswer("answer has no `content` list")
    return answer_from(message, message["content"])


def answer_from(message: dict[str, Any], content: list[Any]) -> Answer:
    """An Answer from a message's fields and its content blocks (answered or streamed)."""
    texts = [
        block["text"]
        for block in content
        if isinstance(block, dict)
        and block.get("type") == "text"
        and isinstance(block.get("text"), str)
    ]
    stop_reason, model = message.get("stop_reason"), message.get("model")
    return Answer(
        texts[0] if len(texts) == 1 else "".join(texts),
        orjson.dumps(content).decode(),
        stop_reason if isinstance(stop_reason, str) else None,  # string_or_none, inline
        model if isinstance(model, str) else None,
        parse_usage(message.get("usage")),
        content,
    )


def string_or_none(value: Any) -> str | None:
    """A field that must be text (model, stop_reason): anything else counts as absent."""
    return value if isinstance(value, str) else None


COUNT_KEYS = ("input_tokens", "output_tokens")


def parse_usage(raw: Any) -> Usage | None:
    """Usage from the answer's `usage` object; None when it does not say what was used.
    Cache counts are read under the gateways' names too (usage_fields); input_tokens
    leaves them out, as the Messages API defines it."""
    if not isinstance(raw, dict):
        return None
    return plain_usage(raw) or checked_usage(raw)


def checked_usage(raw: dict[str, Any]) -> Usage | None:
    """`parse_usage` of any shape: every count checked, gateways' names read, a count we
    do not price warned about."""
    input_tokens, output_tokens = (token_count(raw, key) for key in COUNT_KEYS)
    cache = cache_counts(raw)  # every count checked, used or not
    warn_unknown(raw)
    if input_tokens is None or output_tokens is None:
        return None
    # Only the total given (no split): left out of both, for the caller to count at the
    # TTL its request asked for (pricing.split_writes); this answer does not say.
    tier = raw.get("service_tier")
    return Usage(
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        cache_creation_input_tokens=cache.written,
        cache_read_input_tokens=cache.reads or 0,
        cache_creation_5m_tokens=cache.five,
        cache_creation_1h_tokens=cache.hour,
        service_tier=tier if isinstance(tier, str) else None,
    )


CACHE_KEYS = ("cache_creation_input_tokens", "cache_read_input_tokens")
PLAIN_KEYS = frozenset({*COUNT_KEYS, *CACHE_KEYS, "cache_creation", "service_tier"})


def plain_usage(raw: dict[str, Any]) -> Usage | None:
    """The usage of an answer in the Messages API's own shape (its four counts, the writes'
    5m / 1h split, `service_tier`), every count a plain int in range: what `parse_usage`'s
    checks give, in a fraction of its time; None for any other shape, which gets the checks
    one by one (gateways' names, odd values, fields to warn about)."""
    split = raw.get("cache_creation", _NO_SPLIT)
    if not raw.keys() <= PLAIN_KEYS or type(split) is not dict or not split.keys() <= SPLIT:
        return None
    inputs, outputs = raw.get("input_tokens"), raw.get("output_tokens")
    if inputs is None or outputs is None:  # absent (or null): not this shape
        return None
    writes = raw.get("cache_creation_input_tokens", 0)
    reads = raw.get("cache_read_input_tokens", 0)
    five, hour = split.get(SPLIT_KEYS[0], 0), split.get(SPLIT_KEYS[1], 0)
    for count in (inputs, outputs, writes, reads, five, hour):  # a bool is no count
        if type(count) is not int or not 0 <= count < MAX_COUNT:
            return None
    tier = raw.get("service_tier")
    if tier is not None and type(tier) is not str:
        return None
    written = writes if "cache_creation_input_tokens" in raw else five + hour
    key = (inputs, outputs, written, reads, five, hour, tier)
    usage = _USAGES.get(key)
    if usage is None:  # answers repeat their counts; a Usage is immutable, so shared
        if len(_USAGES) >= USAGES_KEPT:
            _USAGES.clear()
        usage = _USAGES[key] = Usage(*key)
    return usage


_NO_SPLIT: dict[str, Any] = {}
USAGES_KEPT = 4096  # distinct usages remembered by plain_usage
_USAGES: dict[tuple[int, int, int, int, int, int, str | None], Usage] = {}


def parse_error(status: int, body: bytes) -> tuple[str, str]:
    """(error_type, message) from Anthropic's or the gateway's error body, or the status."""
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        parsed = None
    error = parsed.get("error") if isinstance(parsed, dict) else None
    if isinstance(error, dict):
        kind = error.get("type") or error.get("code") or f"http_{status}"
        message = error.get("message") or ""
        code = error.get("code")
        if code and code != kind:
            message = f"{message} ({code})" if message else str(code)
        return str(kind), _one_line(str(message))
    if isinstance(error, str):  # some proxies: {"error": "message"}
        return f"http_{status}", _one_line(error)
    snippet = _one_line(body[:200].decode("utf-8", "replace"))
    return f"http_{status}", snippet or f"HTTP {status} with an empty body"


def _one_line(text: str) -> str:
    """Error text goes into one-line messages and cells: collapse every run of whitespace."""
    return " ".join(text.split())
