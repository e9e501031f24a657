"""The gateway's front door: answers that turn a request away before any work is done.

In this order: the outage (every request 503 while it lasts), the API key (401), the cap on
requests in flight (429). None of them is billed, none carries rate-limit headers: they do
not come from the rate limiter, and a client must not read them as "a bucket is empty".
"""

from __future__ import annotations

import hmac

from aiohttp import web

from pipeline.simulator.protocol import ApiError
from pipeline.simulator.state import SimulatorState

# What the default gateway answers past its cap (../shared/API-NOTES.md, rate limits).
CONCURRENCY_MESSAGE = "too many concurrent requests"
OUTAGE_MESSAGE = "Service Unavailable: the API is temporarily unable to serve requests"


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
