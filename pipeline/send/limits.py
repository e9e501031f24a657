"""Pacing: token buckets for requests and tokens, a concurrency gate, one shared cooldown,
limits learned from the server's headers, and AIMD when the server pushes back.

A bucket holds at most a tenth of a second of its rate (never a minute's worth) and
refills continuously. Taking from it may leave it in debt; the taker then sleeps exactly
until the debt is repaid, so callers queue in arrival order without a lock and nobody
polls. A request takes from every bucket at once and waits for the slowest. The clock and
sleep are injectable so tests move time instead of waiting.
"""

from __future__ import annotations

import asyncio
import collections
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from pipeline.send.pressure import ConcurrencyControl
from pipeline.send.ratelimit_headers import rate_limit_headers

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]
BURST_S = 0.1  # request bucket capacity in seconds of rate: evenly spread, never starved
TOKEN_BURST_S = 1.0  # token buckets: one request may well hold more than 0.1 s of tokens
KINDS = ("requests", "input_tokens", "output_tokens", "tokens")  # tokens = input + output
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
DECREASE, MIN_FACTOR = 0.8, 0.2  # multiplicative decrease of the send rate, and its floor
IN_A_ROW = 2  # 429s (or 529s) with no 2xx between: the server means it, slow down
QUIET_S = 10.0  # this long without a slow-down: one step of additive increase
STEP_UP = 0.1


def told_limits(headers: Mapping[str, str]) -> dict[str, str]:
    """The per-minute limits the headers tell, by the bucket they set (values unparsed)."""
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


def attempt_amounts(input_tokens: int, output_tokens: int) -> dict[str, float]:
    """What one attempt takes from each kind of bucket."""
    return {
        "requests": 1.0,
        "input_tokens": float(input_tokens),
        "output_tokens": float(output_tokens),
        "tokens": float(input_tokens + output_tokens),
    }


