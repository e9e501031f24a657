"""Warm before the fan-out: one request writes a prefix's cache entry before others read it.

A cache entry is readable only once the answer that writes it has begun, so 32 requests
sent together before the first answer would pay 32 writes (1.25x / 2x input each). The
first request with a prefix goes alone; the others with that prefix wait on an event (no
polling) until its answer arrives, then go and read. The entry lives `ttl` from its last
use, so after a pause longer than that (a cooldown, a slow limit) the next request warms
it again. A warm-up that gets no answer hands the role to the next request.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

TTL_S = {"5m": 300.0, "1h": 3600.0}
MARGIN_S = 15.0  # warm again a little before the server's entry would expire


class WarmGate:
    def __init__(self, ttl: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s = TTL_S[ttl] - MARGIN_S
        self.clock = clock
        self.warm_until: dict[str, float] = {}
        self.warming: dict[str, asyncio.Event] = {}
        self.warmups = 0  # requests sent alone to write an entry

    async def enter(self, key: str) -> bool:
        """Wait until requests with this prefix may go; True when this one is to warm it."""
        while True:
            if self.warm_until.get(key, float("-inf")) > self.clock():
                return False
            event = self.warming.get(key)
            if event is None:
                self.warming[key] = asyncio.Event()
                self.warmups += 1
                return True
            await event.wait()

    def done(self, key: str, *, warmer: bool, answered: bool) -> None:
        """A request with this prefix ended; an answer means the entry is (still) live."""
        if answered:
            self.warm_until[key] = self.clock() + self.ttl_s  # a read refreshes it too
        if warmer:
            event = self.warming.pop(key, None)
            if event is not None:
                event.set()  # waiters look again: warm now, or one of them warms
