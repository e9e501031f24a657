"""Pressure from the server: how many requests it lets us keep in flight, and whether it
answers at all. Two controllers with an injectable clock, told of every attempt's end.

`ConcurrencyControl`: a gateway that caps requests in flight answers the excess with 429
and no bucket reported empty. Every request carries the in-flight level it was sent at. A
429 from above the highest level a 2xx came back from is evidence of a cap: the gate drops
to just below that level. A 429 from a level known to be safe is noise (a random fault)
unless five come in a row, which means the cap fell: then the gate also drops
multiplicatively (x0.75), at most once a round. It starts at SLOW_START in flight and adds
one for every two 2xx until the job's concurrency (x1.5 a round), so a capped gateway meets
a small first burst. Quiet spells probe back up one step at a time; the step onto the level
that last drew a 429 is taken only every `PROBE_S`, so the run sits at the cap instead of
bouncing off it.

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

SLOW_START = 16  # requests in flight at first (or a quarter of the job's concurrency, if
# more); every two 2xx add one (x1.5 a round) until the job's concurrency or a cap: a
# gateway capped at 5 under concurrency 32 meets a burst of 16, not 32
DECREASE = 0.75  # multiplicative decrease of the requests in flight, once a round
ROUND_S = 1.0  # one multiplicative decrease per this long: a burst of 429s is one signal
NOISE_STREAK = 5  # 429s in a row from a level known to be safe: the cap fell after all
# (fewer come in a row at the cap itself, where a request sent as another ends may race it)
EDGE_429S = 3  # 429s from the top slot within QUIET_S: step down one (see _edge_429)
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
        self._edge: list[float] = []  # times of recent 429s from the top slot
        self._grown = 0  # answers seen in slow start
        gate.set_limit(min(gate.limit, max(SLOW_START, gate.ceiling // 4)))

    def answered(self, level: int) -> None:
        """A 2xx came back for a request sent with `level` requests in flight."""
        self.safe, self.streak = max(self.safe, level), 0
        if not self.limited and self.gate.limit < self.gate.ceiling:
            self._grown += 1  # slow start, no cap met yet: one more per two answers, so a
            if self._grown % 2 == 0:  # round grows it x1.5 and overshoots a cap by half
                self.gate.set_limit(self.gate.limit + 1)
        if self.capped_at is not None and level >= self.capped_at:
            self.capped_at = None  # the cap is higher than it was: grow at the usual pace
        if self.limited and level - 1 > self.gate.limit:  # that many were admitted: back
            self._set(level - 1, self._clock(), "")  # to just under it at once; quiet
            # spells probe the last step, as after any 429

    def unexplained_429(self, level: int) -> None:
        """A 429 that no empty bucket explains, for a request sent at `level`."""
        self.streak += 1
        now = self._clock()
        if level > self.safe:  # a level no 2xx came back from: the cap is below it
            limit = min(self.gate.limit, max(1, level - 1))
        elif self.streak >= NOISE_STREAK:  # a level that worked, refused again and again:
            self.safe = level - 1  # the cap fell (another client shares the key, say)
            limit = min(self.gate.limit, max(1, level - 1))
            if now - self._last_decrease >= ROUND_S:
                limit = min(limit, max(1, math.ceil(self.gate.limit * DECREASE)))
                self._last_decrease = now
        elif self._edge_429(level, now):  # the top slot keeps drawing 429s: one fewer
            limit = max(1, self.gate.limit - 1)
        else:
            return  # a 2xx came back from this level: a random fault, not the cap
        self.capped_at = level if self.capped_at is None else min(self.capped_at, level)
        self._set(limit, now, "after 429s: too many requests in flight")
        self.limited = True

    def _edge_429(self, level: int, now: float) -> bool:
        """At the cap itself, a request sent as another ends can race it and draw a 429:
        EDGE_429S of those from the top slot within QUIET_S mean one fewer in flight pays."""
        if level < self.gate.limit:
            return False
        self._edge = [t for t in self._edge if now - t < QUIET_S] + [now]
        if len(self._edge) < EDGE_429S:
            return False
        self._edge = []
        return True

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

    def stale(self) -> bool:
        """Is an admission given before the limiter's wait out of date (the API down)?"""
        return self.down

    def release(self, held: bool) -> None:
        if held:
            self._lane.release()


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:,.0f} s"
    return f"{seconds / 60:,.0f} minutes"
