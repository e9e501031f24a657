"""Pacing: what every attempt passes before it is sent. One `Limiter`, made of three parts:

- a capacity source, behind the `Capacity` protocol: `buckets.Buckets` (this process's
  token buckets for requests and tokens), or a Ray worker's leases from the cluster's
  pool (ray/lease.py);
- a `Gate`: at most its limit of requests in flight, FIFO;
- one controller, `pressure.PressureControl`: the only code that writes the gate's limit
  (slow start, caps, 529s, a cluster's share) and the send rate's factor (429s in a row).

The Limiter itself keeps the one shared cooldown a 429's retry-after starts, and learns
limits from the server's headers. The clock and sleep are injectable so tests move time
instead of waiting.
"""

from __future__ import annotations

import asyncio
import collections
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from pipeline.send.buckets import KINDS, Buckets, TokenBucket, attempt_amounts
from pipeline.send.buckets import Clock as Clock
from pipeline.send.buckets import Sleep as Sleep
from pipeline.send.pressure import ClusterLink, PressureControl
from pipeline.send.ratelimit_headers import rate_limit_headers

LIMIT_HEADERS = {  # the server's per-minute limits, by the bucket they set
    "anthropic-ratelimit-requests-limit": "requests",
    "anthropic-ratelimit-input-tokens-limit": "input_tokens",
    "anthropic-ratelimit-output-tokens-limit": "output_tokens",
    "x-ratelimit-limit-requests": "requests",
    "x-ratelimit-limit-tokens": "tokens",  # the gateway's TPM counts input + output
}
# Anthropic's tokens-* is the tightest of its input / output limits, not a combined one:
# used only when the specific headers are absent.
COMBINED_FALLBACK = "anthropic-ratelimit-tokens-limit"


def told_limits(headers: Mapping[str, str]) -> dict[str, str]:
    """The per-minute limits the headers tell, by the bucket they set (values unparsed)."""
    if "ratelimit" not in "\n".join(headers):  # in every name read below, passed on or not
        return {}
    headers = rate_limit_headers(headers)
    found = {kind: headers[name] for name, kind in LIMIT_HEADERS.items() if name in headers}
    combined = headers.get(COMBINED_FALLBACK)
    if combined is not None and found.get("tokens") == combined:
        # LiteLLM copies Anthropic's tokens-limit into x-ratelimit-limit-tokens: the tightest
        # of the input / output limits, not a gateway's input + output TPM
        del found["tokens"]
    if combined is not None and not set(found) - {"requests"}:
        found["tokens"] = combined  # no token limit of its own kind: the tightest caps all
    return found


class Gate:
    """At most `limit` holders, FIFO; the limit moves while callers wait (only the Limiter's
    controller moves it). Under `ceiling`: the job's concurrency, or a Ray worker's share
    of the cluster's, which may be 0 for a while (the limit split among more workers than
    it has requests)."""

    def __init__(self, limit: int) -> None:
        self.limit = self.ceiling = limit
        self.active = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    def try_acquire(self) -> bool:
        """A place now, if there is one free and nobody queued before (True)."""
        if self.active < self.limit and not self._waiters:
            self.active += 1
            return True
        return False

    async def acquire(self) -> None:
        if self.try_acquire():
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release()  # granted just as we were cancelled: pass it on
            raise

    def release(self) -> None:
        self.active -= 1
        self._wake()

    def set_limit(self, limit: int) -> None:
        self.limit = max(min(1, self.ceiling), min(limit, self.ceiling))
        self._wake()

    def set_ceiling(self, ceiling: int, *, keep_lower: bool) -> None:
        """A new ceiling; the limit goes to it, or stays below it (`keep_lower`)."""
        self.ceiling = ceiling
        self.limit = min(self.limit, ceiling) if keep_lower else ceiling
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self.active < self.limit:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self.active += 1
                waiter.set_result(None)


