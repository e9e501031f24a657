"""The API client: one call = pacing, attempts, retries, and a `CallResult` for the row.

Non-2xx answers are data, not exceptions: the one retry loop (`retry.retrying`) sends
again as `_judge` says (by `retry.should_retry`) after `retry.retry_delay`; what is the
client's own (the turn at the outage's probe lane and the limiter, a 429's cooldown, the
watch asked again, a halt) is the attempt and the pause that loop is given. A 429 that says
a bucket is empty cools down the shared limiter, so every worker pauses for `retry-after`;
one that no bucket explains (a gateway's cap on requests in flight) lowers the requests in
flight instead. 429s are pacing and do not use up a row's max_retries; nor do failures
while the API is down, when attempts go one probe at a time (pressure.OutageWatch) until it
answers or the patience runs out (`ApiUnavailable`: the rows not finished stay to do). A
redirect is an error row, never followed (the key would go with it). Everything the server
sends is scrubbed of the API key here, where it enters, before anything stores, counts or
prints it.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from pipeline.errors import NotSent as NotSent
from pipeline.errors import RequestTimedOut, TransportError
from pipeline.providers.base import Answer, MalformedAnswer, Provider
from pipeline.providers.registry import ANTHROPIC
from pipeline.providers.sse import StreamBroken
from pipeline.send.limits import Limiter, Ticket
from pipeline.send.pressure import OutageWatch
from pipeline.send.retry import (
    MAX_RETRY_AFTER_S,
    Tried,
    Verdict,
    counts_toward_retries,
    explained_429,
    is_redirect,
    is_transient_failure,
    retry_after_s,
    retrying,
    should_retry,
)
from pipeline.send.scrub import Scrubber
from pipeline.send.transport import AnswerTooLarge, RawResponse, Transport
from pipeline.send.waits import Waits


@dataclass(slots=True)
class CallResult:
    """How one row's request ended, after every attempt."""

    answer: Answer | None
    http_status: int | None
    error_type: str | None
    error_message: str | None
    attempts: int
    request_id: str | None
    latency_ms: float | None  # of the last attempt
    retryable: bool = False  # the last attempt was worth another (retries ran out)
    unseen: int = 0  # attempts sent whole whose answer never came: they may have been billed


@dataclass(slots=True)
class _Attempt:
    status: int | None  # as answered (200 for a stream that broke after it began)
    headers: Mapping[str, str]
    error_type: str | None = None
    error_message: str | None = None
    answer: Answer | None = None
    broken: bool = False  # a stream that broke after 200: judged by `retry_as`
    retry_as: int | None = None  # the status its error names (None: a dropped connection)
    unseen: bool = False  # the server may have billed it, yet no usable answer came
    request_id: str | None = None
    latency_ms: float | None = None
    in_outage: bool = False  # the API was down when it ended (before its own verdict)

    @property
    def verdict_status(self) -> int | None:
        """The status retry and pacing decisions go by."""
        return self.retry_as if self.broken else self.status


class AttemptWatch(Protocol):
    """Hears of a call's attempts: the budget and the record of requests in flight."""

    def sending(self) -> None:
        """An attempt goes out: in flight until `ended`."""

    def ended(self, unseen: bool) -> None:
        """Its outcome is known; `unseen`: sent whole, no answer, so maybe billed."""

    async def again(self) -> None:
        """Before the attempt that follows an unseen one (may raise BudgetReached)."""


