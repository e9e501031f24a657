"""Pressure from the server: how hard the pacing may push, and whether the API answers at
all. Two controllers with an injectable clock, told of every attempt's end.

`PressureControl` is the one controller of a Limiter (limits.py), and of the Ray pool's
cluster-wide gate: the only code that writes a gate's limit, and the send rate's factor.

- Caps on requests in flight. A gateway that caps them answers the excess with 429 and no
  bucket reported empty. Every request carries the in-flight level it was sent at. A 429
  from above the highest level a 2xx came back from is evidence of a cap: the gate drops
  to just below that level. A 429 from a level known to be safe is noise (a random fault)
  unless NOISE_STREAK come in a row, which means the cap fell: then the gate also drops
  multiplicatively (x CAP_FELL_DECREASE), at most once a CAP_ROUND_S. It starts at
  SLOW_START in flight and adds one for every two 2xx until the job's concurrency (x1.5 a
  round), so a capped gateway meets a small first burst. Quiet spells (CAP_QUIET_S) probe
  back up one step at a time; the step onto the level that last drew a 429 is taken only
  every PROBE_S, so the run sits at the cap instead of bouncing off it.
- The send rate and overloads. 429s that a bucket explains, TROUBLE_IN_A_ROW of them with
  no 2xx between, lower the send rate (x RATE_DECREASE, to RATE_FLOOR at least; at most
  once per retry-after); 529s in a row lower the requests in flight (x OVERLOAD_DECREASE,
  at most once per OVERLOAD_ROUND_S). Each RECOVERY_QUIET_S without either gives a step of
  both back (RATE_STEP_UP; an eighth of the ceiling).
- A Ray worker's gate: the cluster's pool searches for caps on the cluster's total (with a
  PressureControl of its own); a worker's control sends what it saw there (`ClusterLink`)
  and takes the share that comes back (`share`) as its gate's ceiling.

`OutageWatch`: when attempts keep failing (5xx, 529, no answer) with no success between,
the API is down: attempts then go one at a time with growing waits between them (probes),
until one succeeds and full speed returns. `patience_s` after the last success of any row,
`ApiUnavailable` stops the run cleanly: unfinished rows stay to do.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Protocol

from pipeline.errors import ApiUnavailable

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]
Note = Callable[[str], None]

# Caps on requests in flight
SLOW_START = 16  # requests in flight at first (or a quarter of the job's concurrency, if
# more); every two 2xx add one (x1.5 a round) until the job's concurrency or a cap: a
# gateway capped at 5 under concurrency 32 meets a burst of 16, not 32
CAP_FELL_DECREASE = 0.75  # requests in flight x this when a safe level keeps being refused
CAP_ROUND_S = 1.0  # one such decrease per this long: a burst of 429s is one signal
NOISE_STREAK = 5  # 429s in a row from a level known to be safe: the cap fell after all
# (fewer come in a row at the cap itself, where a request sent as another ends may race it)
EDGE_429S = 3  # 429s from the top slot within CAP_QUIET_S: step down one (see _edge_429)
CAP_QUIET_S = 5.0  # a spell without unexplained 429s: one more request in flight
PROBE_S = 30.0  # ...but onto the level that last drew a 429, only this often
# The send rate, and overloads
TROUBLE_IN_A_ROW = 2  # 429s (or 529s) with no 2xx between: the server means it, slow down
RATE_DECREASE, RATE_FLOOR = 0.8, 0.2  # the send rate's multiplicative decrease, its floor
RATE_STEP_UP = 0.1  # the send rate's additive increase, a quiet spell
OVERLOAD_DECREASE = 0.75  # requests in flight x this after 529s in a row
OVERLOAD_ROUND_S = 1.0  # one such decrease per this long: a burst of 529s is one signal
OVERLOAD_STEP_UP_PART = 8  # back up by this part of the ceiling (at least one) a quiet spell
RECOVERY_QUIET_S = 10.0  # this long without a slow-down: one step back up of each
# Outages
FAILURES_FOR_OUTAGE = 8  # transient failures in a row, no success between: the API is down
PROBE_WAITS_S = (0.5, 1.0, 2.0, 3.0)  # between probes in an outage; the last one repeats


class Gate(Protocol):
    limit: int
    ceiling: int

    def set_limit(self, limit: int) -> None: ...
    def set_ceiling(self, ceiling: int, *, keep_lower: bool) -> None: ...


class Rates(Protocol):
    """A Limiter's capacity as its controller sees it: limits it may send at a share of."""

    @property
    def limits(self) -> Mapping[str, float]: ...
    @property
    def scalable(self) -> bool: ...
    def scale(self, factor: float) -> None: ...


