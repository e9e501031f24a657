"""The Message Batches API: create, get, list, cancel and results (../shared/API-NOTES.md).

A batch is validated whole at create (one bad request rejects it, as the real API does),
then answered in the background over `batch_latency_s`, a slice at a time so that a cancel
finds some requests not yet processed. Each request gets the online endpoint's answer with
`service_tier: "batch"` usage and one ledger entry (endpoint "batch", with its batch_id and
custom_id); results come back in a shuffled order because the real API promises no order
and clients must join by custom_id. Seeded faults (`batch_faults`) end some requests errored
or expired (unbilled) and lose some creates' answers; a create's body may reach
`batch_max_bytes` (256 MB), not the 32 MB of /v1/messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
import re
import time
from typing import Any

import orjson
from aiohttp import web

from pipeline.simulator.answers import parse_directives
from pipeline.simulator.batch_faults import EXPIRED, OVERLOADED, BatchFaults
from pipeline.simulator.batch_store import Batch, Batches, Item
from pipeline.simulator.bodies import read_body
from pipeline.simulator.config import SimConfig
from pipeline.simulator.gateway import turn_away
from pipeline.simulator.ledger import ledger_entry
from pipeline.simulator.messages import MESSAGES
from pipeline.simulator.protocol import ApiError, error_type_for, last_user_text
from pipeline.simulator.replies import error_response, json_response
from pipeline.simulator.state import STATE, SimulatorState

CUSTOM_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
MAX_REQUESTS = 100_000
SLICES = 10  # processing steps over the latency: a cancel mid-way leaves some unprocessed
DEFAULT_LIMIT, MAX_LIMIT = 20, 1000
RESULT_PIECE_LINES = 2000  # lines per write of the results download (about 1 MB)

BATCHES = web.AppKey("simulator_batches", Batches)


def add_batch_routes(app: web.Application) -> None:
    app[BATCHES] = Batches(BatchFaults(app[STATE].config))
    app.router.add_post("/v1/messages/batches", _create)
    app.router.add_get("/v1/messages/batches", _list)
    app.router.add_get("/v1/messages/batches/{id}", _get)
    app.router.add_post("/v1/messages/batches/{id}/cancel", _cancel)
    app.router.add_get("/v1/messages/batches/{id}/results", _results)
    app.on_cleanup.append(_stop_tasks)


def _reply(request: web.Request, status: int, body: object) -> web.Response:
    state = request.app[STATE]
    state.stats.by_status[status] += 1
    return json_response(status, body, {"request-id": state.next_id("req_sim_")})


def _fail(request: web.Request, error: ApiError) -> web.Response:
    state = request.app[STATE]
    state.stats.by_status[error.status] += 1
    return error_response(state.limiter, MESSAGES, error, state.next_id("req_sim_"))


def _enter(request: web.Request) -> None:
    """Count the request and let the front door (outage, key) turn it away; no cap applies:
    batch calls are cheap bookkeeping, not generation."""
    state = request.app[STATE]
    state.stats.requests += 1
    refusal = turn_away(request, state, capped=False)
    if refusal is not None:
        raise refusal


def _batch(request: web.Request) -> Batch:
    batch_id = request.match_info["id"]
    batch = request.app[BATCHES].by_id.get(batch_id)
    if batch is None:
        raise ApiError(404, f"batch {batch_id} not found")
    return batch


async def _create(request: web.Request) -> web.Response:
    state, batches = request.app[STATE], request.app[BATCHES]
    try:
        _enter(request)
        items = await _read_items(request, state.config.batch_max_bytes)
    except ApiError as error:
        return _fail(request, error)
    for item, fault in zip(items, batches.faults.outcomes(len(items)), strict=True):
        item.fault = fault
    base = f"{request.scheme}://{request.host}"
    batch = Batch(state.next_id("msgbatch_"), items, time.time(), base)
    batches.start(batch, _process(state, batch))
    if batches.faults.lose_create():
        return _lose_answer(request)
    return _reply(request, 200, batch.public())


async def _read_items(request: web.Request, limit: int) -> list[Item]:
    """The validated requests of a create body (its own function, so that the raw body, up
    to 256 MB, is freed as soon as it is parsed)."""
    raw = await read_body(request, limit)
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as error:
        raise ApiError(400, f"The request body is not valid JSON: {error}") from error
    return _validate(body)


def _lose_answer(request: web.Request) -> web.Response:
    """The batch exists, but its create answer never arrives: the connection is closed with
    nothing sent, as a dropped connection after the server acted (no idempotency key: the
    client can only find the batch again by listing)."""
    request.app[STATE].stats.dropped += 1
    if request.transport is not None:
        request.transport.close()
    return web.Response()  # never sent: the connection is already closed


def _validate(body: object) -> list[Item]:
    """Every request checked before any is accepted: a bad one rejects the whole batch (400)."""
    requests = body.get("requests") if isinstance(body, dict) else None
    if not isinstance(requests, list) or not requests:
        raise ApiError(400, "requests: Input should be a non-empty list")
    if len(requests) > MAX_REQUESTS:
        raise ApiError(400, f"requests: a batch holds at most {MAX_REQUESTS} requests")
    items: list[Item] = []
    seen: set[str] = set()
    for index, entry in enumerate(requests):
        custom_id = entry.get("custom_id") if isinstance(entry, dict) else None
        if not isinstance(custom_id, str) or not CUSTOM_ID.match(custom_id):
            message = f"requests.{index}.custom_id: should match ^[a-zA-Z0-9_-]{{1,64}}$"
            raise ApiError(400, message)
        if custom_id in seen:
            raise ApiError(400, f"requests.{index}.custom_id: duplicate custom_id {custom_id!r}")
        seen.add(custom_id)
        params = entry.get("params") if isinstance(entry, dict) else None
        try:
            parsed = MESSAGES.parse(params)
        except ApiError as error:  # the online 404 for a model is a bad batch request here
            raise ApiError(400, f"requests.{index}.params.{error.message}") from error
        if parsed.stream:
            raise ApiError(400, f"requests.{index}.params.stream: not supported in batches")
        parsed = dataclasses.replace(parsed, service_tier="batch")
        items.append(Item(custom_id, parsed, parse_directives(last_user_text(params))))
    return items


async def _process(state: SimulatorState, batch: Batch) -> None:
    """Answer the batch a slice at a time over the latency; a cancel ends it at once."""
    slices = min(SLICES, len(batch.items))
    step = state.config.batch_latency_s / slices
    size = -(-len(batch.items) // slices)  # ceiling division
    for start in range(0, len(batch.items), size):
        if not batch.cancel.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(batch.cancel.wait(), step)
        if batch.cancel.is_set():
            break
        bills: list[dict[str, Any]] = []
        for item in batch.items[start : start + size]:
            result, bill = _answer(state, batch, item)
            batch.record(item.custom_id, result)
            if bill is not None:
                bills.append(bill)
        # One write for the slice's entries: a flush per entry is most of a 100,000-request
        # batch's time when the ledger goes to a file.
        state.ledger.bill_many(bills)
        state.stats.billed += len(bills)
    for item in batch.items:  # whatever a cancel left unprocessed
        if item.custom_id not in batch.results:
            batch.record(item.custom_id, {"type": "canceled"})
    batch.items = []
    batch.status = "ended"
    batch.ended_at = time.time()


Json = dict[str, Any]  # a result, or a ledger entry


def _answer(state: SimulatorState, batch: Batch, item: Item) -> tuple[Json, Json | None]:
    """What the online endpoint would answer, as a result, and its ledger entry (only a
    succeeded request is billed). `[[sim:status=N]]` -> errored with that status's error
    type, before (and instead of) a drawn fault."""
    status = item.directives.status
    if status is not None and status >= 400:
        message = "Overloaded" if status == 529 else f"Scripted {status} from the simulator"
        error = {"type": error_type_for(status), "message": message}
        return {"type": "errored", "error": {"type": "error", "error": error}}, None
    if item.fault is not None:
        return (OVERLOADED if item.fault == "errored" else EXPIRED), None
    parsed = item.parsed
    # Best effort inside a batch, as the API: requests processed later read what this wrote.
    usage = state.cache.serve_now(parsed)
    directives = item.directives
    answer = state.answer(parsed.prompt, directives)
    usage = usage.with_output(answer.output_tokens)
    message_id = state.next_id(MESSAGES.id_prefix)
    entry = ledger_entry(
        request_id=f"{batch.id}:{item.custom_id}",  # a batch request has no request id
        message_id=message_id,
        endpoint="batch",
        model=parsed.prompt.model,
        prompt_text=parsed.prompt.last_user_text,
        usage=usage,
        batch_id=batch.id,
        custom_id=item.custom_id,
    )
    body = MESSAGES.success_body(message_id, parsed.prompt, answer, usage, directives)
    return {"type": "succeeded", "message": body}, entry


async def _get(request: web.Request) -> web.Response:
    try:
        _enter(request)
        return _reply(request, 200, _batch(request).public())
    except ApiError as error:
        return _fail(request, error)


async def _cancel(request: web.Request) -> web.Response:
    """In progress -> canceling; the processing task then cancels the rest and ends it."""
    try:
        _enter(request)
        batch = _batch(request)
    except ApiError as error:
        return _fail(request, error)
    if batch.status == "in_progress":
        batch.status = "canceling"
        batch.cancel_initiated_at = time.time()
        batch.cancel.set()
    return _reply(request, 200, batch.public())


async def _list(request: web.Request) -> web.Response:
    """Newest first; `after_id` pages on to older batches, `before_id` back to newer ones."""
    try:
        _enter(request)
        limit = _limit(request.query.get("limit"))
        newest_first = list(reversed(request.app[BATCHES].by_id.values()))
        ids = [batch.id for batch in newest_first]
        after, before = request.query.get("after_id"), request.query.get("before_id")
        for name, cursor in (("after_id", after), ("before_id", before)):
            if cursor is not None and cursor not in ids:
                raise ApiError(400, f"{name}: unknown batch {cursor}")
    except ApiError as error:
        return _fail(request, error)
    if before is not None:
        end = ids.index(before)
        page = newest_first[max(0, end - limit) : end]
        has_more = end - limit > 0
    else:
        start = ids.index(after) + 1 if after is not None else 0
        page = newest_first[start : start + limit]
        has_more = start + limit < len(ids)
    body = {
        "data": [batch.public() for batch in page],
        "has_more": has_more,
        "first_id": page[0].id if page else None,
        "last_id": page[-1].id if page else None,
    }
    return _reply(request, 200, body)


def _limit(value: str | None) -> int:
    if value is None:
        return DEFAULT_LIMIT
    try:
        limit = int(value)
    except ValueError as error:
        raise ApiError(400, "limit: Input should be a valid integer") from error
    if not 1 <= limit <= MAX_LIMIT:
        raise ApiError(400, f"limit: Input should be between 1 and {MAX_LIMIT}")
    return limit


async def _results(request: web.Request) -> web.StreamResponse:
    """JSONL, one line per request, shuffled (seeded per batch): clients join by custom_id."""
    try:
        _enter(request)
        batch = _batch(request)
        if batch.status != "ended":
            raise ApiError(400, f"batch {batch.id} has not ended yet: results are not ready")
    except ApiError as error:
        return _fail(request, error)
    state = request.app[STATE]
    order = list(batch.order)
    random.Random(f"results:{state.config.seed}:{batch.id}").shuffle(order)
    if len(order) > 1 and order == batch.order:
        order = order[1:] + order[:1]  # never the input order: that is the point
    state.stats.by_status[200] += 1
    response = web.StreamResponse(headers={"request-id": state.next_id("req_sim_")})
    response.content_type = "application/x-jsonl"
    await response.prepare(request)  # chunked: the lines go out a piece at a time
    try:
        for start in range(0, len(order), RESULT_PIECE_LINES):
            piece = order[start : start + RESULT_PIECE_LINES]
            await response.write(b"".join(batch.results[cid] for cid in piece))
        await response.write_eof()
    except ConnectionError:
        pass  # the client left mid-download; it can download again
    return response


def reset_batches(app: web.Application, config: SimConfig) -> None:
    """For /_sim/reset: no batch left, none still processing, fault draws from the start
    (`config`'s: the server's settings from now on)."""
    app[BATCHES].reset(BatchFaults(config))


async def _stop_tasks(app: web.Application) -> None:
    for task in list(app[BATCHES].tasks):
        task.cancel()