class ApiClient:
    def __init__(
        self,
        transport: Transport,
        url: str,
        headers: Mapping[str, str],
        limiter: Limiter,
        *,
        max_retries: int,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        jitter: Callable[[], float] = random.random,
        provider: Provider = ANTHROPIC,
        parse: Callable[[bytes], Answer] | None = None,
        secret: str | None = None,
        deadline_s: float | None = None,
        stream_deadline_s: float | None = None,
        patience_s: float = 600.0,
    ) -> None:
        self.transport = transport
        self.url = url
        self.headers = dict(headers)
        self.limiter = limiter
        self.max_retries = max_retries
        self.provider = provider  # how answers and errors of this format read
        self.parse = parse or provider.parse_answer  # count_tokens reads its own answers
        self.scrub = Scrubber(secret)  # the API key, out of everything the server sends
        # a whole attempt's bound (None: the transport's), and a streamed one's, longer
        self.deadline_s, self.stream_deadline_s = deadline_s, stream_deadline_s or deadline_s
        self._clock, self._wall, self._sleep, self._jitter = clock, wall_clock, sleep, jitter
        self.retries: Counter[str] = Counter()  # retried attempts by reason, for the summary
        self.sent = 0  # attempts sent, also those of rows that then stayed to do
        self.waits = Waits()  # calls waiting for their turn, and halt()
        self.outage = OutageWatch(patience_s, clock=clock, sleep=sleep, note=limiter.note)

    async def call(
        self,
        body: bytes,
        input_tokens: int = 0,
        max_tokens: int = 0,
        *,
        stream: bool = False,
        watch: AttemptWatch | None = None,
    ) -> CallResult:
        """Send `body` until it is answered or not worth another attempt.

        `input_tokens` (an estimate) and `max_tokens` are reserved from the token limits
        for each attempt and corrected by the answer's usage. `stream`: the body asks for
        a streamed answer, whose attempts get the longer deadline. `watch` hears of each
        attempt, and has its say before one follows an attempt that may have been billed.
        """
        deadline_s = self.stream_deadline_s if stream else self.deadline_s
        reserved = (input_tokens, max_tokens)
        first = await self._once(body, deadline_s, reserved, watch)
        unseen = int(first.unseen)  # attempts sent whole whose answer never came
        if first.answer is not None:  # `_result` of what `retrying` makes of it, without it
            return CallResult(
                first.answer, first.status, first.error_type, first.error_message, 1,
                first.request_id, first.latency_ms, False, unseen,
            )  # fmt: skip

        async def once() -> _Attempt:
            nonlocal unseen
            attempt = await self._once(body, deadline_s, reserved, watch)
            unseen += attempt.unseen
            return attempt

        async def pause(seconds: float, attempt: _Attempt) -> None:
            await self._between(seconds, attempt, watch)

        tried = await retrying(
            once, _judge, max_retries=self.max_retries, max_attempts=self._attempts_cap(),
            pause=pause, now=self._wall, jitter=self._jitter, first=first,
        )  # fmt: skip
        return _result(tried, unseen)

    async def _once(
        self,
        body: bytes,
        deadline_s: float | None,
        reserved: tuple[int, int],
        watch: AttemptWatch | None,
    ) -> _Attempt:
        """One attempt: its turn (the outage's probe lane, the limiter), the request, and
        what it tells the limiter and the outage (a 429's cooldown, a failure's count)."""
        ticket, probe = await self._paced(*reserved)
        try:
            started = self._clock()
            self.sent += 1
            if watch is not None:
                watch.sending()
            attempt = await self._attempt(body, deadline_s)
            if watch is not None:
                watch.ended(attempt.unseen)
            attempt.latency_ms = (self._clock() - started) * 1000.0
            attempt.in_outage = self.outage.down  # before this attempt's verdict changes it
            self._account(ticket, attempt, reserved)
        finally:
            self.outage.release(probe)
        return attempt

    async def _between(self, seconds: float, attempt: _Attempt, watch: AttemptWatch | None) -> None:
        """The pause before a retry: counted by reason, ended at once by a halt (NotSent),
        and the watch asked first when the attempt before may have been billed."""
        self.retries[attempt.error_type or "unknown"] += 1
        await self._wait(seconds)
        if attempt.unseen and watch is not None:
            await watch.again()  # the lost attempt stays counted: the next is asked for

    def _attempts_cap(self) -> int:
        """429s use up no retries, but a request the server never admits (larger than a
        bucket, say) must not loop for ever while other rows succeed."""
        return 10 * (self.max_retries + 1) + 10

    async def _wait(self, seconds: float) -> None:
        """The wait before a retry; a stop (halt) ends it at once: the attempt is not sent."""
        if self.waits.halted:
            raise NotSent
        task = self.waits.begin()
        try:
            await self._sleep(seconds)
        except asyncio.CancelledError:
            if self.waits.by_halt_alone(task):
                raise NotSent from None
            raise
        finally:
            self.waits.end(task)

    async def _paced(self, input_tokens: int, max_tokens: int) -> tuple[Ticket, bool]:
        """The attempt's turn: past the outage probe lane, then the limiter. (True: this
        attempt holds the probe lane; released once its verdict is in.)"""
        if self.waits.halted:
            raise NotSent
        task = self.waits.begin()
        probe = False
        outage = self.outage
        try:
            if outage.down:
                probe = await outage.admit()
            else:  # admit's own first step, without a coroutine for what it skips
                outage.check_patience()
            ticket = await self.limiter.acquire(input_tokens, max_tokens)
            if not probe and self.outage.stale():  # the outage began while this waited for
                self.limiter.finish(ticket)  # the limiter: its word first, then a new turn
                probe = await self.outage.admit()
                ticket = await self.limiter.acquire(input_tokens, max_tokens)
        except asyncio.CancelledError:
            self.outage.release(probe)
            if self.waits.by_halt_alone(task):  # the stop's, not the caller's
                raise NotSent from None
            raise
        except BaseException:
            self.outage.release(probe)
            raise
        finally:
            self.waits.end(task)
        if self.waits.halted:
            self.limiter.finish(ticket)
            self.outage.release(probe)
            raise NotSent
        return ticket, probe

    def _account(self, ticket: Ticket, attempt: _Attempt, reserved: tuple[int, int]) -> None:
        """Tell the limiter what the attempt used and what the server said of its limits."""
        limiter = self.limiter
        limiter.learn(attempt.headers)
        usage = attempt.answer.usage if attempt.answer is not None else None
        if attempt.answer is None:
            limiter.finish(ticket)  # nothing billed: every token reserved comes back
        elif usage is None:
            limiter.finish(ticket, *reserved)  # used unknown: as much as was reserved
        else:
            counted = usage.input_tokens + usage.cache_creation_input_tokens  # not reads
            limiter.finish(ticket, counted, usage.output_tokens)
        status = attempt.verdict_status
        if attempt.answer is not None:
            limiter.answered(ticket)
            self.outage.succeeded()
        elif status == 429:
            self.outage.troubled()
            wait = retry_after_s(attempt.headers, self._wall())
            limiter.rate_limited(
                wait if wait and 0 < wait <= MAX_RETRY_AFTER_S else 1.0,
                ticket,
                explained=explained_429(attempt.headers, attempt.error_message),
            )
        elif is_transient_failure(status):
            self.outage.failed()
            if status == 529:
                limiter.overloaded()

    def halt(self) -> None:
        """Stop sending: calls waiting for the limiter or a retry give up at once (NotSent)."""
        self.waits.halt()

    async def _attempt(self, body: bytes, deadline_s: float | None) -> _Attempt:
        try:
            response = await self.transport.post(
                self.url, self.headers, body, deadline_s=deadline_s
            )
        except AnswerTooLarge as e:  # retried like any malformed answer; a 2xx was billed
            return _Attempt(e.status, {}, "malformed_answer", str(e), unseen=_ok(e.status))
        except TransportError as e:  # dropped or silent after the request went: maybe billed
            kind = "timeout" if isinstance(e, RequestTimedOut) else "connection_error"
            return _Attempt(None, {}, kind, self.scrub.text(str(e)), unseen=e.delivered)
        scrub = self.scrub
        response = RawResponse(
            response.status, scrub.headers(response.headers), scrub.raw(response.body)
        )
        attempt = _read(response, self.parse, self.provider)
        if attempt.answer is not None:  # a \u escape or a split stream spells it only now
            attempt.answer = scrub.answer(attempt.answer)
        else:  # a 2xx that is no usable answer (malformed, a broken stream) was billed
            attempt.unseen = _ok(response.status)
        if attempt.error_type is not None or attempt.error_message is not None:
            attempt.error_type = scrub.optional(attempt.error_type)
            attempt.error_message = scrub.optional(attempt.error_message)
        attempt.request_id = response.headers.get("request-id")
        return attempt


