"""The outage window: a stretch of time in which the simulator answers every request 503."""

from __future__ import annotations

import time
from typing import Any

from pipeline.simulator.buckets import Clock


class OutageWindow:
    """The stretch of time in which every request is answered 503.

    Configured as `after_s` / `for_s` from the first request (re-armed by a reset), or
    started at any moment by `begin` (what `POST /_sim/outage` calls).
    """

    def __init__(self, after_s: float, for_s: float, clock: Clock = time.monotonic) -> None:
        self._after_s, self._for_s, self._clock = after_s, for_s, clock
        self._wall_offset = time.time() - clock()  # to report the window in UNIX time
        self.reset()

    def reset(self) -> None:
        self._armed = self._for_s > 0  # the configured window waits for the first request
        self._start: float | None = None
        self._end: float | None = None

    def begin(self, for_s: float, after_s: float = 0.0) -> None:
        """An outage from `after_s` seconds from now, lasting `for_s` seconds."""
        self._armed = False
        self._start = self._clock() + after_s
        self._end = self._start + for_s

    def active(self) -> bool:
        """Is a request arriving now inside the outage? (The first one arms the config's.)"""
        if self._armed:
            self.begin(self._for_s, self._after_s)
        return self._is_on(self._clock())

    def _is_on(self, now: float) -> bool:
        return self._start is not None and self._end is not None and self._start <= now < self._end

    def snapshot(self) -> dict[str, Any]:
        """The current (or last) window in UNIX time, for tests and benchmarks."""
        if self._start is None or self._end is None:
            return {"start_ts": None, "end_ts": None, "active": False}
        return {
            "start_ts": self._start + self._wall_offset,
            "end_ts": self._end + self._wall_offset,
            "active": self._is_on(self._clock()),
        }
