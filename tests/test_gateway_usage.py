"""Usage as gateways report it (LiteLLM's proxy, OpenRouter), priced exactly in both formats.

LiteLLM's OpenAI-format usage for a Claude answer (litellm/llms/anthropic/chat/
transformation.py, calculate_usage): prompt_tokens = input + cache writes + cache reads;
prompt_tokens_details {cached_tokens: reads, cache_creation_tokens: writes,
cache_creation_token_details {ephemeral_5m_input_tokens, ephemeral_1h_input_tokens},
text_tokens: input}; the Anthropic counts repeated at the top level
(cache_creation_input_tokens, cache_read_input_tokens). Some LiteLLM versions left the
writes out of prompt_tokens. Expected costs are computed here from the published prices
per million tokens, in Decimal, not by the pricing code.
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any

import orjson
import pytest

from pipeline.job.model import ExtractSpec
from pipeline.labels.extract import Extractor
from pipeline.pricing import load_price_table
from pipeline.providers import anthropic, openai, usage_fields
from pipeline.providers.base import Answer, MalformedAnswer
from pipeline.run.outcome import RecordBuilder
from pipeline.send.client import CallResult

MODEL = "claude-sonnet-4-6"
INPUT, OUTPUT = Decimal("3"), Decimal("15")  # USD per million tokens (API-NOTES)
MILLION = Decimal(1_000_000)


def expected_costs(inp: int, out: int, w5: int, w1h: int, reads: int) -> dict[str, float]:
    parts = {
        "input_cost_usd": inp * INPUT,
        "output_cost_usd": out * OUTPUT,
        "cache_write_cost_usd": w5 * INPUT * Decimal("1.25") + w1h * INPUT * 2,
        "cache_read_cost_usd": reads * INPUT * Decimal("0.1"),
    }
    exact = {column: value / MILLION for column, value in parts.items()}
    exact["cost_usd"] = sum(exact.values(), Decimal(0))
    return {column: float(value) for column, value in exact.items()}


def litellm(inp: int, out: int, writes: int, reads: int, split: tuple[int, int] | None):
    """LiteLLM's OpenAI-format usage of a Claude answer with these counts."""
    details: dict[str, Any] = {
        "cached_tokens": reads,
        "cache_creation_tokens": writes,
        "text_tokens": inp,
        "audio_tokens": None,
        "image_tokens": None,
    }
    if split is not None:
        details["cache_creation_token_details"] = {
            "ephemeral_5m_input_tokens": split[0],
            "ephemeral_1h_input_tokens": split[1],
        }
    return {
        "prompt_tokens": inp + writes + reads,
        "completion_tokens": out,
        "total_tokens": inp + writes + reads + out,
        "prompt_tokens_details": details,
        "completion_tokens_details": {"reasoning_tokens": 0, "text_tokens": out},
        "cache_creation_input_tokens": writes,
        "cache_read_input_tokens": reads,
    }


def chat_answer(usage: dict[str, Any]) -> bytes:
    choice = {"message": {"content": "positive"}, "finish_reason": "stop"}
    return orjson.dumps({"model": MODEL, "choices": [choice], "usage": usage})


def messages_answer(usage: dict[str, Any]) -> bytes:
    content = [{"type": "text", "text": "positive"}]
    return orjson.dumps({"model": MODEL, "content": content, "stop_reason": "end_turn",
                         "usage": usage})  # fmt: skip


def record(answer: Answer, write_ttl: str | None) -> dict[str, Any]:
    builder = RecordBuilder(["id"], Extractor(ExtractSpec()), load_price_table())
    builder.write_ttl = lambda model: write_ttl
    result = CallResult(answer, 200, None, None, 1, "req_1", 1.0)
    return builder.from_call({"_row": 0, "id": 0}, MODEL, result)


# (format, usage as the gateway sends it, TTL the request asked for,
#  expected (input, output, 5m writes, 1h writes, reads))
CASES = {
    "litellm cache write, 5m split": (
        "openai", litellm(120, 7, 4000, 0, (4000, 0)), None, (120, 7, 4000, 0, 0)),
    "litellm cache write, 1h split": (
        "openai", litellm(120, 7, 4000, 0, (0, 4000)), "1h", (120, 7, 0, 4000, 0)),
    "litellm cache write, no split, 5m asked": (
        "openai", litellm(120, 7, 4000, 0, None), None, (120, 7, 4000, 0, 0)),
    "litellm cache write, no split, 1h asked": (
        "openai", litellm(120, 7, 4000, 0, None), "1h", (120, 7, 0, 4000, 0)),
    "litellm writes and reads in one answer": (
        "openai", litellm(50, 9, 1000, 3000, (1000, 0)), None, (50, 9, 1000, 0, 3000)),
    "litellm's logged shape: details only (issue 11364's counts)": (
        "openai",
        {"prompt_tokens": 98805, "completion_tokens": 5120, "total_tokens": 103925,
         "prompt_tokens_details": {"cached_tokens": 66360, "cache_creation_tokens": 32435}},
        None, (10, 5120, 32435, 0, 66360)),
    "anthropic names at the top level only": (
        "openai",
        {"prompt_tokens": 7120, "completion_tokens": 3, "cache_creation_input_tokens": 4000,
         "cache_read_input_tokens": 3000},
        None, (120, 3, 4000, 0, 3000)),
    "openrouter's cache_write_tokens": (
        "openai",
        {"prompt_tokens": 1300, "completion_tokens": 4,
         "prompt_tokens_details": {"cached_tokens": 200, "cache_write_tokens": 1000}},
        None, (100, 4, 1000, 0, 200)),
    "older litellm: writes not in prompt_tokens": (
        "openai",
        {"prompt_tokens": 3020, "completion_tokens": 6, "cache_creation_input_tokens": 4000,
         "prompt_tokens_details": {"cached_tokens": 3000}},
        None, (20, 6, 4000, 0, 3000)),
    "messages format, openai-style cache names": (
        "anthropic",
        {"input_tokens": 10, "output_tokens": 5,
         "prompt_tokens_details": {"cached_tokens": 500, "cache_creation_tokens": 300}},
        None, (10, 5, 300, 0, 500)),
    "messages format, litellm's split under prompt_tokens_details": (
        "anthropic",
        {"input_tokens": 10, "output_tokens": 5, "cache_creation_input_tokens": 300,
         "prompt_tokens_details": {"cache_creation_token_details": {
             "ephemeral_5m_input_tokens": 100, "ephemeral_1h_input_tokens": 200}}},
        None, (10, 5, 100, 200, 0)),
}  # fmt: skip


