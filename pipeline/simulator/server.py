"""The simulator's HTTP server: routes, the life of one request, and the command line.

The life of a request: concurrency cap -> key -> fault draw -> body -> scripted triggers or
the drawn fault -> validation -> rate limits -> latency -> answer -> bill -> send.
Faults are drawn before any work, so injected failures are never billed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import hmac
import itertools
import random
import secrets
import signal
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable

import orjson
from aiohttp import web

from pipeline.simulator.answers import NO_DIRECTIVES, Directives, generate, parse_directives
from pipeline.simulator.buckets import Clock, RateLimiter, retry_after_header
from pipeline.simulator.chat import CHAT_COMPLETIONS
from pipeline.simulator.config import SimConfig, config_from_args, flag_parser
from pipeline.simulator.ledger import Ledger, Stats, ledger_entry
from pipeline.simulator.messages import MESSAGES
from pipeline.simulator.protocol import (
    ApiError,
    Dialect,
    ParsedRequest,
    PromptCache,
    Usage,
    last_user_text,
)
from pipeline.simulator.streaming import plan_stream

MAX_BODY_BYTES = 32 * 1024 * 1024  # the real API's limit on /v1/messages
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
INJECTED_ERRORS = {
    "429": ("Number of requests has exceeded your rate limit (injected fault)", "1"),
    "500": ("Internal server error", None),
    "529": ("Overloaded", None),
}


class SimulatorState:
    """Everything one server remembers between requests."""

    def __init__(self, config: SimConfig, clock: Clock = time.monotonic) -> None:
        self.config = config
        self.limiter = RateLimiter(config.rpm, config.itpm, config.otpm, config.burst_s, clock)
        self.cache = PromptCache(clock)
        self.ledger = Ledger(config.ledger_path)
        self.stats = Stats()
        self._id_prefix = secrets.token_hex(4)  # ids stay unique across restarts
        self._id_counter = itertools.count(1)
        rates = config.fault_rates()
        cumulative = itertools.accumulate(rates.values())
        self._fault_thresholds = list(zip(rates, cumulative, strict=True))
        self.reset()

    def reset(self) -> None:
        """Back to the state of a fresh start (the ledger file is kept: it is the paid record)."""
        self.fault_rng = random.Random(self.config.seed)
        self.latency_rng = random.Random(f"latency:{self.config.seed}")
        self.attempts_by_body: Counter[bytes] = Counter()
        self.ledger.clear()
        self.stats.clear()
        self.cache.clear()
        self.limiter.reset()

    def next_id(self, prefix: str) -> str:
        return f"{prefix}{self._id_prefix}{next(self._id_counter):012x}"

    def draw_fault(self) -> str | None:
        """The injected fault for the next request in arrival order, if any."""
        if not self._fault_thresholds[-1][1]:
            return None
        draw = self.fault_rng.random()
        return next((kind for kind, limit in self._fault_thresholds if draw < limit), None)

    def latency_s(self) -> float:
        config = self.config
        if not config.latency_ms and not config.latency_jitter_ms:
            return 0.0
        jitter = self.latency_rng.uniform(-config.latency_jitter_ms, config.latency_jitter_ms)
        return max(0.0, config.latency_ms + jitter) / 1000.0


STATE = web.AppKey("simulator_state", SimulatorState)


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
    app = web.Application(client_max_size=MAX_BODY_BYTES)
    app[STATE] = SimulatorState(config, clock)
    app.router.add_post("/v1/messages", _api_handler(MESSAGES))
    app.router.add_post("/v1/messages/count_tokens", _count_tokens)
    app.router.add_post("/v1/chat/completions", _api_handler(CHAT_COMPLETIONS))
    app.router.add_get("/_sim/ledger", _get_ledger)
    app.router.add_get("/_sim/stats", _get_stats)
    app.router.add_post("/_sim/reset", _post_reset)
    app.on_cleanup.append(_close_ledger)
    return app


def _api_handler(dialect: Dialect) -> Handler:
    async def handle(request: web.Request) -> web.StreamResponse:
        state = request.app[STATE]
        state.stats.requests += 1
        request_id = state.next_id("req_sim_")
        limit = state.config.max_concurrency
        if limit is not None and state.stats.in_flight >= limit:
            message = f"Too many concurrent requests (limit {limit})"
            code = "rate_limit_exceeded"
            error = ApiError(429, message, code=code, gateway=True, retry_after="1")
            response: web.StreamResponse | None = _error_response(state, dialect, error, request_id)
        else:
            state.stats.enter()
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
        _check_key(request, state.config.require_key)
        fault = state.draw_fault()
        raw = await _read_body(request)
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
        return _error_response(state, dialect, error, request_id)
    return await _serve(request, state, dialect, request_id, parsed, directives)


def _check_key(request: web.Request, required: str | None) -> None:
    if required is None:
        return
    presented = request.headers.get("x-api-key")
    if presented is None:
        authorization = request.headers.get("authorization", "")
        presented = authorization[7:] if authorization.lower().startswith("bearer ") else ""
    if not hmac.compare_digest(presented.encode(), required.encode()):
        raise ApiError(401, "invalid x-api-key")


async def _read_body(request: web.Request) -> bytes:
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge as error:
        limit = f"{MAX_BODY_BYTES} bytes"
        raise ApiError(413, f"Request exceeds the maximum allowed size of {limit}") from error


def _decode(raw: bytes) -> object:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as error:
        raise ApiError(400, f"The request body is not valid JSON: {error}") from error


def _raise_scripted_error(state: SimulatorState, directives: Directives, raw: bytes) -> None:
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
        body_hash = hashlib.sha256(raw).digest()
        state.attempts_by_body[body_hash] += 1
        attempt = state.attempts_by_body[body_hash]
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
    key = hashlib.sha256(orjson.dumps(parsed.prompt.messages)).digest()
    state.attempts_by_body[key] += 1
    if state.attempts_by_body[key] <= directives.stream_error_first:
        return dataclasses.replace(directives, stream_error_after=2)
    return directives


async def _serve(
    request: web.Request,
    state: SimulatorState,
    dialect: Dialect,
    request_id: str,
    parsed: ParsedRequest,
    directives: Directives,
) -> web.StreamResponse:
    """Rate limits, latency, the answer and the bill for a valid request."""
    usage = state.cache.plan(parsed)
    max_tokens = parsed.prompt.max_tokens
    admission = state.limiter.try_acquire(usage.rate_limited_input, max_tokens)
    if not admission.admitted:
        retry_after = retry_after_header(admission.retry_after_s)
        error = ApiError(429, "This request would exceed your rate limit", retry_after=retry_after)
        return _error_response(state, dialect, error, request_id)
    state.cache.commit(parsed.cache_prefix)
    reservation = OutputReservation(state.limiter, max_tokens)
    try:
        delay = state.latency_s()
        if delay:
            await asyncio.sleep(delay)
        answer = generate(parsed.prompt, state.config.seed, directives)
        message_id = state.next_id(dialect.id_prefix)
        if parsed.stream:
            directives = _stream_directives(state, directives, parsed)
            plan = plan_stream(message_id, parsed.prompt.model, answer, usage, directives)
            reservation.settle(plan.output_tokens)
            usage = usage.with_output(plan.output_tokens)
            _bill(state, dialect, request_id, message_id, parsed, usage, plan.partial)
            return await _send_stream(request, _headers(state, request_id), plan.frames)
        reservation.settle(answer.output_tokens)
        usage = usage.with_output(answer.output_tokens)
        body = dialect.success_body(message_id, parsed.prompt, answer, usage, directives)
        _bill(state, dialect, request_id, message_id, parsed, usage, False)
        return _json_response(200, body, _headers(state, request_id))
    finally:
        reservation.settle(0)  # nothing was delivered if we got here early


def _bill(
    state: SimulatorState,
    dialect: Dialect,
    request_id: str,
    message_id: str,
    parsed: ParsedRequest,
    usage: Usage,
    partial: bool,
) -> None:
    entry = ledger_entry(
        request_id=request_id,
        message_id=message_id,
        endpoint=dialect.endpoint,
        model=parsed.prompt.model,
        prompt_text=parsed.prompt.last_user_text,
        usage=usage,
        partial=partial,
    )
    state.ledger.bill(entry)
    state.stats.billed += 1


async def _send_stream(
    request: web.Request, headers: dict[str, str], frames: tuple[bytes, ...]
) -> web.StreamResponse:
    response = web.StreamResponse(status=200, headers=headers)
    response.content_type = "text/event-stream"
    response.headers["cache-control"] = "no-cache"
    await response.prepare(request)
    try:
        for frame in frames:
            await response.write(frame)
        await response.write_eof()
    except ConnectionError:
        pass  # the client left mid-stream; what it was sent is already billed
    return response


def _headers(state: SimulatorState, request_id: str) -> dict[str, str]:
    headers = state.limiter.headers() if state.limiter.buckets else {}
    headers["request-id"] = request_id
    return headers


def _error_response(
    state: SimulatorState, dialect: Dialect, error: ApiError, request_id: str
) -> web.Response:
    headers = _headers(state, request_id)
    if error.retry_after is not None:
        headers["retry-after"] = error.retry_after
    return _json_response(error.status, dialect.error_body(error, request_id), headers)


def _json_response(status: int, body: object, headers: dict[str, str]) -> web.Response:
    return web.Response(
        body=orjson.dumps(body), status=status, headers=headers, content_type="application/json"
    )


async def _count_tokens(request: web.Request) -> web.Response:
    """The free estimate endpoint: the input tokens a request would count, never billed."""
    state = request.app[STATE]
    state.stats.requests += 1
    request_id = state.next_id("req_sim_")
    try:
        _check_key(request, state.config.require_key)
        body = _decode(await request.read())
        if isinstance(body, dict):
            body = {"max_tokens": 1, **body}  # count_tokens takes no max_tokens
        parsed = MESSAGES.parse(body)
    except ApiError as error:
        state.stats.by_status[error.status] += 1
        return _error_response(state, MESSAGES, error, request_id)
    state.stats.by_status[200] += 1
    return _json_response(200, {"input_tokens": parsed.input_tokens}, _headers(state, request_id))


async def _get_ledger(request: web.Request) -> web.Response:
    return _json_response(200, request.app[STATE].ledger.entries, {})


async def _get_stats(request: web.Request) -> web.Response:
    return _json_response(200, request.app[STATE].stats.snapshot(), {})


async def _post_reset(request: web.Request) -> web.Response:
    request.app[STATE].reset()
    return _json_response(200, {"ok": True}, {})


async def _close_ledger(app: web.Application) -> None:
    app[STATE].ledger.close()


def serve(config: SimConfig) -> None:
    """Run the simulator until SIGTERM or SIGINT; print `listening on URL` once bound."""
    asyncio.run(_serve_until_signalled(config))


async def _serve_until_signalled(config: SimConfig) -> None:
    runner = web.AppRunner(build_app(config), access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, config.host, config.port)
        await site.start()
        port = runner.addresses[0][1]
        host = f"[{config.host}]" if ":" in config.host else config.host
        print(f"listening on http://{host}:{port}", flush=True)
        stopped = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stopped.set)
        await stopped.wait()
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    """Run the simulator from the command line; 0 after a clean stop, 2 on bad flags."""
    args = flag_parser().parse_args(argv)
    try:
        config = config_from_args(args)
    except ValueError as error:
        print(f"simulator: {error}", file=sys.stderr)
        return 2
    try:
        serve(config)
    except OSError as error:  # e.g. the port is taken
        print(f"simulator: cannot listen on {config.host}:{config.port}: {error}", file=sys.stderr)
        return 1
    return 0
