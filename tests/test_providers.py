"""The Anthropic Messages API adapter: headers, answers, usage and error bodies.

Parsing must tolerate whatever new fields and block types the API grows, and never crash
a job on a strange body: a 2xx that is not an answer is a MalformedAnswer, nothing else.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

import orjson
import pytest

from pipeline.providers import openai
from pipeline.providers.anthropic import (
    MalformedAnswer,
    endpoint,
    parse_answer,
    parse_error,
    parse_usage,
    request_headers,
)
from pipeline.providers.base import Provider, Usage
from pipeline.providers.registry import PROVIDERS, provider_for
from pipeline.providers.sse import parse_stream


def body(obj: Any) -> bytes:
    return orjson.dumps(obj)


def message(content: list[Any], **fields: Any) -> dict[str, Any]:
    return {
        "id": "msg_01",
        "type": "message",
        "role": "assistant",
        "model": "claude-haiku-4-5-20251001",
        "content": content,
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 10, "output_tokens": 3},
        **fields,
    }


# --- request_headers / endpoint ------------------------------------------------------


@pytest.mark.parametrize(
    ("auth", "present", "absent"),
    [
        (
            "bearer",
            {"authorization": "Bearer sk-test", "content-type": "application/json"},
            {"x-api-key"},
        ),
        (
            "x-api-key",
            {
                "x-api-key": "sk-test",
                "anthropic-version": "2023-06-01",
                "content-type": "application/json",
            },
            {"authorization"},
        ),
    ],
)
def test_request_headers(auth: str, present: dict[str, str], absent: set[str]) -> None:
    headers = request_headers(auth, "sk-test", "2023-06-01")
    for name, value in present.items():
        assert headers[name] == value
    assert not absent & {name.lower() for name in headers}
    # the key appears once, in the one auth header
    assert sum("sk-test" in value for value in headers.values()) == 1


def test_anthropic_version_is_the_one_asked_for() -> None:
    assert request_headers("x-api-key", "k", "2099-01-01")["anthropic-version"] == "2099-01-01"


@pytest.mark.parametrize(
    ("base", "url"),
    [
        ("https://api.aisa.one", "https://api.aisa.one/v1/messages"),
        ("https://api.aisa.one/", "https://api.aisa.one/v1/messages"),
        ("http://127.0.0.1:8080", "http://127.0.0.1:8080/v1/messages"),
    ],
)
def test_endpoint(base: str, url: str) -> None:
    assert endpoint(base) == url


# --- parse_answer --------------------------------------------------------------------

MIXED = [
    {"type": "thinking", "thinking": "The user wants a label.", "signature": "sig=="},
    {"type": "redacted_thinking", "data": "opaque"},
    {"type": "text", "text": "Nega", "citations": None},
    {"type": "tool_use", "id": "toolu_01", "name": "record", "input": {"label": "negative"}},
    {"type": "brand_new_block", "payload": {"x": [1, 2]}},
    {"type": "text", "text": "tive"},
    "not even a dict",
    {"no_type": True},
]


@pytest.mark.parametrize(
    ("content", "text"),
    [
        ([], ""),
        ([{"type": "text", "text": "positive"}], "positive"),
        ([{"type": "text", "text": "a"}, {"type": "text", "text": "b"}], "ab"),
        ([{"type": "text"}], ""),  # a text block without text
        ([{"type": "tool_use", "id": "t", "name": "n", "input": {}}], ""),
        (MIXED, "Negative"),  # only text blocks are joined
    ],
)
def test_parse_answer_text_joins_text_blocks_only(content: list[Any], text: str) -> None:
    answer = parse_answer(body(message(content)))
    assert answer.text == text
    assert orjson.loads(answer.content_json) == content  # every block kept
    assert answer.content == content


def test_parse_answer_tolerates_unknown_top_level_fields() -> None:
    raw = message(
        [{"type": "text", "text": "ok"}],
        stop_reason="model_context_window_exceeded",
        container={"id": "c1"},
        future_field=[1, {"a": None}],
        context_management={"applied_edits": []},
    )
    answer = parse_answer(body(raw))
    assert answer.text == "ok"
    assert answer.stop_reason == "model_context_window_exceeded"
    assert answer.model == "claude-haiku-4-5-20251001"
    assert answer.usage == Usage(input_tokens=10, output_tokens=3)


@pytest.mark.parametrize("stop", ["end_turn", "max_tokens", "stop_sequence", "tool_use", None])
def test_parse_answer_stop_reason(stop: str | None) -> None:
    assert parse_answer(body(message([], stop_reason=stop))).stop_reason == stop


def test_parse_answer_without_model_or_stop_reason() -> None:
    raw = {"content": [{"type": "text", "text": "x"}]}
    answer = parse_answer(body(raw))
    assert (answer.text, answer.model, answer.stop_reason) == ("x", None, None)
    assert answer.usage is None


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"not json",
        b"<html><body>502 Bad Gateway</body></html>",
        b'{"content": [',
        b"[]",
        b'"a string"',
        b"null",
        b'{"type": "message"}',  # no content
        b'{"content": "text instead of blocks"}',
        b'{"content": null}',
        b'{"type": "error", "error": {"type": "api_error", "message": "x"}}',
    ],
)
def test_parse_answer_malformed(raw: bytes) -> None:
    with pytest.raises(MalformedAnswer):
        parse_answer(raw)


@pytest.mark.parametrize(
    "block",
    [
        {"type": "text", "text": None},
        {"type": "text", "text": 42},
        {"type": "text", "text": ["a"]},
    ],
)
def test_a_text_block_without_string_text_is_skipped_and_kept(block: dict[str, Any]) -> None:
    # Not a TypeError (an internal error, exit 1): the text is what the valid blocks say,
    # and the odd block stays in content_json for whoever wants to look.
    answer = parse_answer(body(message([block, {"type": "text", "text": "ok"}])))
    assert answer.text == "ok"
    assert orjson.loads(answer.content_json)[0] == block


# --- parse_usage ---------------------------------------------------------------------
# An answer that does not say what it used has usage None (its cost is unknown, never $0);
# a count that cannot be one makes the answer malformed (retried, never stored).


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (None, None),
        ("garbage", None),
        ([1, 2], None),
        (12, None),
        ({}, None),
        ({"input_tokens": 12}, None),  # no output count: not usage
        ({"output_tokens": 5}, None),
        ({"input_tokens": 12, "output_tokens": None}, None),
        ({"input_tokens": 12, "output_tokens": 5}, Usage(input_tokens=12, output_tokens=5)),
        ({"input_tokens": 0, "output_tokens": 0}, Usage()),  # zero is a count
        ({"input_tokens": 12.0, "output_tokens": 5}, Usage(input_tokens=12, output_tokens=5)),
        (
            {"input_tokens": 2**63 - 1, "output_tokens": 1},
            Usage(input_tokens=2**63 - 1, output_tokens=1),
        ),
        # the split given: 5m and 1h tokens as the API says
        (
            {
                "input_tokens": 3,
                "output_tokens": 7,
                "cache_creation_input_tokens": 300,
                "cache_read_input_tokens": 1000,
                "cache_creation": {
                    "ephemeral_5m_input_tokens": 100,
                    "ephemeral_1h_input_tokens": 200,
                },
                "service_tier": "standard",
            },
            Usage(3, 7, 300, 1000, 100, 200, "standard"),
        ),
        (
            {
                "input_tokens": 1,
                "output_tokens": 0,
                "cache_creation_input_tokens": 50,
                "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 50},
            },
            Usage(input_tokens=1, cache_creation_input_tokens=50, cache_creation_1h_tokens=50),
        ),
        # only the total given: no split claimed (priced at the TTL asked: test_pricing)
        (
            {"input_tokens": 4, "output_tokens": 0, "cache_creation_input_tokens": 80},
            Usage(input_tokens=4, cache_creation_input_tokens=80),
        ),
        (
            {"input_tokens": 0, "output_tokens": 0, "cache_creation_input_tokens": 80,
             "cache_creation": None},
            Usage(cache_creation_input_tokens=80),
        ),
        (
            {"input_tokens": 0, "output_tokens": 0, "cache_creation_input_tokens": 80,
             "cache_creation": {}},
            Usage(cache_creation_input_tokens=80),
        ),
        (
            {"input_tokens": 0, "output_tokens": 0, "cache_creation_input_tokens": 80,
             "cache_creation": "weird"},
            Usage(cache_creation_input_tokens=80),
        ),
        # optional counts that are null are zero; unknown fields are ignored
        (
            {"input_tokens": 9, "output_tokens": 1, "cache_read_input_tokens": None},
            Usage(input_tokens=9, output_tokens=1),
        ),
        (
            {"input_tokens": 9, "output_tokens": 1, "server_tool_use": {"web_search_requests": 2},
             "new": "x", "service_tier": 3},
            Usage(input_tokens=9, output_tokens=1),
        ),
        (
            {"service_tier": "batch", "input_tokens": 2, "output_tokens": 1},
            Usage(input_tokens=2, output_tokens=1, service_tier="batch"),
        ),
    ],
)  # fmt: skip
def test_parse_usage(raw: Any, expected: Usage | None) -> None:
    assert parse_usage(raw) == expected


IMPOSSIBLE = [
    ("input_tokens", -1),
    ("output_tokens", -5),
    ("output_tokens", "12"),
    ("input_tokens", "lots"),
    ("output_tokens", 1.5),
    ("output_tokens", 1e30),
    ("input_tokens", 2**63),
    ("output_tokens", True),
    ("input_tokens", False),
    ("output_tokens", [5]),
    ("output_tokens", {"n": 1}),
    ("cache_read_input_tokens", -1),
    ("cache_creation_input_tokens", "80"),
]


@pytest.mark.parametrize(("key", "value"), IMPOSSIBLE)
def test_impossible_usage_is_a_malformed_answer(key: str, value: Any) -> None:
    usage = {"input_tokens": 10, "output_tokens": 3, key: value}
    with pytest.raises(MalformedAnswer, match=rf"usage\.{key} is not a token count"):
        parse_usage(usage)
    with pytest.raises(MalformedAnswer):
        parse_answer(body(message([{"type": "text", "text": "x"}], usage=usage)))


@pytest.mark.parametrize("value", [-1, "3", 0.5, 1e30, True])
def test_an_impossible_cache_split_is_a_malformed_answer(value: Any) -> None:
    split = {"ephemeral_5m_input_tokens": value, "ephemeral_1h_input_tokens": 0}
    usage = {"input_tokens": 1, "output_tokens": 1, "cache_creation": split}
    with pytest.raises(MalformedAnswer, match=r"usage\.cache_creation\.ephemeral_5m"):
        parse_usage(usage)


def test_impossible_usage_is_shown_briefly() -> None:
    with pytest.raises(MalformedAnswer) as caught:
        parse_usage({"input_tokens": "x" * 10_000, "output_tokens": 1})
    assert len(str(caught.value)) < 100


@pytest.mark.parametrize("usage", [None, "garbage", {}, {"input_tokens": 3}], ids=repr)
def test_an_answer_without_usage_has_none(usage: Any) -> None:
    raw = message([{"type": "text", "text": "hi"}], usage=usage)
    assert parse_answer(body(raw)).usage is None
    del raw["usage"]
    assert parse_answer(body(raw)).usage is None


def test_model_and_stop_reason_that_are_not_text_count_as_absent() -> None:
    answer = parse_answer(body(message([], model={"a": 1}, stop_reason=5)))
    assert (answer.model, answer.stop_reason) == (None, None)


def test_answer_usage_with_cache_split() -> None:
    usage = {
        "input_tokens": 5,
        "output_tokens": 6,
        "cache_creation_input_tokens": 30,
        "cache_read_input_tokens": 40,
        "cache_creation": {"ephemeral_5m_input_tokens": 10, "ephemeral_1h_input_tokens": 20},
        "service_tier": "priority",
    }
    answer = parse_answer(body(message([], usage=usage)))
    assert answer.usage == Usage(5, 6, 30, 40, 10, 20, "priority")


# --- parse_error ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "raw", "kind", "message_parts"),
    [
        # Anthropic's shape
        (
            400,
            body(
                {
                    "type": "error",
                    "error": {"type": "invalid_request_error", "message": "max_tokens: bad"},
                    "request_id": "req_1",
                }
            ),
            "invalid_request_error",
            ["max_tokens: bad"],
        ),
        (
            529,
            body({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}),
            "overloaded_error",
            ["Overloaded"],
        ),
        (
            401,
            body({"type": "error", "error": {"type": "authentication_error", "message": "bad"}}),
            "authentication_error",
            ["bad"],
        ),
        # the gateway's shape: type, code and message
        (
            422,
            body(
                {
                    "error": {
                        "type": "invalid_request_error",
                        "code": "max_tokens_exceeded",
                        "message": "max_tokens exceeds the model's limit",
                        "request_id": "req_2",
                    }
                }
            ),
            "invalid_request_error",
            ["max_tokens exceeds the model's limit", "max_tokens_exceeded"],
        ),
        (
            429,
            body({"error": {"type": "rate_limit_error", "code": "rate_limit_exceeded"}}),
            "rate_limit_error",
            ["rate_limit_exceeded"],
        ),
        (
            502,
            body({"error": {"code": "upstream_error", "message": "upstream failed"}}),
            "upstream_error",
            ["upstream failed"],
        ),
        (
            500,
            body({"error": {"type": "api_error", "code": "api_error", "message": "boom"}}),
            "api_error",
            ["boom"],
        ),
        # {"error": "text"}
        (503, body({"error": "Service temporarily unavailable"}), "http_503", ["temporarily"]),
        # not JSON at all
        (
            502,
            b"<html><head><title>502 Bad Gateway</title></head></html>",
            "http_502",
            ["502 Bad Gateway"],
        ),
        (500, b"  Internal Server Error\n", "http_500", ["Internal Server Error"]),
        (504, b"", "http_504", ["504", "empty"]),
        (500, b"   \n", "http_500", ["500", "empty"]),
        (400, body({"error": {}}), "http_400", []),
        (400, body({"error": None}), "http_400", []),
        (400, body([1, 2]), "http_400", []),
        (400, b"\xff\xfe not utf-8", "http_400", []),
    ],
)
def test_parse_error(status: int, raw: bytes, kind: str, message_parts: list[str]) -> None:
    got_kind, got_message = parse_error(status, raw)
    assert got_kind == kind
    assert isinstance(got_message, str)
    for part in message_parts:
        assert part in got_message


def test_parse_error_message_of_an_html_page_is_bounded() -> None:
    page = b"<html>" + b"x" * 10_000 + b"</html>"
    _, message = parse_error(502, page)
    assert len(message) <= 200


def test_parse_error_gateway_code_is_not_repeated_when_it_is_the_type() -> None:
    raw = body({"error": {"type": "rate_limit_exceeded", "code": "rate_limit_exceeded"}})
    kind, message = parse_error(429, raw)
    assert kind == "rate_limit_exceeded"
    assert message.count("rate_limit_exceeded") <= 1


@pytest.mark.parametrize(
    "raw",
    [
        b"<html>\r\n<head><title>403 Forbidden</title></head>\r\n<body>cloudflare</body>\n</html>",
        b"Bad Gateway\n\nThe upstream server failed.\n",
    ],
    ids=["html-page", "plain-text"],
)
def test_parse_error_message_of_a_multiline_body_is_one_line(raw: bytes) -> None:
    # The message ends up in the error_message column and, when every answer is the same
    # error, in the CLI's one-line exit reason (ApiRejectsEverything): no line breaks.
    _, message = parse_error(403, raw)
    assert message
    assert "\n" not in message and "\r" not in message


# --- usage in streams and in the chat/completions format -----------------------------


def sse(*events: dict[str, Any]) -> bytes:
    return b"".join(
        b"event: " + e["type"].encode() + b"\ndata: " + orjson.dumps(e) + b"\n\n" for e in events
    )


def stream(start_usage: Any, delta_usage: Any) -> bytes:
    start: dict[str, Any] = {"model": "m", "content": []}
    if start_usage is not ...:
        start["usage"] = start_usage
    delta: dict[str, Any] = {"type": "message_delta", "delta": {"stop_reason": "end_turn"}}
    if delta_usage is not ...:
        delta["usage"] = delta_usage
    return sse(
        {"type": "message_start", "message": start},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text"}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "hi"}},
        {"type": "content_block_stop", "index": 0},
        delta,
        {"type": "message_stop"},
    )


@pytest.mark.parametrize(
    ("start_usage", "delta_usage", "expected"),
    [
        ({"input_tokens": 7, "output_tokens": 1}, {"output_tokens": 9}, Usage(7, 9)),
        ({"input_tokens": 7, "output_tokens": 1}, ..., Usage(7, 1)),
        ({"input_tokens": 7}, {"output_tokens": 9, "input_tokens": None}, Usage(7, 9)),
        (..., ..., None),
        (None, None, None),
        ("garbage", "garbage", None),
        ({"input_tokens": 7}, ..., None),  # never an output count
        (..., {"output_tokens": 9}, None),  # never an input count
    ],
)
def test_stream_usage(start_usage: Any, delta_usage: Any, expected: Usage | None) -> None:
    answer = parse_stream(stream(start_usage, delta_usage))
    assert answer.text == "hi" and answer.usage == expected


@pytest.mark.parametrize("value", [-3, "9", 2.5, 1e30, True])
def test_stream_with_impossible_usage_is_malformed(value: Any) -> None:
    with pytest.raises(MalformedAnswer, match=r"usage\.output_tokens"):
        parse_stream(stream({"input_tokens": 7, "output_tokens": 1}, {"output_tokens": value}))


def chat(usage: Any) -> bytes:
    answer: dict[str, Any] = {
        "model": "m",
        "choices": [{"message": {"content": "hi"}, "finish_reason": "stop"}],
    }
    if usage is not ...:
        answer["usage"] = usage
    return orjson.dumps(answer)


@pytest.mark.parametrize(
    ("usage", "expected"),
    [
        ({"prompt_tokens": 10, "completion_tokens": 2}, Usage(10, 2)),
        (
            {
                "prompt_tokens": 10,
                "completion_tokens": 2,
                "prompt_tokens_details": {"cached_tokens": 4},
            },
            Usage(6, 2, cache_read_input_tokens=4),
        ),
        (
            {"prompt_tokens": 10, "completion_tokens": 2, "prompt_tokens_details": None},
            Usage(10, 2),
        ),
        (..., None),
        (None, None),
        ("garbage", None),
        ({"prompt_tokens": 10}, None),
        ({"completion_tokens": 2}, None),
    ],
)
def test_chat_usage(usage: Any, expected: Usage | None) -> None:
    assert openai.parse_answer(chat(usage)).usage == expected


@pytest.mark.parametrize(
    "usage",
    [
        {"prompt_tokens": -1, "completion_tokens": 2},
        {"prompt_tokens": "10", "completion_tokens": 2},
        {"prompt_tokens": 10, "completion_tokens": 1e30},
        {"prompt_tokens": 10, "completion_tokens": 0.5},
        {"prompt_tokens": 10, "completion_tokens": False},
        {
            "prompt_tokens": 10,
            "completion_tokens": 2,
            "prompt_tokens_details": {"cached_tokens": -1},
        },
        {"prompt_tokens": 3, "completion_tokens": 2, "prompt_tokens_details": {"cached_tokens": 4}},
    ],
)
def test_chat_with_impossible_usage_is_malformed(usage: dict[str, Any]) -> None:
    with pytest.raises(MalformedAnswer):
        openai.parse_answer(chat(usage))


# --- the registry: every provider whole, its capabilities consistent --------------------

CACHED_BODY = {
    "model": "m",
    "max_tokens": 16,
    "system": [{"type": "text", "text": "guide", "cache_control": {"type": "ephemeral"}}],
    "messages": [{"role": "user", "content": "hi"}],
}


@pytest.mark.parametrize("name", sorted(PROVIDERS))
def test_every_registered_provider_is_whole_and_its_capabilities_consistent(name: str) -> None:
    provider = provider_for(name)
    assert provider.name == name and PROVIDERS[name] is provider
    for field in fields(Provider):
        assert getattr(provider, field.name) is not None, field.name
    assert isinstance(provider.supports_batches, bool)
    assert isinstance(provider.supports_prompt_cache, bool)
    rendered = provider.body(dict(CACHED_BODY))
    if provider.supports_batches:  # a batch request's params are its Messages body
        assert provider.endpoint("http://h") == "http://h/v1/messages"
        assert rendered == CACHED_BODY
    if provider.supports_prompt_cache:  # the breakpoint `auto` marks is sent where it is
        assert rendered["system"] == CACHED_BODY["system"]
    assert provider.estimate_input_tokens(dict(CACHED_BODY)) > 0


def test_some_provider_offers_each_capability() -> None:
    """Batch mode and `cache = "auto"` each have a format to run in."""
    assert any(p.supports_batches for p in PROVIDERS.values())
    assert any(p.supports_prompt_cache for p in PROVIDERS.values())
