"""The simulator's own routes (/_sim/...), for tests and benchmarks, and the JSON answer to
routes that do not exist (the real API answers those with an error body, never plain text).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses

import orjson
from aiohttp import web
from aiohttp.typedefs import Handler

from pipeline.simulator.batches import reset_batches
from pipeline.simulator.messages import MESSAGES
from pipeline.simulator.protocol import ApiError
from pipeline.simulator.replies import error_response, json_response
from pipeline.simulator.state import STATE

# The Anthropic shape for every route the server does not have (aiohttp's own reasons);
# no rate-limit headers: such a request is not counted against any limit.
RESET_QUIET_S = 10.0  # the longest a reset waits for the requests being answered
ROUTE_ERRORS = {404: ("not_found_error", "Not Found"), 405: ("invalid_request_error", None)}


def add_control_routes(app: web.Application) -> None:
    app.router.add_get("/_sim/ledger", _get_ledger)
    app.router.add_get("/_sim/stats", _get_stats)
    app.router.add_post("/_sim/reset", _post_reset)
    app.router.add_post("/_sim/outage", _post_outage)
    app.router.add_post("/_sim/cache/age", _post_cache_age)
    app.middlewares.append(route_errors_as_json)


@web.middleware
async def route_errors_as_json(request: web.Request, handler: Handler) -> web.StreamResponse:
    """404 / 405 from the router as the API's JSON error body, with a request id."""
    try:
        return await handler(request)
    except web.HTTPException as error:
        if error.status not in ROUTE_ERRORS:
            raise
        state = request.app[STATE]
        error_type, message = ROUTE_ERRORS[error.status]
        api_error = ApiError(
            error.status, message or error.reason, error_type=error_type, rate_limit_headers=False
        )
        response = error_response(state.limiter, MESSAGES, api_error, state.next_id("req_sim_"))
        if "Allow" in error.headers:  # 405 names the methods the route takes
            response.headers["Allow"] = error.headers["Allow"]
        return response


async def _get_ledger(request: web.Request) -> web.Response:
    return json_response(200, request.app[STATE].ledger.entries, {})


async def _get_stats(request: web.Request) -> web.Response:
    state = request.app[STATE]
    return json_response(200, state.stats.snapshot() | {"outage": state.outage.snapshot()}, {})


async def _post_reset(request: web.Request) -> web.Response:
    """A fresh start, as if the server had been started with its flags and `{"settings":
    {name: value}}` laid over them (SimConfig's names; not host, port, ledger_path). The
    requests being answered end first (up to RESET_QUIET_S: a client killed mid-request
    leaves them), so none is billed into the next ledger; batches are stopped first."""
    state = request.app[STATE]
    try:
        raw = await request.read()
        settings = orjson.loads(raw)["settings"] if raw else {}
        if "skills" in settings:  # JSON has lists where SimConfig has tuples
            settings["skills"] = tuple(tuple(skill) for skill in settings["skills"])
        config = state.check(dataclasses.replace(state.started, **settings))
    except (ValueError, TypeError, KeyError) as error:
        bad = ApiError(400, f"expected {{'settings': {{SimConfig name: value}}}}: {error}")
        return error_response(state.limiter, MESSAGES, bad, state.next_id("req_sim_"))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + RESET_QUIET_S
    # again after each wake: a request may have come in before this handler ran again
    while state.stats.in_flight > 0 and (left := deadline - loop.time()) > 0:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(state.stats.quiet.wait(), left)
    reset_batches(request.app, config)  # no await from the last look to the reset
    state.configure(config)
    return json_response(200, {"ok": True, "in_flight": state.stats.in_flight}, {})


async def _post_cache_age(request: web.Request) -> web.Response:
    """`{"s": S}`: the prompt cache ages S seconds (a pause, without waiting for it)."""
    state = request.app[STATE]
    try:
        seconds = float((await request.json())["s"])
        if seconds < 0:
            raise ValueError("negative")
    except (ValueError, TypeError, KeyError) as error:
        bad = ApiError(400, f"expected {{'s': seconds >= 0}}: {error!r}")
        return error_response(state.limiter, MESSAGES, bad, state.next_id("req_sim_"))
    state.cache_age_s += seconds
    return json_response(200, {"cache_age_s": state.cache_age_s}, {})


async def _post_outage(request: web.Request) -> web.Response:
    """`{"for_s": F, "after_s": A}`: every request answered 503 from A s from now, for F s."""
    state = request.app[STATE]
    try:
        body = await request.json()
        for_s, after_s = float(body["for_s"]), float(body.get("after_s", 0.0))
        if for_s < 0 or after_s < 0:
            raise ValueError("negative")
    except (ValueError, TypeError, KeyError) as error:
        message = f"expected {{'for_s': seconds >= 0, 'after_s': seconds >= 0}}: {error!r}"
        bad = ApiError(400, message)
        return error_response(state.limiter, MESSAGES, bad, state.next_id("req_sim_"))
    state.outage.begin(for_s, after_s)
    return json_response(200, state.outage.snapshot(), {})
