"""The Message Batches endpoints: create, get, list, cancel and results (API-NOTES.md).

Over httpx rather than the aiohttp pool of online rows: a batch run makes a handful of
calls (one create per 100,000 rows, a poll every `poll_s`), so the pool's throughput does
not matter here, and httpx gives the same seam for tests (`transport=MockTransport`).
Transient answers (429, 5xx, no answer) are retried by the online retry loop and policy
(`retry.retrying`), except a create's: a create whose answer never came (or was a 5xx, 408
or 409: `retry.TRANSIENCE`'s maybe_made) may have made the batch, so it is raised as
`CreateUnconfirmed` for the runner to look for it in the list before it creates again; one
answered without a batch id is `CreateWithoutId`.
Every wait (a call in flight, a pause between retries, a download) ends at once when the
run is interrupted (`interrupt`): a create cut short is looked for by the next run. Batch
mode's time is one seam, `Clock` (UNIX time and a pause), given to BatchApi and read
through it by the rest of batch/.
Redirects are never followed and results are fetched from the job's own base_url whatever
`results_url` names, so the key goes to no other host. Every error text and result line is
scrubbed of the key where it enters.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from email.utils import parsedate_to_datetime
from functools import partial
from typing import Any, TypeVar

import httpx
import orjson

from pipeline.errors import (
    ApiRejectsEverything,
    BatchApiError,
    CreateUnconfirmed,
    CreateWithoutId,
    JobStopped,
    UsageError,
    first_line,
)
from pipeline.providers.anthropic import parse_error
from pipeline.send.retry import Verdict, retrying, should_retry, transience
from pipeline.send.scrub import Scrubber

BATCHES_PATH = "/v1/messages/batches"
PAGE = 100  # batches a list call asks for
MAX_PAGES = 200  # a listing since an intent that goes on longer is the server's fault
_T = TypeVar("_T")
Exchanged = tuple[int, Mapping[str, str], bytes]  # an answer: status, headers, body
_CUSTOM_ID_FIELD = re.compile(rb'"custom_id"\s*:\s*"([a-zA-Z0-9_-]{1,64})"')
_ID_OVERLAP = 200  # bytes kept between chunks: a custom_id field split across two


def _custom_id_in(data: bytes) -> str | None:
    """The custom_id a result line names (the first such field: a line's own comes
    before anything inside its answer, or after it, never both ways)."""
    found = _CUSTOM_ID_FIELD.search(data)
    return found.group(1).decode() if found else None


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


@dataclass(frozen=True)
class Clock:
    """Batch mode's time: UNIX time and a pause, asyncio's by default. A test's fake moves
    both together, so a wait is skipped by time passing, never by a setting changed."""

    now: Callable[[], float] = time.time
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep


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
        clock: Clock | None = None,
    ) -> None:
        self.base = base_url.rstrip("/")
        self.clock = clock or Clock()
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
        self.stopped: JobStopped | None = None
        self._stop = asyncio.Event()

    def interrupt(self, stop: JobStopped) -> None:
        """End every wait now, in flight or to come, with `stop` raised (a signal's
        Interrupted; an output URL whose lease could run out)."""
        self.stopped = stop
        self._stop.set()

    async def unless_stopped(self, awaitable: Awaitable[_T]) -> _T:
        """`awaitable`'s result, unless the run is interrupted first (then it is cancelled)."""
        if self.stopped is not None:
            if inspect.iscoroutine(awaitable):
                awaitable.close()  # never started
            raise self.stopped
        task = asyncio.ensure_future(awaitable)
        stopper = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopper.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
            assert self.stopped is not None
            raise self.stopped
        return task.result()

    async def sleep(self, seconds: float) -> None:
        """A pause that an interrupt ends at once (raising it)."""
        await self.unless_stopped(self.clock.sleep(seconds))

    async def aclose(self) -> None:
        await self.client.aclose()

    async def create(self, body: bytes) -> dict[str, Any]:
        batch = await self._call("POST", BATCHES_PATH, body, creating=True)
        batch_id = batch.get("id")
        if not isinstance(batch_id, str) or not batch_id:
            raise CreateWithoutId(
                f"POST {BATCHES_PATH}: the API answered the create without a batch id "
                f"(id: {batch_id!r})"
            )
        return batch

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
        cursors: set[str] = set()
        for _ in range(MAX_PAGES):
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
            if after in cursors:
                raise BatchApiError(
                    f"GET {BATCHES_PATH}: the list says has_more but repeats its page "
                    f"(last_id {self.scrub.text(after)[:80]!r}): a server fault"
                )
            cursors.add(after)
        raise BatchApiError(
            f"GET {BATCHES_PATH}: still has_more after {MAX_PAGES} pages of batches created "
            "since this intent: a server fault"
        )

    async def results(self, batch_id: str) -> AsyncIterator[bytes]:
        """The batch's result lines, as they arrive (the file is never held whole)."""
        url = f"{self.base}{BATCHES_PATH}/{batch_id}/results"
        try:
            async with self.client.stream("GET", url, headers=self.headers) as response:
                if response.status_code != 200:
                    body = await response.aread()
                    raise self._error(response.status_code, body, "GET results")
                async for line in self._lines(self._chunks(response.aiter_bytes())):
                    yield line
        except httpx.HTTPError as e:
            message = f"downloading the results of {batch_id}: {first_line(e)}"
            raise BatchApiError(self.scrub.text(message)) from e

    async def _chunks(self, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """The body's chunks, until the run is interrupted."""
        while True:
            try:
                yield await self.unless_stopped(anext(chunks))
            except StopAsyncIteration:
                return

    async def _lines(self, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        pending = b""
        async for chunk in chunks:
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                if line.strip():
                    yield self._capped(line)
            if len(pending) > self.max_line_bytes:  # never held whole: its row is an error
                found = _custom_id_in(pending)
                async for rest in self._rest_of_line(chunks, pending[-_ID_OVERLAP:], found):
                    yield rest
                return
        if pending.strip():
            yield self._capped(pending)

    async def _rest_of_line(
        self, chunks: AsyncIterator[bytes], tail: bytes, found: str | None
    ) -> AsyncIterator[bytes]:
        """Skip what is left of an over-long line (looking there for its custom_id when
        the answer came first), put the too-large result in its place, then go on with
        the lines after it."""
        async for chunk in chunks:
            end = chunk.find(b"\n")
            part = chunk if end < 0 else chunk[:end]
            found = found or _custom_id_in(tail + part)
            tail = (tail + part)[-_ID_OVERLAP:]
            if end >= 0:
                yield self._too_large(found)
                async for line in self._lines(_one(chunk[end + 1 :], chunks)):
                    yield line
                return
        yield self._too_large(found)

    def _capped(self, line: bytes) -> bytes:
        """The line, scrubbed; past max_answer_bytes, the too-large result in its place."""
        if len(line) <= self.max_line_bytes:
            return self.scrub.raw(line)
        return self._too_large(_custom_id_in(line))

    def _too_large(self, custom_id: str | None) -> bytes:
        """The result for a line over max_answer_bytes (as an online answer over the cap
        is): its row an error row, most likely billed (collect.TOO_LARGE), so the batch
        can still be collected."""
        error = {
            "type": "answer_too_large",
            "message": f"the result line is over max_answer_bytes ({self.max_line_bytes:,})",
        }
        return orjson.dumps({
            "custom_id": custom_id or "",
            "result": {"type": "answer_too_large", "error": {"type": "error", "error": error}},
        })  # fmt: skip

    async def _call(
        self, method: str, path: str, body: bytes | None = None, *, creating: bool = False
    ) -> dict[str, Any]:
        """One call, with the retries of transient answers and of no answer at all (a
        create's never when it may have made the batch: `judge_call`)."""
        what = f"{method} {path.split('?')[0]}"
        tried = await retrying(
            partial(self._exchange, method, path, body), partial(judge_call, creating=creating),
            max_retries=self.max_retries, pause=self._pause, now=self.clock.now,
        )  # fmt: skip
        answer = tried.outcome
        if isinstance(answer, httpx.HTTPError):
            message = self.scrub.text(
                f"{what}: no answer ({first_line(answer) or answer.__class__.__name__})"
            )
            raise (CreateUnconfirmed if creating else BatchApiError)(message) from answer
        status, _, data = answer
        if 200 <= status < 300:
            return self._json(data, what, creating)
        if creating and transience(status).maybe_made:  # only the list can tell
            raise CreateUnconfirmed(f"{what}: HTTP {status}", status)
        raise self._error(status, data, what)

    async def _pause(self, seconds: float, _: object) -> None:
        await self.sleep(seconds)

    async def _exchange(
        self, method: str, path: str, body: bytes | None
    ) -> Exchanged | httpx.HTTPError:
        """One request's answer, or the error that stands for none (an interrupt raises)."""
        headers = (
            self.headers if body is None else {**self.headers, "content-type": "application/json"}
        )
        self.calls += 1
        try:
            response = await self.unless_stopped(
                self.client.request(method, self.base + path, content=body, headers=headers)
            )
        except httpx.HTTPError as e:
            return e
        self._note_clock(response.headers.get("date"))
        return response.status_code, response.headers, response.content

    def _note_clock(self, date: str | None) -> None:
        """How far the server's clock is from ours (to 1 s): batches' created_at are its."""
        if not date:
            return
        with contextlib.suppress(TypeError, ValueError, IndexError):
            self.server_offset_s = parsedate_to_datetime(date).timestamp() - self.clock.now()

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


def judge_call(answer: Exchanged | httpx.HTTPError, *, creating: bool) -> Verdict:
    """A call's answer (or none), judged by the online policy; but a create that may have
    made its batch is never sent again: the account's list tells first."""
    status, headers = (None, {}) if isinstance(answer, httpx.HTTPError) else answer[:2]
    if creating and transience(status).maybe_made:
        return Verdict(again=False)
    return Verdict(again=should_retry(status, headers), headers=headers)


async def check_endpoint(api: BatchApi, base_url: str, key_env: str) -> None:
    """Probe the batch endpoint before anything is sent: a server without it (404 / 405)
    is a usage error (exit 2), a key it refuses (401 / 403) stops the run (exit 4)."""
    try:
        await api.probe()
    except BatchApiError as e:
        if e.status in (404, 405):
            raise UsageError(
                f"{base_url} does not serve the Message Batches API "
                f"(HTTP {e.status} on /v1/messages/batches): run this job online "
                '([api] mode = "online"); nothing was sent'
            ) from None
        if e.status in (401, 403):
            raise ApiRejectsEverything(
                f"the API refused the key (HTTP {e.status}): check ${key_env}"
            ) from None
        raise