class ClusterLink(Protocol):
    """A Ray worker's way to the cluster's controller (ray/lease.py): what the worker saw
    goes there; the share that comes back is given to `PressureControl.share`."""

    def answered(self, level: int) -> None: ...
    def refused(self, level: int) -> None: ...


class PressureControl:
    def __init__(
        self,
        gate: Gate | None,
        *,
        capacity: Rates | None = None,
        cluster: ClusterLink | None = None,
        clock: Clock = time.monotonic,
        note: Note,
    ) -> None:
        self.gate, self.capacity, self.cluster = gate, capacity, cluster
        self._clock, self._note = clock, note
        self.factor = 1.0  # the share of the limits sent at: lowered by repeated 429s
        self.in_a_row = 0  # 429s / 529s since the last 2xx
        self._slowed_at = -math.inf  # the last change of the rate, or of the gate for 529s
        self._trouble_at = clock()  # no recovery step in the first quiet spell: nothing fell
        self._overload_lowered = False  # the gate is under its ceiling because of 529s
        self.safe = 0  # the highest level a 2xx came back from
        self.capped_at: int | None = None  # the lowest level that drew an unexplained 429
        self.streak = 0  # unexplained 429s since the last 2xx
        self.limited = False  # an unexplained 429 lowered the gate at least once
        self._cap_decreased_at = self._cap_changed_at = -math.inf
        self._noted = gate.limit if gate is not None else 0  # the level last told the user
        self._edge: list[float] = []  # times of recent 429s from the top slot
        self._grown = 0  # answers seen in slow start
        if gate is not None and cluster is None:  # a worker's gate starts at its share
            gate.set_limit(min(gate.limit, max(SLOW_START, gate.ceiling // 4)))

    def answered(self, level: int) -> None:
        """A 2xx came back for a request sent with `level` requests in flight."""
        self.in_a_row = 0
        if self.cluster is not None:
            self.cluster.answered(level)
            return
        gate = self.gate
        if gate is None:
            return
        self.safe, self.streak = max(self.safe, level), 0
        if not self.limited and gate.limit < gate.ceiling:
            self._grown += 1  # slow start, no cap met yet: one more per two answers, so a
            if self._grown % 2 == 0:  # round grows it x1.5 and overshoots a cap by half
                gate.set_limit(gate.limit + 1)
        if self.capped_at is not None and level >= self.capped_at:
            self.capped_at = None  # the cap is higher than it was: grow at the usual pace
        if self.limited and level - 1 > gate.limit:  # that many were admitted: back
            self._set(gate, level - 1, self._clock(), "")  # to just under it at once; quiet
            # spells probe the last step, as after any 429

    def unexplained_429(self, level: int) -> None:
        """A 429 that no empty bucket explains, for a request sent at `level`."""
        self.in_a_row += 1
        gate = self.gate
        if gate is None:
            return
        if self.cluster is not None:  # until the cluster's control answers, this worker's
            gate.set_limit(min(gate.limit, level - 1))  # own level drew it: under it
            self.cluster.refused(level)
            return
        self.streak += 1
        now = self._clock()
        if level > self.safe:  # a level no 2xx came back from: the cap is below it
            limit = min(gate.limit, max(1, level - 1))
        elif self.streak >= NOISE_STREAK:  # a level that worked, refused again and again:
            self.safe = level - 1  # the cap fell (another client shares the key, say)
            limit = min(gate.limit, max(1, level - 1))
            if now - self._cap_decreased_at >= CAP_ROUND_S:
                limit = min(limit, max(1, math.ceil(gate.limit * CAP_FELL_DECREASE)))
                self._cap_decreased_at = now
        elif self._edge_429(gate, level, now):  # the top slot keeps drawing 429s: one fewer
            limit = max(1, gate.limit - 1)
        else:
            return  # a 2xx came back from this level: a random fault, not the cap
        self.capped_at = level if self.capped_at is None else min(self.capped_at, level)
        self._set(gate, limit, now, "after 429s: too many requests in flight")
        self.limited = True

    def _edge_429(self, gate: Gate, level: int, now: float) -> bool:
        """At the cap itself, a request sent as another ends can race it and draw a 429:
        EDGE_429S of those from the top slot within CAP_QUIET_S mean one fewer in flight pays."""
        if level < gate.limit:
            return False
        self._edge = [t for t in self._edge if now - t < CAP_QUIET_S] + [now]
        if len(self._edge) < EDGE_429S:
            return False
        self._edge = []
        return True

    def rate_limited(self, retry_after_s: float, now: float) -> None:
        """A 429 a bucket explains (the Limiter cools down for it): 429s in a row lower the
        send rate, once per retry-after."""
        self.in_a_row += 1
        capacity = self.capacity
        if (
            self.in_a_row >= TROUBLE_IN_A_ROW
            and capacity is not None
            and capacity.scalable
            and now - self._slowed_at >= retry_after_s
        ):
            self._trouble_at = now
            self._set_factor(max(RATE_FLOOR, self.factor * RATE_DECREASE), now)

    def overloaded(self) -> None:
        """A 529: the server is busy, not our rate: 529s in a row mean fewer in flight."""
        now = self._clock()
        self.in_a_row += 1
        gate = self.gate
        if gate is None or self.in_a_row < TROUBLE_IN_A_ROW:
            return
        if now - self._slowed_at < OVERLOAD_ROUND_S:
            return
        self._trouble_at = self._slowed_at = now
        before = gate.limit
        gate.set_limit(int(gate.limit * OVERLOAD_DECREASE))
        if gate.limit < before:
            self._overload_lowered = True
            self._note(f"requests in flight lowered to {gate.limit} (overloaded)")

    def tick(self) -> None:
        """Before each request: after a quiet spell, one more request in flight (once a cap
        has lowered the gate; before that, slow start grows it)."""
        gate = self.gate
        if gate is None or self.cluster is not None:
            return  # a worker's: the cluster's control probes
        if not self.limited or gate.limit >= gate.ceiling:
            return
        now = self._clock()
        probing_cap = self.capped_at is not None and gate.limit + 1 >= self.capped_at
        if now - self._cap_changed_at >= (PROBE_S if probing_cap else CAP_QUIET_S):
            self._set(gate, gate.limit + 1, now, "")

    def recover(self) -> None:
        """Additive increase: each quiet stretch gives back a step of rate and concurrency."""
        now = self._clock()
        if now - max(self._trouble_at, self._slowed_at) < RECOVERY_QUIET_S:
            return
        if self.factor < 1.0:
            self._set_factor(min(1.0, self.factor + RATE_STEP_UP), now)
        gate = self.gate
        if gate is not None and self._overload_lowered and not self.limited:
            # (below a cap, the cap's probes grow it)
            gate.set_limit(gate.limit + max(1, gate.ceiling // OVERLOAD_STEP_UP_PART))
            self._overload_lowered = gate.limit < gate.ceiling
            self._slowed_at = now
            self._note(f"requests in flight back up to {gate.limit}")

    def share(self, limit: int) -> None:
        """A Ray worker's share of the cluster's requests in flight: its gate's ceiling. A
        step down after 529s holds, until quiet spells have stepped back up to it."""
        gate = self.gate
        if gate is None:
            return
        if self._overload_lowered and gate.limit >= limit:
            self._overload_lowered = False
        gate.set_ceiling(limit, keep_lower=self._overload_lowered)

    def _set(self, gate: Gate, limit: int, now: float, why: str) -> None:
        """A cap's move of the gate, told once in each direction (probes are not news)."""
        self._cap_changed_at = now
        if limit == gate.limit:
            return
        gate.set_limit(limit)
        limit = gate.limit
        probe = self.capped_at is not None and limit >= self.capped_at
        if limit < self._noted or (limit > self._noted and not probe):
            direction = "lowered" if limit < self._noted else "back up"
            self._note(f"requests in flight {direction} to {limit}{' ' + why if why else ''}")
            self._noted = limit

    def _set_factor(self, factor: float, now: float) -> None:
        before, self._slowed_at = self.factor, now
        if factor == before or self.capacity is None:
            return  # at the floor (or the top) already: no change, nothing to say
        self.factor = factor
        self.capacity.scale(factor)
        rate = self.capacity.limits.get("requests")
        shown = f" ({rate * factor:,.0f} requests/min)" if rate else ""
        direction = "back up" if factor > before else "lowered"
        self._note(f"send rate {direction} to {factor:.0%} of the limits{shown}")

    def settled(self) -> str | None:
        """Where the gate ended up after a cap, for the summary; None when none was met."""
        if not self.limited or self.gate is None:
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
