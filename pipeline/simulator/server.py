"""The simulator's HTTP server: routes, the life of one request, and the command line.

The life of a request: front door (outage -> key -> concurrency cap, see `gateway`) -> fault
draw -> body -> scripted triggers or the drawn fault -> validation -> prompt cache plan (as
of arrival) -> rate limits -> latency -> answer begins (what it wrote to the cache becomes
readable) -> bill -> send. Faults are drawn before any work, so injected failures are never
billed; a stream with a corrupted event is billed in full (the tokens were generated).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import signal
import sys
import time
from collections.abc import Awaitable, Callable

import orjson
from aiohttp import web

from pipeline.simulator.answers import NO_DIRECTIVES, Directives, parse_directives
from pipeline.simulator.batches import add_batch_routes
from pipeline.simulator.bodies import MESSAGES_MAX_BYTES, read_body
from pipeline.simulator.buckets import Clock, RateLimiter, retry_after_header
from pipeline.simulator.chat import CHAT_COMPLETIONS
from pipeline.simulator.config import SimConfig, config_from_args, flag_parser
from pipeline.simulator.control import add_control_routes
from pipeline.simulator.gateway import turn_away
from pipeline.simulator.ledger import ledger_entry
from pipeline.simulator.messages import MESSAGES
from pipeline.simulator.protocol import ApiError, Dialect, ParsedRequest, Usage, last_user_text
from pipeline.simulator.replies import error_response, headers_for, json_response, send_stream
from pipeline.simulator.state import STATE, SimulatorState
from pipeline.simulator.streaming import StreamPlan, corrupt_event, plan_stream

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
INJECTED_ERRORS = {
    "429": ("Number of requests has exceeded your rate limit (injected fault)", "1"),
    "500": ("Internal server error", None),
    "529": ("Overloaded", None),
}


class OutputReservation:
    """The max_tokens taken from the output bucket; settled once with what was delivered."""

    def __init__(self, limiter: RateLimiter, reserved: int) -> None:
        self._limiter = limiter
        self._reserved = reserved
        self._open = True

    def settle(self, delivered: int) -> None:
        if self._open:
            self._open = False
            self._limiter.settle(self._reserved, delivered)


def build_app(config: SimConfig, *, clock: Clock = time.monotonic) -> web.Application:
    """The simulator as an aiohttp application (serve it with `serve` or a test server)."""
    # The API routes read their bodies under their own limits (`bodies`); the app-wide one
    # is left for the control routes, which read small JSON with `request.json()`.
    app = web.Application(client_max_size=MESSAGES_MAX_BYTES)
    app[STATE] = SimulatorState(config, clock)
    app.router.add_post("/v1/messages", _api_handler(MESSAGES))
    app.router.add_post("/v1/messages/count_tokens", _count_tokens)
    app.router.add_post("/v1/chat/completions", _api_handler(CHAT_COMPLETIONS))
    add_batch_routes(app)
    add_control_routes(app)
    app.on_cleanup.append(_close_ledger)
    return app


def _api_handler(dialect: Dialect) -> Handler:
    async def handle(request: web.Request) -> web.StreamResponse:
        state = request.app[STATE]
        state.stats.requests += 1
        request_id = state.next_id("req_sim_")
        refusal = turn_away(request, state, capped=True)
        if refusal is not None:
            response: web.StreamResponse | None = _error(state, dialect, refusal, request_id)
        else:
            state.stats.enter()  # no await since the cap's check: the count cannot race
            try:
                response = await _answer(request, state, dialect, request_id)
            finally:
                state.stats.leave()
        if response is None:
            state.stats.dropped += 1
            return web.Response()  # never sent: the connection is already closed
        state.stats.by_status[response.status] += 1
        return response

    return handle


async def _answer(
    request: web.Request, state: SimulatorState, dialect: Dialect, request_id: str
) -> web.StreamResponse | None:
    """The answer to one API request; None when the fault drawn is a dropped connection."""
    try:
        fault = state.draw_fault()
        raw = await read_body(request, MESSAGES_MAX_BYTES)
        body = _decode(raw)
        directives = parse_directives(last_user_text(body))
        if directives != NO_DIRECTIVES:  # scripted behaviour replaces random faults
            _raise_scripted_error(state, directives, raw)
        elif fault == "drop":
            if request.transport is not None:
                request.transport.close()
            return None
        elif fault is not None:
            message, retry_after = INJECTED_ERRORS[fault]
            raise ApiError(int(fault), message, retry_after=retry_after)
        parsed = dialect.parse(body)
    except ApiError as error:
        return _error(state, dialect, error, request_id)
    return await _serve(request, state, dialect, request_id, parsed, directives)


def _decode(raw: bytes | bytearray) -> object:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as error:
        raise ApiError(400, f"The request body is not valid JSON: {error}") from error


def _raise_scripted_error(
    state: SimulatorState, directives: Directives, raw: bytes | bytearray
) -> None:
    """Answer `[[sim:status=N]]` with that error, `[[sim:fail_first=N]]` with 500s at first."""
    status = directives.status
    if status is not None and status >= 400:
        if status == 422:
            message = "max_tokens exceeds the limit of this plan (scripted)"
            raise ApiError(422, message, code="max_tokens_exceeded", gateway=True)
        retry_after = "1" if status == 429 else None
        message = "Overloaded" if status == 529 else f"Scripted {status} from the simulator"
        raise ApiError(status, message, retry_after=retry_after)
    if directives.fail_first:
        attempt = state.attempt("fail_first", raw)
        if attempt <= directives.fail_first:
            message = f"Internal server error (scripted: attempt {attempt} of the first "
            raise ApiError(500, message + f"{directives.fail_first} fails)")


def _stream_directives(
    state: SimulatorState, directives: Directives, parsed: ParsedRequest
) -> Directives:
    """`[[sim:stream_error_first=N]]`: the first N streams of this prompt break after two
    text deltas, later ones complete (a retried mid-stream error that then succeeds)."""
    if not directives.stream_error_first:
        return directives
    attempt = state.attempt("stream_error_first", orjson.dumps(parsed.prompt.messages))
    if attempt <= directives.stream_error_first:
        return dataclasses.replace(directives, stream_error_after=2)
    return directives


def _corrupted(
    state: SimulatorState, directives: Directives, parsed: ParsedRequest, plan: StreamPlan
) -> StreamPlan:
    """The stream with one event garbled, if the directives or the seeded rate ask for it.

    `[[sim:corrupt_event_first=N]]`: the first N streams of this prompt, at the middle text
    delta or at `[[sim:corrupt_event_at=K]]`; `corrupt_event_at` alone: every stream.
    """
    if directives.corrupt_event_first:
        attempt = state.attempt("corrupt_event_first", orjson.dumps(parsed.prompt.messages))
        if attempt > directives.corrupt_event_first:
            return plan
        return corrupt_event(plan, directives.corrupt_event_at)
    if directives.corrupt_event_at is not None:
        return corrupt_event(plan, directives.corrupt_event_at)
    if directives != NO_DIRECTIVES:  # scripted behaviour replaces random faults
        return plan
    at = state.draw_corrupt_event(len(plan.frames))
    return plan if at is None else corrupt_event(plan, at)


async def _serve(
    request: web.Request,
    state: SimulatorState,
    dialect: Dialect,
    request_id: str,
    parsed: ParsedRequest,
    directives: Directives,
) -> web.StreamResponse:
    """Rate limits, latency, the answer and the bill for a valid request."""
    cache_plan = state.cache.plan(parsed)  # as of its arrival
    usage = cache_plan.usage
    max_tokens = parsed.prompt.max_tokens
    refusal = _rate_limited(state, usage, max_tokens)
    if refusal is not None:
        return _error(state, dialect, refusal, request_id)
    state.cache.admit(cache_plan)
    reservation = OutputReservation(state.limiter, max_tokens)
    try:
        delay = state.latency_s()
        if delay:
            await asyncio.sleep(delay)
        # The answer begins here (nothing awaits until its body or stream headers go out):
        # only requests arriving from now on can read what this one writes.
        state.cache.publish(cache_plan)
        answer = state.answer(parsed.prompt, directives)
        message_id = state.next_id(dialect.id_prefix)
        ids = (request_id, message_id)
        if parsed.stream:
            directives = _stream_directives(state, directives, parsed)
            plan = plan_stream(message_id, parsed.prompt.model, answer, usage, directives)
            plan = _corrupted(state, directives, parsed, plan)
            reservation.settle(plan.output_tokens)
            _bill(state, dialect, ids, parsed, usage.with_output(plan.output_tokens), plan)
            headers = headers_for(state.limiter, dialect, request_id)
            return await send_stream(request, headers, plan.frames)
        reservation.settle(answer.output_tokens)
        usage = usage.with_output(answer.output_tokens)
        body = dialect.success_body(message_id, parsed.prompt, answer, usage, directives)
        _bill(state, dialect, ids, parsed, usage, None)
        return json_response(200, body, headers_for(state.limiter, dialect, request_id))
    finally:
        reservation.settle(0)  # nothing was delivered if we got here early


def _rate_limited(state: SimulatorState, usage: Usage, max_tokens: int) -> ApiError | None:
    """The 429 if the token buckets refuse the request (cache reads are free of them)."""
    admission = state.limiter.try_acquire(usage.rate_limited_input, max_tokens)
    if admission.admitted:
        return None
    state.stats.refused["rate_limit"] += 1
    retry_after = retry_after_header(admission.retry_after_s)
    return ApiError(429, "This request would exceed your rate limit", retry_after=retry_after)


def _bill(
    state: SimulatorState,
    dialect: Dialect,
    ids: tuple[str, str],
    parsed: ParsedRequest,
    usage: Usage,
    plan: StreamPlan | None,
) -> None:
    """One ledger entry: `ids` is (request id, message id); `plan` the stream, if streamed."""
    corrupted = plan.corrupted_event if plan is not None else None
    entry = ledger_entry(
        request_id=ids[0],
        message_id=ids[1],
        endpoint=dialect.endpoint,
        model=parsed.prompt.model,
        prompt_text=parsed.prompt.last_user_text,
        usage=usage,
        partial=plan.partial if plan is not None else False,
        corrupted_event=corrupted,
        in_flight=state.stats.in_flight,
    )
    state.ledger.bill(entry)
    state.stats.billed += 1
    state.stats.corrupted_streams += corrupted is not None


def _error(
    state: SimulatorState, dialect: Dialect, error: ApiError, request_id: str
) -> web.Response:
    return error_response(state.limiter, dialect, error, request_id)


async def _count_tokens(request: web.Request) -> web.Response:
    """The free estimate endpoint: the input tokens a request would count, never billed."""
    state = request.app[STATE]
    state.stats.requests += 1
    request_id = state.next_id("req_sim_")
    try:
        refusal = turn_away(request, state, capped=False)
        if refusal is not None:
            raise refusal
        body = _decode(await read_body(request, MESSAGES_MAX_BYTES))
        if isinstance(body, dict):
            body = {"max_tokens": 1, **body}  # count_tokens takes no max_tokens
        parsed = MESSAGES.parse(body)
    except ApiError as error:
        state.stats.by_status[error.status] += 1
        return _error(state, MESSAGES, error, request_id)
    state.stats.by_status[200] += 1
    headers = headers_for(state.limiter, MESSAGES, request_id)
    return json_response(200, {"input_tokens": parsed.input_tokens}, headers)


async def _close_ledger(app: web.Application) -> None:
    app[STATE].ledger.close()


def serve(config: SimConfig, on_listening: Callable[[str], None] | None = None) -> None:
    """Run the simulator until SIGTERM or SIGINT; print `listening on URL` once bound (on
    stdout: scripts read it), then tell `on_listening` the URL."""
    asyncio.run(_serve_until_signalled(config, on_listening))


async def _serve_until_signalled(
    config: SimConfig, on_listening: Callable[[str], None] | None
) -> None:
    runner = web.AppRunner(build_app(config), access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, config.host, config.port)
        await site.start()
        port = runner.addresses[0][1]
        host = f"[{config.host}]" if ":" in config.host else config.host
        print(f"listening on http://{host}:{port}", flush=True)
        if on_listening is not None:
            on_listening(f"http://{host}:{port}")
        stopped = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stopped.set)
        await stopped.wait()
    finally:
        await runner.cleanup()


def main(
    argv: list[str] | None = None,
    *,
    parser: argparse.ArgumentParser | None = None,
    announce: Callable[[str, argparse.Namespace], None] | None = None,
) -> int:
    """Run the simulator from the command line; 0 after a clean stop, 2 on bad flags, 1
    when the address cannot be listened on. `parser`: flag_parser's, dressed for another
    command (`pipeline simulate`); `announce(url, args)` once listening."""
    args = (parser or flag_parser()).parse_args(argv)
    try:
        config = config_from_args(args)
    except ValueError as error:
        print(f"simulator: {error}", file=sys.stderr)
        return 2
    try:
        serve(config, None if announce is None else lambda url: announce(url, args))
    except OSError as error:  # e.g. the port is taken
        print(f"simulator: cannot listen on {config.host}:{config.port}: {error}", file=sys.stderr)
        return 1
    return 0
