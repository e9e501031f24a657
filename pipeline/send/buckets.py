"""This process's own capacity: token buckets for requests and tokens (`Buckets`, a
Limiter's capacity source when it is not leased from a Ray pool).

A bucket holds at most a tenth of a second of its rate (never a minute's worth) and
refills continuously. Taking from it may leave it in debt; the taker then sleeps exactly
until the debt is repaid, so callers queue in arrival order without a lock and nobody
polls. A request takes from every bucket at once and waits for the slowest.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]
BURST_S = 0.1  # request bucket capacity in seconds of rate: evenly spread, never starved
TOKEN_BURST_S = 1.0  # token buckets: one request may well hold more than 0.1 s of tokens
KINDS = ("requests", "input_tokens", "output_tokens", "tokens")  # tokens = input + output


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


class Buckets:
    """This process's capacity: one token bucket for each limit, at the controller's share
    (`factor`) of it."""

    def __init__(
        self,
        limits: Mapping[str, float],
        *,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.limits = dict(limits)
        self.buckets: dict[str, TokenBucket] = {}
        self.factor = 1.0  # the share of the limits sent at: set by the controller only
        self._clock, self._sleep = clock, sleep
        for kind in self.limits:
            self._apply(kind)

    @property
    def scalable(self) -> bool:
        return bool(self.buckets)

    async def take(
        self, amounts: Mapping[str, float], hold: Callable[[float], None]
    ) -> dict[str, float] | None:
        """From every bucket at once, then wait for the slowest to be out of debt."""
        if not self.buckets:  # no limits told or learned (yet): nothing to take
            return {}
        taken = {kind: amounts[kind] for kind in self.buckets}
        wait = max((self.buckets[k].take(a) for k, a in taken.items()), default=0.0)
        try:
            if wait > 0:
                await self._sleep(wait)
        except asyncio.CancelledError:
            self.give_back(taken)
            raise
        return taken

    def give_back(self, taken: Mapping[str, float]) -> None:
        for kind, amount in taken.items():
            if kind in self.buckets and amount:
                self.buckets[kind].give_back(amount)

    def settle(self, reserved: Mapping[str, float], used: Mapping[str, float]) -> None:
        if not self.buckets:
            return
        for kind in ("input_tokens", "output_tokens", "tokens"):
            bucket = self.buckets.get(kind)
            if bucket is None:
                continue
            difference = reserved.get(kind, 0.0) - used[kind]
            if difference > 0:
                bucket.give_back(difference)
            elif difference < 0:
                bucket.take(-difference)  # under-estimated: later takers wait for it

    def lower(self, kind: str, per_minute: float) -> None:
        self.limits[kind] = per_minute
        self._apply(kind)

    def scale(self, factor: float) -> None:
        self.factor = factor
        for kind in self.buckets:
            self._apply(kind)

    def cool_down(self, seconds: float) -> None:
        """Nothing to tell: this process's senders all wait in its Limiter."""

    def _apply(self, kind: str) -> None:
        per_minute = self.limits[kind] * self.factor
        if kind in self.buckets:
            self.buckets[kind].set_per_minute(per_minute)
        else:
            burst = BURST_S if kind == "requests" else TOKEN_BURST_S
            self.buckets[kind] = TokenBucket.per_minute(
                per_minute, burst_s=burst, clock=self._clock, sleep=self._sleep
            )
