"""Input tokens counted by the API's free `POST /v1/messages/count_tokens` endpoint, for
`pipeline estimate` when the job sets `[estimate] count_tokens = true`.

Requests go out a few at a time through the same client as a run: one retry loop, the same
limiter rules (the endpoint has rate limits of its own, learned from its headers) and key
scrubbing; an answer that is not worth another attempt stops the estimate with the API's
message (`CountFailed`, exit 4).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import orjson

from pipeline.errors import CountFailed
from pipeline.job.model import Job
from pipeline.providers import anthropic
from pipeline.providers.base import Answer, MalformedAnswer, Usage
from pipeline.providers.usage_fields import token_count
from pipeline.send.client import ApiClient
from pipeline.send.limits import Limiter
from pipeline.send.transport import AiohttpTransport

# fields count_tokens does not take
NOT_COUNTED = (
    "max_tokens",
    "temperature",
    "top_p",
    "top_k",
    "stop_sequences",
    "stream",
    "metadata",
    "service_tier",
)
IN_FLIGHT = 8


class TokenCounter:
    def __init__(self, job: Job, base_url: str, api_key: str) -> None:
        self.url = base_url.rstrip("/") + anthropic.MESSAGES_PATH + "/count_tokens"
        self.headers = anthropic.request_headers(job.api.auth, api_key, job.api.anthropic_version)
        self.api_key = api_key
        self.max_retries = job.limits.max_retries

    def count(self, bodies: Sequence[dict[str, Any]]) -> list[int]:
        """Input tokens of each request body, in order."""
        return asyncio.run(self._count_all(bodies))

    async def _count_all(self, bodies: Sequence[dict[str, Any]]) -> list[int]:
        transport = AiohttpTransport(
            max_connections=IN_FLIGHT, connect_timeout_s=10, read_timeout_s=60
        )
        client = ApiClient(  # the one retry loop: the same policy as a run's requests
            transport,
            self.url,
            self.headers,
            Limiter(concurrency=IN_FLIGHT),
            max_retries=self.max_retries,
            parse=parse_count,
            secret=self.api_key,
            deadline_s=60.0,
        )
        try:
            return list(await asyncio.gather(*(self._count_one(client, b) for b in bodies)))
        finally:
            await transport.aclose()

    async def _count_one(self, client: ApiClient, body: dict[str, Any]) -> int:
        payload = orjson.dumps({k: v for k, v in body.items() if k not in NOT_COUNTED})
        result = await client.call(payload)
        if result.answer is None or result.answer.usage is None:
            raise CountFailed(
                f"count_tokens failed: HTTP {result.http_status} {result.error_type}: "
                f"{result.error_message}"
            )
        return result.answer.usage.input_tokens


def parse_count(body: bytes) -> Answer:
    """`{"input_tokens": N}` as an Answer whose usage holds N (so the client's accounting
    and retry policy apply unchanged); anything else is a malformed answer."""
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise MalformedAnswer(f"count_tokens answer is not JSON ({e})") from None
    if not isinstance(parsed, dict):
        raise MalformedAnswer("count_tokens answer is not an object")
    count = token_count(parsed, "input_tokens", "count_tokens")
    if count is None:
        raise MalformedAnswer("count_tokens answer has no input_tokens")
    return Answer("", "[]", None, None, Usage(input_tokens=count), [])
