"""The Message Batches API: create, get, list, cancel and results (../shared/API-NOTES.md).

A batch is validated whole at create (one bad request rejects it, as the real API does),
then answered in the background over `batch_latency_s`, a slice at a time so that a cancel
finds some requests not yet processed. Each request gets the online endpoint's answer with
`service_tier: "batch"` usage and one ledger entry (endpoint "batch"); results come back in
a shuffled order because the real API promises no order and clients must join by custom_id.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
import re
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from aiohttp import web

from pipeline.simulator.answers import Directives, generate, parse_directives
from pipeline.simulator.gateway import turn_away
from pipeline.simulator.ledger import ledger_entry
from pipeline.simulator.messages import MESSAGES
from pipeline.simulator.protocol import ApiError, ParsedRequest, error_type_for, last_user_text
from pipeline.simulator.replies import error_response, json_response
from pipeline.simulator.state import STATE, SimulatorState

CUSTOM_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
MAX_REQUESTS = 100_000
EXPIRES_AFTER_S = 24 * 3600.0
SLICES = 10  # processing steps over the latency: a cancel mid-way leaves some unprocessed
DEFAULT_LIMIT, MAX_LIMIT = 20, 1000


@dataclass(slots=True)
class Item:
    custom_id: str
    parsed: ParsedRequest
    directives: Directives


@dataclass(slots=True)
class Batch:
    id: str
    items: list[Item]
    created_at: float  # UNIX time
    base_url: str
    status: str = "in_progress"
    ended_at: float | None = None
    cancel_initiated_at: float | None = None
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    cancel: asyncio.Event = field(default_factory=asyncio.Event)

    def counts(self) -> dict[str, int]:
        counts = dict.fromkeys(("succeeded", "errored", "canceled", "expired"), 0)
        for result in self.results.values():
            counts[result["type"]] += 1
        return {"processing": len(self.items) - len(self.results), **counts}

    def public(self) -> dict[str, Any]:
        ended = self.status == "ended"
        return {
            "id": self.id,
            "type": "message_batch",
            "processing_status": self.status,
            "request_counts": self.counts(),
            "created_at": _rfc3339(self.created_at),
            "expires_at": _rfc3339(self.created_at + EXPIRES_AFTER_S),
            "ended_at": _rfc3339(self.ended_at),
            "cancel_initiated_at": _rfc3339(self.cancel_initiated_at),
            "archived_at": None,
            "results_url": f"{self.base_url}/v1/messages/batches/{self.id}/results"
            if ended
            else None,
        }


class Batches:
    """Every batch of one server, in creation order, and the tasks that process them."""

    def __init__(self) -> None:
        self.by_id: dict[str, Batch] = {}
        self.tasks: set[asyncio.Task[None]] = set()  # held so they are not garbage-collected


BATCHES = web.AppKey("simulator_batches", Batches)


def add_batch_routes(app: web.Application) -> None:
    app[BATCHES] = Batches()
    app.router.add_post("/v1/messages/batches", _create)
    app.router.add_get("/v1/messages/batches", _list)
    app.router.add_get("/v1/messages/batches/{id}", _get)
    app.router.add_post("/v1/messages/batches/{id}/cancel", _cancel)
    app.router.add_get("/v1/messages/batches/{id}/results", _results)
    app.on_cleanup.append(_stop_tasks)


def _rfc3339(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


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
    try:
        _enter(request)
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError as error:
            raise ApiError(400, f"The request body is not valid JSON: {error}") from error
        items = _validate(body)
    except ApiError as error:
        return _fail(request, error)
    state = request.app[STATE]
    base = f"{request.scheme}://{request.host}"
    batch = Batch(state.next_id("msgbatch_"), items, time.time(), base)
    batches = request.app[BATCHES]
    batches.by_id[batch.id] = batch
    task = asyncio.create_task(_process(state, batch))
    batches.tasks.add(task)
    task.add_done_callback(batches.tasks.discard)
    return _reply(request, 200, batch.public())


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
        for item in batch.items[start : start + size]:
            batch.results[item.custom_id] = _answer(state, batch, item)
    for item in batch.items:  # whatever a cancel left unprocessed
        batch.results.setdefault(item.custom_id, {"type": "canceled"})
    batch.status = "ended"
    batch.ended_at = time.time()


def _answer(state: SimulatorState, batch: Batch, item: Item) -> dict[str, Any]:
    """What the online endpoint would answer, as a result; `[[sim:status=N]]` -> errored."""
    status = item.directives.status
    if status is not None and status >= 400:
        message = "Overloaded" if status == 529 else f"Scripted {status} from the simulator"
        error = {"type": error_type_for(status), "message": message}
        return {"type": "errored", "error": {"type": "error", "error": error}}
    parsed = item.parsed
    usage = state.cache.plan(parsed)  # caching works best effort inside a batch
    state.cache.commit(parsed.cache_prefix)
    directives = item.directives
    answer = generate(parsed.prompt, state.config.seed, directives)
    usage = usage.with_output(answer.output_tokens)
    message_id = state.next_id(MESSAGES.id_prefix)
    entry = ledger_entry(
        request_id=f"{batch.id}:{item.custom_id}",  # a batch request has no request id
        message_id=message_id,
        endpoint="batch",
        model=parsed.prompt.model,
        prompt_text=parsed.prompt.last_user_text,
        usage=usage,
    )
    state.ledger.bill(entry)
    state.stats.billed += 1
    body = MESSAGES.success_body(message_id, parsed.prompt, answer, usage, directives)
    return {"type": "succeeded", "message": body}


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
    order = [item.custom_id for item in batch.items]
    random.Random(f"results:{state.config.seed}:{batch.id}").shuffle(order)
    if len(order) > 1 and order == [item.custom_id for item in batch.items]:
        order = order[1:] + order[:1]  # never the input order: that is the point
    lines = (orjson.dumps({"custom_id": cid, "result": batch.results[cid]}) for cid in order)
    state.stats.by_status[200] += 1
    return web.Response(
        body=b"\n".join(lines) + b"\n",
        headers={"request-id": state.next_id("req_sim_")},
        content_type="application/x-jsonl",
    )


async def _stop_tasks(app: web.Application) -> None:
    for task in list(app[BATCHES].tasks):
        task.cancel()