class TokenBucket:
    def __init__(
        self,
        rate_per_s: float,
        capacity: float,
        *,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        if not (rate_per_s > 0 and capacity > 0):
            raise ValueError("rate and capacity must be positive")
        self.rate, self.capacity = rate_per_s, capacity
        self.burst_s = capacity / rate_per_s
        self._level, self._updated = capacity, clock()
        self._clock, self._sleep = clock, sleep

    @classmethod
    def per_minute(
        cls,
        per_minute: float,
        *,
        burst_s: float = BURST_S,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> TokenBucket:
        rate = per_minute / 60.0
        bucket = cls(rate, max(1.0, rate * burst_s), clock=clock, sleep=sleep)
        bucket.burst_s = burst_s
        return bucket

    def level(self) -> float:
        """Tokens available now (negative while callers are queued in debt)."""
        now = self._clock()
        self._level = min(self.capacity, self._level + (now - self._updated) * self.rate)
        self._updated = now
        return self._level

    def take(self, amount: float) -> float:
        """Take `amount` now; the seconds until the bucket is out of debt again."""
        self._level = self.level() - amount
        return -self._level / self.rate if self._level < 0 else 0.0

    async def acquire(self, amount: float = 1.0) -> None:
        wait = self.take(amount)
        if wait > 0:
            try:
                await self._sleep(wait)
            except asyncio.CancelledError:
                self.give_back(amount)
                raise

    def give_back(self, amount: float) -> None:
        """Return tokens taken and not used (a cancelled wait, a reservation larger than the
        use), so a request that held max_tokens while in flight costs only what it used.
        The level may pass the capacity for an instant; the next `level()` caps it, so a
        give-back refills the bucket but never lends it credit beyond its burst."""
        self._level = self.level() + amount

    def set_per_minute(self, per_minute: float) -> None:
        self.level()  # settle the refill at the old rate first
        self.rate = per_minute / 60.0
        self.capacity = max(1.0, self.rate * self.burst_s)
        self._level = min(self._level, self.capacity)


class Gate:
    """At most `limit` holders; the limit can move (AIMD) while callers wait, FIFO."""

    def __init__(self, limit: int) -> None:
        self.limit = self.ceiling = limit
        self.active = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    async def acquire(self) -> None:
        if self.active < self.limit and not self._waiters:
            self.active += 1
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
        self.limit = max(1, min(limit, self.ceiling))
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


class Limiter:
    """What every attempt passes before it is sent."""

    def __init__(
        self,
        requests_per_minute: float | None = None,
        input_tokens_per_minute: float | None = None,
        output_tokens_per_minute: float | None = None,
        tokens_per_minute: float | None = None,
        *,
        concurrency: int | None = None,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        configured = (
            requests_per_minute,
            input_tokens_per_minute,
            output_tokens_per_minute,
            tokens_per_minute,
        )
        self.limits = {k: v for k, v in zip(KINDS, configured, strict=True) if v}
        self._clock, self._sleep = clock, sleep
        self.buckets: dict[str, TokenBucket] = {}
        self.gate = Gate(concurrency) if concurrency else None
        self.concurrency = (
            ConcurrencyControl(self.gate, clock=clock, note=self.note) if self.gate else None
        )
        self.factor = 1.0  # the share of the limits we send at: lowered by repeated 429s
        self.cooldowns = 0
        self.adjustments: list[str] = []  # what changed and when, for the summary
        self._started = clock()
        self._resume_at = 0.0
        self._epoch = 0  # bumped by every cooldown: waiting takers re-queue behind it
        self._last_change = -math.inf
        self._last_trouble = clock()  # no recovery step in the first quiet spell: nothing fell
        self._in_a_row = 0  # 429s / 529s since the last 2xx
        self._overload_lowered = False  # the gate is under its ceiling because of 529s
        for kind in self.limits:
            self._apply(kind)

    @property
    def requests(self) -> TokenBucket | None:
        return self.buckets.get("requests")

    async def acquire(self, input_tokens: int = 0, output_tokens: int = 0) -> Ticket:
        """Wait for a slot in every bucket (and the gate); the ticket goes to `finish`."""
        level = 0
        if self.gate is not None:
            if self.concurrency is not None:  # None: another's control (ray/lease.py)
                self.concurrency.tick()
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
            await self._cooled_down()
            self._recover()
            epoch, taken = self._epoch, {k: amounts[k] for k in self.buckets}
            wait = max((self.buckets[k].take(a) for k, a in taken.items()), default=0.0)
            try:
                if wait > 0:
                    await self._sleep(wait)
            except asyncio.CancelledError:
                self._give_back(taken)
                raise
            if epoch == self._epoch:
                return Ticket(taken)
            self._give_back(taken)  # a 429 came while we waited: queue again after it

    async def _cooled_down(self) -> None:
        while (wait := self._resume_at - self._clock()) > 0:
            await self._sleep(wait)  # re-checked: a newer 429 may have moved the time

    def _give_back(self, taken: Mapping[str, float]) -> None:
        for kind, amount in taken.items():
            if kind in self.buckets and amount:
                self.buckets[kind].give_back(amount)

    def finish(
        self, ticket: Ticket, input_used: int | None = None, output_used: int | None = None
    ) -> None:
        """The attempt ended: release the gate and correct the token reservations.

        `input_used` counts input + cache writes (cache reads do not count against the
        limit); None means no answer was billed, and every token reserved is returned.
        """
        if self.gate is not None:
            self.gate.release()
        used = {"input_tokens": input_used or 0, "output_tokens": output_used or 0}
        used["tokens"] = used["input_tokens"] + used["output_tokens"]
        for kind in ("input_tokens", "output_tokens", "tokens"):
            bucket, reserved = self.buckets.get(kind), ticket.amounts.get(kind, 0.0)
            if bucket is None:
                continue
            difference = reserved - used[kind]
            if difference > 0:
                bucket.give_back(difference)
            elif difference < 0:
                bucket.take(-difference)  # under-estimated: later takers wait for it

    def learn(self, headers: Mapping[str, str]) -> None:
        """Adopt the server's limits where it reports them lower than ours (or we had none)."""
        for kind, raw in told_limits(headers).items():
            try:
                value = float(raw)
            except ValueError:
                continue
            current = self.limits.get(kind)
            if value > 0 and math.isfinite(value) and (current is None or value < current):
                self.limits[kind] = value
                self._apply(kind)
                self.note(
                    f"{kind.replace('_', ' ')} limit {value:,.0f}/min "
                    f"{'learned from' if current is None else 'lowered by'} the server"
                )

    def _apply(self, kind: str) -> None:
        per_minute = self.limits[kind] * self.factor
        if kind in self.buckets:
            self.buckets[kind].set_per_minute(per_minute)
        else:
            burst = BURST_S if kind == "requests" else TOKEN_BURST_S
            self.buckets[kind] = TokenBucket.per_minute(
                per_minute, burst_s=burst, clock=self._clock, sleep=self._sleep
            )

    def answered(self, ticket: Ticket) -> None:
        """A 2xx: the level it was sent at is safe, and any run of 429s / 529s is over."""
        self._in_a_row = 0
        if self.concurrency is not None:
            self.concurrency.answered(ticket.level)

    def rate_limited(
        self, retry_after_s: float, ticket: Ticket | None = None, *, explained: bool = True
    ) -> None:
        """A 429. Explained (a bucket reported empty): everyone waits out retry-after, and
        429s in a row lower the send rate. Unexplained (a cap on requests in flight): fewer
        in flight; no cooldown, since the cap frees as soon as an answer ends."""
        self._in_a_row += 1
        if not explained and self.concurrency is not None and ticket is not None:
            self.concurrency.unexplained_429(ticket.level)
            return
        now = self._clock()
        self.cool_down(retry_after_s)
        if self._in_a_row >= IN_A_ROW and self.buckets and now - self._last_change >= retry_after_s:
            self._last_trouble = now
            self._set_factor(max(MIN_FACTOR, self.factor * DECREASE), now)

    def overloaded(self) -> None:
        """A 529: the server is busy, not our rate: 529s in a row mean fewer in flight."""
        now = self._clock()
        self._in_a_row += 1
        if self.gate is None or self._in_a_row < IN_A_ROW or now - self._last_change < 1.0:
            return
        self._last_trouble = self._last_change = now
        before = self.gate.limit
        self.gate.set_limit(int(self.gate.limit * 0.75))
        if self.gate.limit < before:
            self._overload_lowered = True
            self.note(f"requests in flight lowered to {self.gate.limit} (overloaded)")

    def cool_down(self, seconds: float) -> None:
        """Hold every sender for `seconds`, as a 429 does, without the rate change."""
        now = self._clock()
        if now + seconds > self._resume_at:
            self._resume_at, self._epoch = now + seconds, self._epoch + 1
            self.cooldowns += 1

    def _recover(self) -> None:
        """Additive increase: each quiet stretch gives back a step of rate and concurrency."""
        now = self._clock()
        if now - max(self._last_trouble, self._last_change) < QUIET_S:
            return
        if self.factor < 1.0:
            self._set_factor(min(1.0, self.factor + STEP_UP), now)
        gate = self.gate
        if gate is not None and self._overload_lowered and not self._capped():
            gate.set_limit(gate.limit + max(1, gate.ceiling // 8))
            self._overload_lowered = gate.limit < gate.ceiling
            self._last_change = now
            self.note(f"requests in flight back up to {gate.limit}")

    def _capped(self) -> bool:
        """The gate is below its ceiling because of a cap: its own control grows it."""
        return self.concurrency is not None and self.concurrency.limited

    def _set_factor(self, factor: float, now: float) -> None:
        before, self._last_change = self.factor, now
        if factor == before:
            return  # at the floor (or the top) already: no change, nothing to say
        self.factor = factor
        for kind in self.buckets:
            self._apply(kind)
        rate = self.limits.get("requests")
        shown = f" ({rate * factor:,.0f} requests/min)" if rate else ""
        direction = "back up" if factor > before else "lowered"
        self.note(f"send rate {direction} to {factor:.0%} of the limits{shown}")

    def note(self, text: str) -> None:
        elapsed = int(self._clock() - self._started)
        self.adjustments.append(f"{elapsed // 60}:{elapsed % 60:02d} {text}")