def _ok(status: int | None) -> bool:
    return status is not None and 200 <= status < 300


def _retryable(attempt: _Attempt) -> bool:
    return should_retry(attempt.verdict_status, attempt.headers, attempt.error_type)


def _result(tried: Tried[_Attempt], unseen: int) -> CallResult:
    """The row's CallResult from the call's last attempt."""
    attempt = tried.outcome
    message = attempt.error_message
    if tried.capped:
        message = f"{message} (still refused after {tried.attempts} attempts)"
    return CallResult(
        attempt.answer, attempt.status, attempt.error_type, message, tried.attempts,
        attempt.request_id, attempt.latency_ms, attempt.answer is None and _retryable(attempt),
        unseen,
    )  # fmt: skip


_ANSWERED = Verdict(again=False)


def _judge(attempt: _Attempt) -> Verdict:
    """An answer ends the call; else the policy decides. A 429, or a transient failure
    while the API is down, uses up none of the row's max_retries."""
    if attempt.answer is not None:
        return _ANSWERED
    return Verdict(
        again=_retryable(attempt),
        headers=attempt.headers,
        counts=counts_toward_retries(attempt.verdict_status, outage=attempt.in_outage),
    )


def _read(response: RawResponse, parse: Callable[[bytes], Answer], provider: Provider) -> _Attempt:
    if is_redirect(response.status):
        return _Attempt(response.status, response.headers, "redirect", _redirected(response))
    if 200 <= response.status < 300 and response.headers.get("content-type", "").startswith(
        "text/event-stream"
    ):
        try:
            return _Attempt(
                response.status, response.headers, answer=provider.parse_stream(response.body)
            )
        except MalformedAnswer as e:
            return _Attempt(response.status, response.headers, "malformed_answer", str(e))
        except StreamBroken as e:  # retried like the HTTP error it names; answered 200
            return _Attempt(
                response.status, response.headers, e.error_type, e.message, None, True, e.status
            )
        except (KeyError, TypeError, AttributeError, ValueError) as e:  # events out of shape
            message = f"stream not understood: {e.__class__.__name__}: {e}"
            return _Attempt(response.status, response.headers, "malformed_answer", message)
    if 200 <= response.status < 300:
        try:
            return _Attempt(response.status, response.headers, answer=parse(response.body))
        except MalformedAnswer as e:
            return _Attempt(response.status, response.headers, "malformed_answer", str(e))
    error_type, message = provider.parse_error(response.status, response.body)
    return _Attempt(response.status, response.headers, error_type, message)


def _redirected(response: RawResponse) -> str:
    where = " ".join(response.headers.get("location", "").split())  # one line
    where = where if len(where) <= 200 else where[:197] + "..."
    return (
        f"the API answered HTTP {response.status}, a redirect to {where or 'nowhere said'}; "
        "not followed, so the key was not sent there: set base_url to the final address"
    )
