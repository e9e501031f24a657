"""Input tokens counted by the API's free `POST /v1/messages/count_tokens` endpoint, for
`pipeline estimate` when the job sets `[estimate] count_tokens = true`.

Requests go out a few at a time through the same limiter and retry policy as a run (the
endpoint has rate limits of its own, learned from its headers); an answer that is not
retryable stops the estimate with the API's message.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Sequence
from typing import Any

import orjson

from pipeline.errors import ApiRejectsEverything, TransportError
from pipeline.job import Job
from pipeline.limits import Limiter
from pipeline.providers import anthropic
from pipeline.retry import retry_after_s, retry_delay, should_retry
from pipeline.transport import AiohttpTransport

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
        self.max_retries = job.limits.max_retries
        self.limiter = Limiter(concurrency=IN_FLIGHT)

    def count(self, bodies: Sequence[dict[str, Any]]) -> list[int]:
        """Input tokens of each request body, in order."""
        return asyncio.run(self._count_all(bodies))

    async def _count_all(self, bodies: Sequence[dict[str, Any]]) -> list[int]:
        transport = AiohttpTransport(
            max_connections=IN_FLIGHT, connect_timeout_s=10, read_timeout_s=60
        )
        try:
            return list(await asyncio.gather(*(self._count_one(transport, b) for b in bodies)))
        finally:
            await transport.aclose()

    async def _count_one(self, transport: AiohttpTransport, body: dict[str, Any]) -> int:
        payload = orjson.dumps({k: v for k, v in body.items() if k not in NOT_COUNTED})
        for attempt in range(self.max_retries + 1):
            ticket = await self.limiter.acquire()
            status, headers = None, {}
            try:
                response = await transport.post(self.url, self.headers, payload)
                status, headers = response.status, response.headers
                if status == 200:
                    return int(orjson.loads(response.body)["input_tokens"])
                kind, message = anthropic.parse_error(status, response.body)
            except TransportError as e:
                kind, message = "connection_error", str(e)
            finally:
                self.limiter.finish(ticket)
                self.limiter.learn(headers)
            if status == 429:
                self.limiter.rate_limited(retry_after_s(headers, time.time()) or 1.0)
            if not should_retry(status, headers) or attempt == self.max_retries:
                raise ApiRejectsEverything(f"count_tokens failed: HTTP {status} {kind}: {message}")
            await asyncio.sleep(
                retry_delay(attempt, headers, now=time.time(), jitter=random.random())
            )
        raise AssertionError("unreachable")
