"""The gateway's front door: answers that turn a request away before any work is done.

In this order: the outage (every request 503 while it lasts), the API key (401), the cap on
requests in flight (429). None of them is billed, none carries rate-limit headers: they do
not come from the rate limiter, and a client must not read them as "a bucket is empty".
"""

from __future__ import annotations

import hmac
import time
from typing import TYPE_CHECKING, Any

from aiohttp import web

from pipeline.simulator.buckets import Clock
from pipeline.simulator.protocol import ApiError

if TYPE_CHECKING:
    from pipeline.simulator.state import SimulatorState

# What the default gateway answers past its cap (../shared/API-NOTES.md, rate limits).
CONCURRENCY_MESSAGE = "too many concurrent requests"
OUTAGE_MESSAGE = "Service Unavailable: the API is temporarily unable to serve requests"


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


def turn_away(request: web.Request, state: SimulatorState, *, capped: bool) -> ApiError | None:
    """The error that turns this request away at the door, or None to let it in.

    `capped`: whether the concurrency cap applies (not to count_tokens, which is free).
    """
    if state.outage.active():
        state.stats.refused["outage"] += 1
        return ApiError(503, OUTAGE_MESSAGE, rate_limit_headers=False)
    try:
        check_key(request, state.config.require_key)
    except ApiError as error:
        return error
    limit = state.config.max_concurrency
    if capped and limit is not None and state.stats.in_flight >= limit:
        state.stats.refused["concurrency"] += 1
        return ApiError(
            429,
            CONCURRENCY_MESSAGE,
            code="rate_limit_exceeded",
            gateway=True,
            retry_after="1",
            rate_limit_headers=False,
        )
    return None


def check_key(request: web.Request, required: str | None) -> None:
    """401 unless the request presents `required` as x-api-key or a Bearer token."""
    if required is None:
        return
    presented = request.headers.get("x-api-key")
    if presented is None:
        authorization = request.headers.get("authorization", "")
        presented = authorization[7:] if authorization.lower().startswith("bearer ") else ""
    if not hmac.compare_digest(presented.encode(), required.encode()):
        raise ApiError(401, "invalid x-api-key")
