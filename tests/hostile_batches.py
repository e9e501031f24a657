"""A Message Batches API that misbehaves the ways real servers and networks do, in memory,
for tests: an httpx handler (`httpx.MockTransport(server)`) with a ledger of what it
billed.

Every batch ends at its first poll. Each request of a created batch is answered (and
billed: `billed[row]`) unless a fault says otherwise. Faults, each off by default:
    results_first   a line put first in every results file: "unknown" (another batch's
                    custom_id) or "too_large" (a huge line, "result" before "custom_id")
    drop            lines left out of every results file (the first N requests')
    drop_once       ...of the first download of each batch only
    cut             the results body cut short mid-line, without Content-Length
    gzip_cut        the results gzip stream truncated
    undecodable     the first line holds a lone surrogate escape (\\ud800) orjson refuses
    no_usage        succeeded answers without usage
    malformed       succeeded answers whose content is not a list (usage intact)
    gone            batch numbers (1-based) whose GET and results answer 404
    endless_list    the list says has_more for ever, with the same last_id
    creates         how each create is answered, in order: "ok", "500-made", "500",
                    "408-made", "409-made", "no-id" (made, answered without an id),
                    "no-id-unlisted" (the same, and never listed)
    canceled        batch numbers whose requests all end canceled (never billed)
    cancel_all      every batch's requests end canceled
    stuck           batch numbers that stay in progress, past their expiry
    break_once      the first download of each batch breaks off (a transport error) halfway
"""

from __future__ import annotations

import gzip
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson

PATH = "/v1/messages/batches"
USAGE = {"input_tokens": 20, "output_tokens": 2}