@pytest.mark.parametrize(("fmt", "usage", "ttl", "tokens"), CASES.values(), ids=CASES)
def test_gateway_usage_is_priced_exactly(
    fmt: str, usage: dict[str, Any], ttl: str | None, tokens: tuple[int, ...]
) -> None:
    raw = chat_answer(usage) if fmt == "openai" else messages_answer(usage)
    answer = (openai if fmt == "openai" else anthropic).parse_answer(raw)
    row = record(answer, ttl)
    w5, w1h = tokens[2:4]
    got = (
        row["input_tokens"],
        row["output_tokens"],
        row["cache_creation_5m_tokens"],
        row["cache_creation_1h_tokens"],
        row["cache_read_input_tokens"],
    )
    assert got == tokens
    assert row["cache_creation_input_tokens"] == w5 + w1h
    # every input token counted once: input + writes + reads is all the prompt
    assert {c: row[c] for c in expected_costs(*tokens)} == expected_costs(*tokens)


# --- usage we do not read is named, once ------------------------------------------------

# (usage, the fields named in a warning); each also carries fields known to be harmless
HARMLESS: dict[str, Any] = {
    "total_tokens": 30,
    "completion_tokens_details": {"reasoning_tokens": 3, "brand_new_tokens": 1},
    "prompt_tokens_details": {"audio_tokens": 0, "text_tokens": 20},
    "server_tool_use": {"web_search_requests": 1},
    "cost": 0.01,
    "is_byok": False,
}
UNKNOWN = [
    (
        {"prompt_tokens": 20, "completion_tokens": 10, "prompt_cache_hit_tokens": 5},
        {"prompt_cache_hit_tokens"},
    ),
    (
        {"input_tokens": 20, "output_tokens": 10, "cache_creation_input_tokens": 8,
         "cache_creation": {"ephemeral_5m_input_tokens": 4, "ephemeral_24h_input_tokens": 4}},
        {"cache_creation.ephemeral_24h_input_tokens"},
    ),
    (
        {"prompt_tokens": 20, "completion_tokens": 10,
         "input_tokens_details": {"cached_tokens": 5}, "cache_storage_tokens": 2.0},
        {"input_tokens_details.cached_tokens", "cache_storage_tokens"},
    ),
]  # fmt: skip


@pytest.mark.parametrize(("usage", "named"), UNKNOWN)
def test_a_usage_field_we_do_not_read_is_warned_about_once(
    usage: dict[str, Any], named: set[str], capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.setattr(usage_fields, "_warned", set())
    usage = {**usage, **{k: v for k, v in HARMLESS.items() if k not in usage}}
    for _ in range(3):  # every answer of a job carries it: said once
        if "prompt_tokens" in usage:
            openai.parse_answer(chat_answer(usage))
        else:
            anthropic.parse_answer(messages_answer(usage))
    lines = capsys.readouterr().err.splitlines()
    assert sorted(line.split("usage.")[1].split(";")[0] for line in lines) == sorted(named)
    assert all(line.startswith("warning:") for line in lines)


def test_the_same_unknown_field_in_either_format_is_said_once(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(usage_fields, "_warned", set())
    openai.parse_answer(chat_answer({"prompt_tokens": 2, "completion_tokens": 1,
                                     "cache_miss_tokens": 2}))  # fmt: skip
    anthropic.parse_answer(messages_answer({"input_tokens": 2, "output_tokens": 1,
                                            "cache_miss_tokens": 2}))  # fmt: skip
    assert capsys.readouterr().err.count("cache_miss_tokens") == 1


@pytest.mark.parametrize(
    ("fmt", "usage", "where"),
    [
        ("openai", {"prompt_tokens": 9, "completion_tokens": 1,
                    "prompt_tokens_details": {"cache_creation_tokens": -4}},
         "usage.prompt_tokens_details.cache_creation_tokens"),
        ("openai", {"prompt_tokens": 9, "completion_tokens": 1, "cache_read_input_tokens": "4"},
         "usage.cache_read_input_tokens"),
        ("anthropic", {"input_tokens": 9, "output_tokens": 1,
                       "prompt_tokens_details": {"cache_creation_token_details": {
                           "ephemeral_1h_input_tokens": 2.5}}},
         "usage.prompt_tokens_details.cache_creation_token_details.ephemeral_1h_input_tokens"),
    ],
)  # fmt: skip
def test_an_impossible_count_under_a_gateways_name_is_malformed(
    fmt: str, usage: dict[str, Any], where: str
) -> None:
    raw = chat_answer(usage) if fmt == "openai" else messages_answer(usage)
    with pytest.raises(MalformedAnswer, match=re.escape(f"{where} is not a token count")):
        (openai if fmt == "openai" else anthropic).parse_answer(raw)
