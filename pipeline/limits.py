"""Pacing: token buckets refilled continuously, and one shared cooldown after a 429.

A bucket holds at most `capacity` (a small burst, never a minute's worth) and refills at
`rate` a second. `acquire(n)` takes n at once and, if that leaves the bucket in debt, sleeps
exactly until the debt is repaid: callers queue in arrival order without a lock, and no one
polls. The clock and sleep are injectable so tests move time instead of waiting.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]
BURST_S = 0.1  # bucket capacity in seconds of rate: evenly spread, yet never starved


class TokenBucket:
    def __init__(
        self,
        rate_per_s: float,
        capacity: float,
        *,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        if rate_per_s <= 0 or capacity <= 0:
            raise ValueError("rate and capacity must be positive")
        self.rate = rate_per_s
        self.capacity = capacity
        self._level = capacity
        self._updated = clock()
        self._clock = clock
        self._sleep = sleep

    @classmethod
    def per_minute(
        cls, per_minute: float, *, clock: Clock = time.monotonic, sleep: Sleep = asyncio.sleep
    ) -> TokenBucket:
        rate = per_minute / 60.0
        return cls(rate, max(1.0, rate * BURST_S), clock=clock, sleep=sleep)

    def level(self) -> float:
        """Tokens available now (negative while callers are queued in debt)."""
        now = self._clock()
        self._level = min(self.capacity, self._level + (now - self._updated) * self.rate)
        self._updated = now
        return self._level

    async def acquire(self, amount: float = 1.0) -> None:
        self._level = self.level() - amount
        if self._level >= 0:
            return
        try:
            await self._sleep(-self._level / self.rate)
        except asyncio.CancelledError:
            self.give_back(amount)
            raise

    def give_back(self, amount: float) -> None:
        """Return unused tokens (a cancelled wait, or a reservation larger than the use)."""
        self._level = min(self.capacity, self.level() + amount)


class Pacer:
    """What every attempt passes before it is sent: the request bucket and the cooldown."""

    def __init__(
        self,
        requests_per_minute: float | None,
        *,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.requests = (
            TokenBucket.per_minute(requests_per_minute, clock=clock, sleep=sleep)
            if requests_per_minute
            else None
        )
        self._clock = clock
        self._sleep = sleep
        self._resume_at = 0.0
        self.cooldowns = 0

    async def acquire(self) -> None:
        # The cooldown is passed before the token is taken: tokens taken while waiting it
        # out would all be spent at the same instant when it ends, a burst into a 429.
        await self._cooled_down()
        if self.requests is not None:
            await self.requests.acquire()
            await self._cooled_down()  # a 429 may have arrived while we waited our turn

    async def _cooled_down(self) -> None:
        while (wait := self._resume_at - self._clock()) > 0:
            await self._sleep(wait)  # re-checked: a newer 429 may have moved the time

    def cool_down(self, seconds: float) -> None:
        """Hold every sender for `seconds` (a 429's retry-after), not just the one told."""
        resume_at = self._clock() + seconds
        if resume_at > self._resume_at:
            self._resume_at = resume_at
            self.cooldowns += 1
