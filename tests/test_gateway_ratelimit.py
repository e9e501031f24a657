"""Rate-limit headers a gateway passes on under another name are read like the originals.

LiteLLM's proxy (litellm/llms/anthropic/common_utils.py, process_anthropic_headers) sends
every header of Anthropic's answer on as `llm_provider-<name>`, and copies requests-limit /
-remaining and tokens-limit / -remaining under OpenAI's `x-ratelimit-*` names, so its
`x-ratelimit-limit-tokens` is Anthropic's tokens-limit (the tightest of the input / output
limits), not a gateway's input + output TPM.
"""

from __future__ import annotations

import asyncio

import httpx
import orjson
import pytest

from pipeline.send.client import ApiClient
from pipeline.send.httpx_transport import HttpxTransport
from pipeline.send.limits import Limiter
from pipeline.send.retry import explained_429
from tests.conftest import FakeTime

P = "llm_provider-anthropic-ratelimit-"
LITELLM = {  # tier 1 Sonnet: 50 RPM, 30k input, 8k output tokens a minute
    f"{P}requests-limit": "50",
    f"{P}requests-remaining": "49",
    f"{P}input-tokens-limit": "30000",
    f"{P}output-tokens-limit": "8000",
    f"{P}tokens-limit": "8000",
    "x-ratelimit-limit-requests": "50",  # LiteLLM's copies under OpenAI's names
    "x-ratelimit-remaining-requests": "49",
    "x-ratelimit-limit-tokens": "8000",
    "llm_provider-request-id": "req_1",
}

LEARNED = {
    "litellm: the provider's limits, its tokens copy not taken for a combined TPM": (
        LITELLM, {"requests": 50, "input_tokens": 30000, "output_tokens": 8000}),
    "passed on only, no copies": (
        {f"{P}requests-limit": "1000", f"{P}input-tokens-limit": "450000",
         f"{P}output-tokens-limit": "90000"},
        {"requests": 1000, "input_tokens": 450000, "output_tokens": 90000}),
    "a header under its own name wins over a passed-on copy": (
        {"anthropic-ratelimit-requests-limit": "1000", f"{P}requests-limit": "4000",
         f"{P}input-tokens-limit": "450000"},
        {"requests": 1000, "input_tokens": 450000}),
    "only the tightest token limit passed on: it caps input + output": (
        {f"{P}requests-limit": "50", f"{P}tokens-limit": "8000"},
        {"requests": 50, "tokens": 8000}),
    "an upstream gateway's own headers passed on": (
        {"llm_provider-x-ratelimit-limit-requests": "600",
         "llm_provider-x-ratelimit-limit-tokens": "600000"},
        {"requests": 600, "tokens": 600000}),
}  # fmt: skip


@pytest.mark.parametrize(("headers", "expected"), LEARNED.values(), ids=LEARNED)
def test_passed_on_limits_are_learned(
    ft: FakeTime, headers: dict[str, str], expected: dict[str, float]
) -> None:
    lim = Limiter(clock=ft.clock, sleep=ft.sleep)
    lim.learn(headers)
    assert lim.limits == expected
    for kind, per_minute in expected.items():  # the buckets pace at them
        assert lim.buckets[kind].rate == pytest.approx(per_minute / 60)


@pytest.mark.parametrize(
    "headers",
    [
        {f"{P}input-tokens-remaining": "0", f"{P}requests-remaining": "12"},
        {f"{P}requests-remaining": "0"},
        {"llm_provider-x-ratelimit-remaining-tokens": "0"},
    ],
)
def test_a_429_with_a_passed_on_empty_bucket_is_explained(headers: dict[str, str]) -> None:
    assert explained_429(headers, "rate limited")


def client_over(*answers: httpx.Response, concurrency: int = 8) -> ApiClient:
    time = FakeTime()
    script = list(answers)
    transport = HttpxTransport(transport=httpx.MockTransport(lambda request: script.pop(0)))
    limiter = Limiter(concurrency=concurrency, clock=time.clock, sleep=time.sleep)
    return ApiClient(
        transport,
        "http://gateway/v1/messages",
        {"authorization": "Bearer k"},
        limiter,
        max_retries=4,
        clock=time.clock,
        sleep=time.sleep,
        jitter=lambda: 0.0,
    )


OK = {
    "model": "claude-sonnet-4-6",
    "content": [{"type": "text", "text": "positive"}],
    "stop_reason": "end_turn",
    "usage": {"input_tokens": 12, "output_tokens": 1},
}


def test_the_client_adopts_limits_a_gateway_passed_on() -> None:
    # as a server may spell them: the transport lower-cases header names
    headers = {name.replace("llm_provider", "LLM_Provider").title(): value
               for name, value in LITELLM.items()}  # fmt: skip
    client = client_over(httpx.Response(200, content=orjson.dumps(OK), headers=headers))
    result = asyncio.run(client.call(b"{}"))
    assert result.answer is not None
    assert client.limiter.limits == {"requests": 50, "input_tokens": 30000, "output_tokens": 8000}


def test_behind_a_gateway_that_passes_none_the_cap_is_learned_from_its_429s() -> None:
    """Unchanged: no limit is told, and a 429 naming no empty bucket is a cap on requests
    in flight (pressure.py learns it), not a rate to slow down to."""
    refused = httpx.Response(
        429,
        json={"error": {"type": "rate_limit_error", "message": "too many requests"}},
        headers={"retry-after": "1", "llm_provider-request-id": "req_1", "x-litellm-version": "1"},
    )
    client = client_over(refused, httpx.Response(200, content=orjson.dumps(OK)))
    gate = client.limiter.gate
    assert gate is not None
    asyncio.run(client.call(b"{}"))
    assert client.limiter.limits == {} and client.limiter.factor == 1.0
    assert gate.limit < 8 and client.limiter.cooldowns == 0
