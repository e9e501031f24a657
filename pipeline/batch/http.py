"""The Message Batches endpoints: create, get, list, cancel and results (API-NOTES.md).

Over httpx rather than the aiohttp pool of online rows: a batch run makes a handful of
calls (one create per 100,000 rows, a poll every `poll_s`), so the pool's throughput does
not matter here, and httpx gives the same seam for tests (`transport=MockTransport`).
Transient answers (429, 5xx, no answer) are retried with the online retry policy, except
a create's: a create whose answer never came may have made the batch, so it is raised as
`CreateUnconfirmed` for the runner to look for it in the list before it creates again.
Redirects are never followed and results are fetched from the job's own base_url whatever
`results_url` names, so the key goes to no other host. Every error text and result line is
scrubbed of the key where it enters.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
import time
from collections.abc import AsyncIterator, Mapping
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
import orjson

from pipeline.errors import BatchApiError, CreateUnconfirmed, first_line
from pipeline.providers.anthropic import parse_error
from pipeline.send.retry import retry_delay, should_retry
from pipeline.send.scrub import Scrubber

BATCHES_PATH = "/v1/messages/batches"
PAGE = 100  # batches a list call asks for
_CUSTOM_ID_FIELD = re.compile(rb'"custom_id"\s*:\s*"([a-zA-Z0-9_-]{1,64})"')


async def _one(first: bytes, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    yield first
    async for chunk in rest:
        yield chunk


def unix_time(text: Any) -> float | None:
    """An RFC 3339 time of the API (`2026-12-01T13:20:00Z`) as UNIX time, None if unreadable."""
    if not isinstance(text, str):
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


class BatchApi:
    def __init__(
        self,
        base_url: str,
        headers: Mapping[str, str],
        *,
        secret: str | None,
        timeout_s: float = 120.0,
        connect_timeout_s: float = 10.0,
        max_retries: int = 8,
        max_line_bytes: int = 32 * 1024 * 1024,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base = base_url.rstrip("/")
        self.headers = dict(headers)
        self.scrub = Scrubber(secret)
        self.max_retries = max_retries
        self.max_line_bytes = max_line_bytes
        self.client = httpx.AsyncClient(
            transport=transport,
            timeout=httpx.Timeout(timeout_s, connect=connect_timeout_s),
            follow_redirects=False,
            trust_env=False,  # as the online pool: no proxy from the environment sees the key
        )
        self.calls = 0
        self.server_offset_s = 0.0  # the server's clock minus ours, from its Date header

    async def aclose(self) -> None:
        await self.client.aclose()

    async def create(self, body: bytes) -> dict[str, Any]:
        return await self._call("POST", BATCHES_PATH, body, creating=True)

    async def get(self, batch_id: str) -> dict[str, Any]:
        return await self._call("GET", f"{BATCHES_PATH}/{batch_id}")

    async def cancel(self, batch_id: str) -> dict[str, Any]:
        return await self._call("POST", f"{BATCHES_PATH}/{batch_id}/cancel", b"")

    async def probe(self) -> None:
        """One list call: does this base_url serve batches, and does it take the key?"""
        await self._call("GET", f"{BATCHES_PATH}?limit=1")

    async def created_since(self, since: float) -> list[dict[str, Any]]:
        """The account's batches created at or after `since` (UNIX time), newest first."""
        found: list[dict[str, Any]] = []
        after: str | None = None
        while True:
            query = f"?limit={PAGE}" + (f"&after_id={after}" if after else "")
            page = await self._call("GET", BATCHES_PATH + query)
            data = [b for b in page.get("data") or [] if isinstance(b, dict)]
            for batch in data:
                created = unix_time(batch.get("created_at"))
                if created is not None and created < since:
                    return found  # newest first: the rest are older still
                found.append(batch)
            after = page.get("last_id")
            if not page.get("has_more") or not data or not isinstance(after, str):
                return found

    async def results(self, batch_id: str) -> AsyncIterator[bytes]:
        """The batch's result lines, as they arrive (the file is never held whole)."""
        url = f"{self.base}{BATCHES_PATH}/{batch_id}/results"
        try:
            async with self.client.stream("GET", url, headers=self.headers) as response:
                if response.status_code != 200:
                    body = await response.aread()
                    raise self._error(response.status_code, body, "GET results")
                async for line in self._lines(response.aiter_bytes()):
                    yield line
        except httpx.HTTPError as e:
            message = f"downloading the results of {batch_id}: {first_line(e)}"
            raise BatchApiError(self.scrub.text(message)) from e

    async def _lines(self, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        pending = b""
        async for chunk in chunks:
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                if line.strip():
                    yield self._capped(line)
            if len(pending) > self.max_line_bytes:  # never held whole: its row is an error
                yield self._capped(pending)
                async for line in self._rest_of_line(chunks):
                    yield line
                return
        if pending.strip():
            yield self._capped(pending)

    async def _rest_of_line(self, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """Skip what is left of an over-long line, then go on with the lines after it."""
        async for chunk in chunks:
            if b"\n" in chunk:
                async for line in self._lines(_one(chunk.split(b"\n", 1)[1], chunks)):
                    yield line
                return

    def _capped(self, line: bytes) -> bytes:
        """The line, scrubbed; past max_answer_bytes, an errored result for its row in its
        place (as an online answer over the cap is), so the batch can still be collected."""
        if len(line) <= self.max_line_bytes:
            return self.scrub.raw(line)
        found = _CUSTOM_ID_FIELD.search(line[:1000])
        error = {
            "type": "answer_too_large",
            "message": f"the result line is over max_answer_bytes ({self.max_line_bytes:,})",
        }
        return orjson.dumps({
            "custom_id": found.group(1).decode() if found else "",
            "result": {"type": "errored", "error": {"type": "error", "error": error}},
        })  # fmt: skip

    async def _call(
        self, method: str, path: str, body: bytes | None = None, *, creating: bool = False
    ) -> dict[str, Any]:
        """One call, with the retries of transient answers and of no answer at all (one
        loop for both: a create's are never retried, it may have been made)."""
        what = f"{method} {path.split('?')[0]}"
        for retries in range(self.max_retries + 1):
            last = retries == self.max_retries
            try:
                status, headers, data = await self._exchange(method, path, body)
            except httpx.HTTPError as e:
                message = self.scrub.text(
                    f"{what}: no answer ({first_line(e) or e.__class__.__name__})"
                )
                if creating:
                    raise CreateUnconfirmed(message) from e
                if last:
                    raise BatchApiError(message) from e
                await asyncio.sleep(
                    retry_delay(retries, {}, now=time.time(), jitter=random.random())
                )
                continue
            if 200 <= status < 300:
                return self._json(data, what, creating)
            if creating and status >= 500:  # made or not? only the list can tell
                raise CreateUnconfirmed(f"{what}: HTTP {status}", status)
            if last or not should_retry(status, headers):
                raise self._error(status, data, what)
            delay = retry_delay(retries, headers, now=time.time(), jitter=random.random())
            await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    async def _exchange(
        self, method: str, path: str, body: bytes | None
    ) -> tuple[int, Mapping[str, str], bytes]:
        headers = (
            self.headers if body is None else {**self.headers, "content-type": "application/json"}
        )
        self.calls += 1
        response = await self.client.request(
            method, self.base + path, content=body, headers=headers
        )
        self._note_clock(response.headers.get("date"))
        return response.status_code, response.headers, response.content

    def _note_clock(self, date: str | None) -> None:
        """How far the server's clock is from ours (to 1 s): batches' created_at are its."""
        if not date:
            return
        with contextlib.suppress(TypeError, ValueError, IndexError):
            self.server_offset_s = parsedate_to_datetime(date).timestamp() - time.time()

    def _json(self, data: bytes, what: str, creating: bool) -> dict[str, Any]:
        try:
            parsed = orjson.loads(self.scrub.raw(data))
        except orjson.JSONDecodeError:
            parsed = None
        if not isinstance(parsed, dict):
            error = CreateUnconfirmed if creating else BatchApiError
            raise error(f"{what}: the answer is not a JSON object")
        scrubbed: dict[str, Any] = self.scrub.value(parsed)
        return scrubbed

    def _error(self, status: int, body: bytes, what: str) -> BatchApiError:
        if 300 <= status < 400:
            return BatchApiError(f"{what}: redirected (HTTP {status}), not followed", status)
        kind, message = parse_error(status, self.scrub.raw(body))
        text = self.scrub.text(f"{what}: HTTP {status} {kind}: {message}")
        return BatchApiError(text, status, self.scrub.text(kind))