def iso(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def row_of(custom_id: str) -> int:
    return int(custom_id.split("-")[0][1:])  # the pipeline's r<row>-<nonce>


@dataclass
class Batch:
    id: str
    number: int
    custom_ids: list[str]
    created_at: float
    downloads: int = 0


@dataclass
class HostileBatches:
    results_first: str | None = None
    drop: int = 0
    drop_once: int = 0
    cut: bool = False
    gzip_cut: bool = False
    undecodable: bool = False
    no_usage: bool = False
    malformed: bool = False
    gone: set[int] = field(default_factory=set)
    endless_list: bool = False
    creates: list[str] = field(default_factory=list)
    canceled: set[int] = field(default_factory=set)
    cancel_all: bool = False
    unlisted: set[int] = field(default_factory=set)  # batch numbers the list leaves out
    stuck: set[int] = field(default_factory=set)
    break_once: bool = False
    # the ledger
    batches: list[Batch] = field(default_factory=list)
    billed: Counter[int] = field(default_factory=Counter)  # row -> answers billed
    sent: Counter[int] = field(default_factory=Counter)  # row -> requests in made batches
    billed_bytes: list[int] = field(default_factory=list)  # each billed request's params size
    calls: Counter[str] = field(default_factory=Counter)
    on_create: Any = None  # called after each create is handled (e.g. to send a signal)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        path, method = request.url.path, request.method
        if method == "POST" and path == PATH:
            self.calls["create"] += 1
            response = self._create(request)
            if self.on_create is not None:
                self.on_create(self)
            return response
        if method == "GET" and path == PATH:
            self.calls["list"] += 1
            return self._list(request)
        parts = path[len(PATH) + 1 :].split("/")
        batch = next((b for b in self.batches if b.id == parts[0]), None)
        if batch is None or batch.number in self.gone:
            return error(404, "not_found_error", f"no batch {parts[0]}")
        if len(parts) == 1:
            self.calls["get"] += 1
            return httpx.Response(200, json=self._object(batch))
        if parts[1] == "results":
            self.calls["results"] += 1
            return self._results(batch)
        if parts[1] == "cancel":
            self.calls["cancel"] += 1
            self.canceled.add(batch.number)
            return httpx.Response(200, json=self._object(batch))
        return error(404, "not_found_error", "no such route")

    # -- creating ---------------------------------------------------------------------

    def _create(self, request: httpx.Request) -> httpx.Response:
        how = self.creates.pop(0) if self.creates else "ok"
        if how == "500":
            return error(500, "api_error", "Internal server error")
        requests = orjson.loads(request.content)["requests"]
        ids = [r["custom_id"] for r in requests]
        number = len(self.batches) + 1
        if self.cancel_all:
            self.canceled.add(number)
        batch = Batch(f"msgbatch_{number:04d}", number, ids, time.time())
        self.batches.append(batch)
        for item in requests:
            self.sent[row_of(item["custom_id"])] += 1
            if number not in self.canceled:  # processed at once: billed
                self.billed[row_of(item["custom_id"])] += 1
                self.billed_bytes.append(len(orjson.dumps(item["params"])))
        if how == "ok":
            return httpx.Response(200, json=self._object(batch, fresh=True))
        if how.startswith("no-id"):
            if how == "no-id-unlisted":
                self.unlisted.add(number)
            body = self._object(batch, fresh=True)
            del body["id"]
            return httpx.Response(200, json=body)
        status = int(how.split("-")[0])
        return error(status, "api_error" if status >= 500 else "conflict_error", "try again")

    def _object(self, batch: Batch, *, fresh: bool = False) -> dict[str, Any]:
        total = len(batch.custom_ids)
        canceled = batch.number in self.canceled
        fresh = fresh or batch.number in self.stuck
        counts = {
            "processing": total if fresh else 0,
            "succeeded": 0 if fresh or canceled else total,
            "errored": 0,
            "canceled": total if canceled and not fresh else 0,
            "expired": 0,
        }
        return {
            "id": batch.id,
            "type": "message_batch",
            "processing_status": "in_progress" if fresh else "ended",
            "request_counts": counts,
            "created_at": iso(batch.created_at),
            "expires_at": iso(batch.created_at + (-3600 if batch.number in self.stuck else 86400)),
            "ended_at": None if fresh else iso(batch.created_at + 1),
            "results_url": None if fresh else f"https://elsewhere.test{PATH}/{batch.id}/results",
        }

    def _list(self, request: httpx.Request) -> httpx.Response:
        data = [self._object(b) for b in reversed(self.batches) if b.number not in self.unlisted]
        if self.endless_list:
            return httpx.Response(200, json={"data": data, "has_more": True, "last_id": "same"})
        return httpx.Response(200, json={"data": data, "has_more": False, "last_id": None})

    # -- results ----------------------------------------------------------------------

    def _results(self, batch: Batch) -> httpx.Response:
        batch.downloads += 1
        lines = [self._line(batch, custom_id) for custom_id in batch.custom_ids]
        dropped = self.drop + (self.drop_once if batch.downloads == 1 else 0)
        lines = lines[dropped:]
        if self.undecodable and lines:
            lines[0] = lines[0].replace(b'"text":"', b'"text":"\\ud800', 1)
        if self.results_first == "unknown":
            lines.insert(0, orjson.dumps({"custom_id": "r0-ffffffffffff", "result": ANSWER}))
        elif self.results_first == "too_large":
            huge = b'{"result":{"type":"succeeded","message":"' + b"x" * 3_000_000 + b'"},'
            lines.insert(0, huge + b'"custom_id":"' + batch.custom_ids[0].encode() + b'"}')
        body = b"\n".join(lines) + b"\n"
        if self.gzip_cut:
            packed = gzip.compress(body)
            return httpx.Response(
                200, headers={"content-encoding": "gzip"}, content=packed[: len(packed) * 2 // 3]
            )
        if self.cut:
            return httpx.Response(200, stream=Chunks(body[: len(body) * 2 // 3]))
        if self.break_once and batch.downloads == 1:
            return httpx.Response(200, stream=Chunks(body[: len(body) // 2], broken=True))
        return httpx.Response(200, stream=Chunks(body))

    def _line(self, batch: Batch, custom_id: str) -> bytes:
        if batch.number in self.canceled:
            return orjson.dumps({"custom_id": custom_id, "result": {"type": "canceled"}})
        message: dict[str, Any] = {
            "id": f"msg_{custom_id}",
            "type": "message",
            "role": "assistant",
            "model": "claude-haiku-4-5-20251001",
            "content": [{"type": "text", "text": "positive"}],
            "stop_reason": "end_turn",
            "usage": dict(USAGE),
        }
        if self.no_usage:
            del message["usage"]
        if self.malformed:
            message["content"] = "positive"
        return orjson.dumps(
            {"custom_id": custom_id, "result": {"type": "succeeded", "message": message}}
        )


ANSWER = {"type": "succeeded", "message": {"content": [], "usage": USAGE}}


class Chunks(httpx.AsyncByteStream):
    """A body in 64 kB chunks, with no Content-Length: it ends where it ends."""

    def __init__(self, body: bytes, *, broken: bool = False) -> None:
        self.body, self.broken = body, broken

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for start in range(0, len(self.body), 65536):
            yield self.body[start : start + 65536]
        if self.broken:
            raise httpx.RemoteProtocolError("peer closed connection without sending everything")


def error(status: int, kind: str, message: str) -> httpx.Response:
    body = {"type": "error", "error": {"type": kind, "message": message}}
    return httpx.Response(status, json=body)