@dataclass(slots=True)
class Ticket:
    """What one attempt reserved: given back or corrected when its answer arrives."""

    amounts: dict[str, float]
    level: int = 0  # requests in flight when it was sent, itself included


class Capacity(Protocol):
    """Where a Limiter's requests and tokens come from: `Buckets` (this process's own) or a
    Ray worker's leases from the cluster's pool (ray/lease.py)."""

    @property
    def limits(self) -> Mapping[str, float]:
        """Per minute, by kind: told in the job or learned from the server."""

    @property
    def buckets(self) -> Mapping[str, TokenBucket]:
        """The token buckets this process paces with (none when leased)."""

    @property
    def scalable(self) -> bool:
        """Has it rates of its own that a slow-down can lower (429s in a row)?"""

    async def take(
        self, amounts: Mapping[str, float], hold: Callable[[float], None]
    ) -> dict[str, float] | None:
        """What one attempt takes, once it may be sent; None: it waited for more (and may
        have called `hold`, a pause for every sender): ask again after the cooldown."""

    def give_back(self, taken: Mapping[str, float]) -> None:
        """Taken and not used (a cooldown began while the taker waited)."""

    def settle(self, reserved: Mapping[str, float], used: Mapping[str, float]) -> None:
        """An attempt ended: the difference between what it reserved and used goes back
        (or, under-estimated, is taken too)."""

    def lower(self, kind: str, per_minute: float) -> None:
        """A limit the server told, lower than ours (or the first of its kind)."""

    def scale(self, factor: float) -> None:
        """Send at this share of the limits."""

    def cool_down(self, seconds: float) -> None:
        """A cooldown began here: a shared capacity tells every other sender."""


