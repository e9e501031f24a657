"""Pressure from the server: how many requests it lets us keep in flight, and whether it
answers at all. Two controllers with an injectable clock, told of every attempt's end.

`ConcurrencyControl`: a gateway that caps requests in flight answers the excess with 429
and no bucket reported empty. Every request carries the in-flight level it was sent at. A
429 from above the highest level a 2xx came back from is evidence of a cap: the gate drops
to just below that level, and multiplicatively (x0.75) at most once a round. A 429 from a
level known to be safe is noise (a random fault) unless three come in a row, which means the
cap fell. It starts at SLOW_START in flight and adds one for each 2xx until the job's concurrency (a
round doubles it), so a capped gateway meets a small first burst. Quiet spells probe back up
one step at a time; the step onto the level that last
drew a 429 is taken only every `PROBE_S`, so the run sits at the cap instead of bouncing off.

`OutageWatch`: when attempts keep failing (5xx, 529, no answer) with no success between,
the API is down: attempts then go one at a time with growing waits between them (probes),
until one succeeds and full speed returns. `patience_s` after the last success of any row,
`ApiUnavailable` stops the run cleanly: unfinished rows stay to do.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

from pipeline.errors import ApiUnavailable

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]
Note = Callable[[str], None]

SLOW_START = 16  # requests in flight at first; each 2xx adds one (doubling a round) until
# the job's concurrency or a cap: a gateway capped at 5 then meets a burst of 16, not 256
DECREASE = 0.75  # multiplicative decrease of the requests in flight, once a round
ROUND_S = 1.0  # one multiplicative decrease per this long: a burst of 429s is one signal
NOISE_STREAK = 3  # 429s in a row from a level known to be safe: the cap fell after all
QUIET_S = 5.0  # a spell without unexplained 429s: one more request in flight
PROBE_S = 30.0  # ...but onto the level that last drew a 429, only this often
FAILURES_FOR_OUTAGE = 8  # transient failures in a row, no success between: the API is down
PROBE_WAITS_S = (0.5, 1.0, 2.0, 3.0)  # between probes in an outage; the last one repeats


class Gate(Protocol):
    limit: int
    ceiling: int

    def set_limit(self, limit: int) -> None: ...


class ConcurrencyControl:
    def __init__(self, gate: Gate, *, clock: Clock = time.monotonic, note: Note) -> None:
        self.gate, self._clock, self._note = gate, clock, note
        self.safe = 0  # the highest level a 2xx came back from
        self.capped_at: int | None = None  # the lowest level that drew an unexplained 429
        self.streak = 0  # unexplained 429s since the last 2xx
        self.limited = False  # an unexplained 429 lowered the gate at least once
        self._last_decrease = self._last_change = -math.inf
        self._noted = gate.limit  # the level last told to the user
        gate.set_limit(min(gate.limit, SLOW_START))

    def answered(self, level: int) -> None:
        """A 2xx came back for a request sent with `level` requests in flight."""
        self.safe, self.streak = max(self.safe, level), 0
        if not self.limited and self.gate.limit < self.gate.ceiling:
            self.gate.set_limit(self.gate.limit + 1)  # slow start: no cap met yet
        if self.capped_at is not None and level >= self.capped_at:
            self.capped_at = None  # the cap is higher than it was: grow at the usual pace

    def unexplained_429(self, level: int) -> None:
        """A 429 that no empty bucket explains, for a request sent at `level`."""
        self.streak += 1
        if level <= self.safe:
            if self.streak < NOISE_STREAK:
                return  # a 2xx came back from this level: a random fault, not the cap
            self.safe = level - 1  # three in a row from a safe level: the cap fell
        now = self._clock()
        self.capped_at = level if self.capped_at is None else min(self.capped_at, level)
        limit = min(self.gate.limit, max(1, level - 1))
        if now - self._last_decrease >= ROUND_S:
            limit = min(limit, max(1, math.ceil(self.gate.limit * DECREASE)))
            self._last_decrease = now
        self._set(limit, now, "after 429s: too many requests in flight")
        self.limited = True

    def tick(self) -> None:
        """Before each request: after a quiet spell, one more request in flight (once this
        control has lowered the gate; before that, slow start grows it)."""
        if not self.limited or self.gate.limit >= self.gate.ceiling:
            return
        now = self._clock()
        probing_cap = self.capped_at is not None and self.gate.limit + 1 >= self.capped_at
        if now - self._last_change >= (PROBE_S if probing_cap else QUIET_S):
            self._set(self.gate.limit + 1, now, "")

    def _set(self, limit: int, now: float, why: str) -> None:
        self._last_change = now
        if limit == self.gate.limit:
            return
        self.gate.set_limit(limit)
        limit = self.gate.limit
        probe = self.capped_at is not None and limit >= self.capped_at
        if limit < self._noted or (limit > self._noted and not probe):  # once, and no probes
            direction = "lowered" if limit < self._noted else "back up"
            self._note(f"requests in flight {direction} to {limit}{' ' + why if why else ''}")
            self._noted = limit

    def settled(self) -> str | None:
        """Where the gate ended up, for the summary; None when no cap was met."""
        if not self.limited:
            return None
        level = self.gate.limit
        if self.capped_at is not None:
            level = min(level, self.capped_at - 1)
        return f"requests in flight settled at {max(1, level)} after 429s"


class OutageWatch:
    def __init__(
        self,
        patience_s: float,
        *,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        note: Note,
    ) -> None:
        self.patience_s = patience_s
        self._clock, self._sleep, self._note = clock, sleep, note
        self.last_success = clock()
        self.trouble_since: float | None = None  # the first unanswered attempt since a 2xx
        self.failures = 0  # transient failures since the last success
        self.down_since: float | None = None  # set while the API is taken to be down
        self._lane = asyncio.Lock()  # in an outage: one probe at a time
        self._probes = 0

    @property
    def down(self) -> bool:
        return self.down_since is not None

    def succeeded(self) -> None:
        now = self._clock()
        self.last_success, self.failures, self.trouble_since = now, 0, None
        if self.down_since is not None:
            self._note(f"the API answers again after {now - self.down_since:,.0f} s: full speed")
            self.down_since, self._probes = None, 0

    def troubled(self) -> None:
        """An attempt not answered with success (a 429, a failure): patience runs from the
        first of them since the last success, so long answers in flight never count."""
        if self.trouble_since is None:
            self.trouble_since = self._clock()

    def failed(self) -> None:
        """A transient failure: 5xx, 529, a dropped connection or a timeout."""
        self.troubled()
        self.failures += 1
        if self.down_since is None and self.failures >= FAILURES_FOR_OUTAGE:
            self.down_since = self._clock()
            self._note(
                f"the API failed {self.failures} attempts in a row: sending one probe at a "
                "time until it answers"
            )

    def check_patience(self, what: str = "answered successfully") -> None:
        """ApiUnavailable once attempts have gone unanswered (no 2xx for any row) for
        `patience_s`, counted from the first of them since the last success."""
        if self.trouble_since is None:
            return
        silent = self._clock() - self.last_success
        if self._clock() - self.trouble_since > self.patience_s:
            raise ApiUnavailable(
                f"the API has not {what} for {_duration(silent)}; the rows not finished "
                "stay to do: run again to resume"
            )

    async def admit(self) -> bool:
        """Before an attempt. In an outage: wait for the probe lane (True: release it after
        the attempt with `release`), then the growing wait between probes. Waiters that get
        the lane after the outage ended go on at once, together, without holding it."""
        self.check_patience()
        if not self.down:
            return False
        await self._lane.acquire()
        try:
            if not self.down:  # it ended while we queued: full speed, not one at a time
                self._lane.release()
                return False
            wait = PROBE_WAITS_S[min(self._probes, len(PROBE_WAITS_S) - 1)]
            self._probes += 1
            await self._sleep(wait)
            self.check_patience()
        except BaseException:
            self._lane.release()
            raise
        if not self.down:
            self._lane.release()
            return False
        return True

    def release(self, held: bool) -> None:
        if held:
            self._lane.release()


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:,.0f} s"
    return f"{seconds / 60:,.0f} minutes"