class Limiter:
    """What every attempt passes before it is sent: the gate (requests in flight), then the
    shared cooldown and the capacity (requests and tokens). `control` hears how each
    attempt ended and alone moves the gate's limit and the send rate."""

    def __init__(
        self,
        requests_per_minute: float | None = None,
        input_tokens_per_minute: float | None = None,
        output_tokens_per_minute: float | None = None,
        tokens_per_minute: float | None = None,
        *,
        concurrency: int | None = None,
        capacity: Capacity | None = None,  # None: Buckets of the limits given
        cluster: ClusterLink | None = None,  # a Ray worker's link to the cluster's control
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        configured = (
            requests_per_minute,
            input_tokens_per_minute,
            output_tokens_per_minute,
            tokens_per_minute,
        )
        told = {k: v for k, v in zip(KINDS, configured, strict=True) if v}
        self._clock, self._sleep = clock, sleep
        self.adjustments: list[str] = []  # what changed and when, for the summary
        self._told: dict[str, str] = {}  # the limits the last answer told (learn)
        self._started = clock()
        self.capacity = (
            capacity if capacity is not None else Buckets(told, clock=clock, sleep=sleep)
        )
        self.gate = Gate(concurrency) if concurrency else None
        self.control = PressureControl(
            self.gate, capacity=self.capacity, cluster=cluster, clock=clock, note=self.note
        )
        self.cooldowns = 0
        self.sent = 0  # attempts let through
        self._resume_at = 0.0
        self._epoch = 0  # bumped by every cooldown: waiting takers re-queue behind it

    @property
    def limits(self) -> Mapping[str, float]:
        return self.capacity.limits

    @property
    def buckets(self) -> Mapping[str, TokenBucket]:
        return self.capacity.buckets

    @property
    def factor(self) -> float:
        """The share of the limits sent at: lowered by repeated 429s."""
        return self.control.factor

    async def acquire(self, input_tokens: int = 0, output_tokens: int = 0) -> Ticket:
        """Wait for a slot in the gate and in every bucket; the ticket goes to `finish`."""
        level = 0
        if self.gate is not None:
            self.control.tick()
            if not self.gate.try_acquire():  # no coroutine when there is a place
                await self.gate.acquire()
            level = self.gate.active
        try:
            ticket = await self._take(input_tokens, output_tokens)
        except BaseException:
            if self.gate is not None:
                self.gate.release()
            raise
        ticket.level = level
        return ticket

    async def _take(self, input_tokens: int, output_tokens: int) -> Ticket:
        amounts = attempt_amounts(input_tokens, output_tokens)
        while True:
            if self._resume_at > self._clock():  # a cooldown: no coroutine for the common case
                await self._cooled_down()
            self.control.recover()
            epoch = self._epoch
            taken = await self.capacity.take(amounts, self._hold)
            if taken is None:
                continue  # it waited for more: past any cooldown that began, then again
            if epoch == self._epoch:
                self.sent += 1
                return Ticket(taken)
            self.capacity.give_back(taken)  # a 429 came while we waited: queue again after it

    async def _cooled_down(self) -> None:
        while (wait := self._resume_at - self._clock()) > 0:
            await self._sleep(wait)  # re-checked: a newer 429 may have moved the time

    def finish(
        self, ticket: Ticket, input_used: int | None = None, output_used: int | None = None
    ) -> None:
        """The attempt ended: release the gate and correct the token reservations.

        `input_used` counts input + cache writes (cache reads do not count against the
        limit); None means no answer was billed, and every token reserved is returned.
        """
        if self.gate is not None:
            self.gate.release()
        used = {"input_tokens": float(input_used or 0), "output_tokens": float(output_used or 0)}
        used["tokens"] = used["input_tokens"] + used["output_tokens"]
        self.capacity.settle(ticket.amounts, used)

    def learn(self, headers: Mapping[str, str]) -> None:
        """Adopt the server's limits where it reports them lower than ours (or we had none).
        Limits are only ever lowered, so limits told as the last answer told them have
        nothing new to teach: every answer of the API tells them, nearly always the same."""
        told = told_limits(headers)
        if told == self._told:
            return
        self._told = told
        for kind, raw in told.items():
            try:
                value = float(raw)
            except ValueError:
                continue
            current = self.capacity.limits.get(kind)
            if value > 0 and math.isfinite(value) and (current is None or value < current):
                self.capacity.lower(kind, value)
                self.note(
                    f"{kind.replace('_', ' ')} limit {value:,.0f}/min "
                    f"{'learned from' if current is None else 'lowered by'} the server"
                )

    def answered(self, ticket: Ticket) -> None:
        """A 2xx: the level it was sent at is safe, and any run of 429s / 529s is over."""
        self.control.answered(ticket.level)

    def rate_limited(
        self, retry_after_s: float, ticket: Ticket | None = None, *, explained: bool = True
    ) -> None:
        """A 429. Explained (a bucket reported empty): everyone waits out retry-after, and
        429s in a row lower the send rate. Unexplained (a cap on requests in flight): fewer
        in flight; no cooldown, since the cap frees as soon as an answer ends."""
        if not explained and ticket is not None and self.gate is not None:
            self.control.unexplained_429(ticket.level)
            return
        now = self._clock()
        self.cool_down(retry_after_s)
        self.control.rate_limited(retry_after_s, now)

    def overloaded(self) -> None:
        """A 529: the server is busy, not our rate: 529s in a row mean fewer in flight."""
        self.control.overloaded()

    def cool_down(self, seconds: float) -> None:
        """Hold every sender for `seconds`, as a 429 does, without the rate change (a shared
        capacity holds every worker's)."""
        self._hold(seconds)
        self.capacity.cool_down(seconds)

    def _hold(self, seconds: float) -> None:
        """Hold this limiter's senders for `seconds` (extended, never shortened)."""
        now = self._clock()
        if now + seconds > self._resume_at:
            self._resume_at, self._epoch = now + seconds, self._epoch + 1
            self.cooldowns += 1

    def settled(self) -> str | None:
        """Where the requests in flight ended up after a cap, for the summary."""
        return self.control.settled()

    def note(self, text: str) -> None:
        elapsed = int(self._clock() - self._started)
        self.adjustments.append(f"{elapsed // 60}:{elapsed % 60:02d} {text}")
