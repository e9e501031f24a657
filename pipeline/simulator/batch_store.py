"""What the simulator keeps of its Message Batches: each batch, its requests and results,
and the tasks that process them (the routes are in `batches`).

Each result is kept as its finished JSONL line: serialised once while processing, it costs
far less memory than the nested dicts it came from, and the results download only joins
lines, a piece at a time, so 100,000 results stream without one huge body being built.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from pipeline.simulator.answers import Directives
from pipeline.simulator.batch_faults import BatchFaults, Fault
from pipeline.simulator.protocol import ParsedRequest

EXPIRES_AFTER_S = 24 * 3600.0
RESULT_TYPES = ("succeeded", "errored", "canceled", "expired")


@dataclass(slots=True)
class Item:
    custom_id: str
    parsed: ParsedRequest
    directives: Directives
    fault: Fault | None = None  # drawn at create, once the whole batch is valid


@dataclass(slots=True)
class Batch:
    id: str
    items: list[Item]  # emptied once the batch ends: only the results are needed then
    created_at: float  # UNIX time
    base_url: str
    order: list[str] = field(init=False)  # the custom ids in input order
    status: str = "in_progress"
    ended_at: float | None = None
    cancel_initiated_at: float | None = None
    results: dict[str, bytes] = field(default_factory=dict)  # custom id -> its JSONL line
    tally: Counter[str] = field(default_factory=Counter)  # results by type
    cancel: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.order = [item.custom_id for item in self.items]

    def record(self, custom_id: str, result: dict[str, Any]) -> None:
        line = {"custom_id": custom_id, "result": result}
        self.results[custom_id] = orjson.dumps(line, option=orjson.OPT_APPEND_NEWLINE)
        self.tally[result["type"]] += 1

    def counts(self) -> dict[str, int]:
        counts = {kind: self.tally[kind] for kind in RESULT_TYPES}
        return {"processing": len(self.order) - len(self.results), **counts}

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

    def __init__(self, faults: BatchFaults) -> None:
        self.by_id: dict[str, Batch] = {}
        self.tasks: set[asyncio.Task[None]] = set()  # held so they are not garbage-collected
        self.faults = faults

    def start(self, batch: Batch, work: Coroutine[Any, Any, None]) -> None:
        """Keep `batch` and run `work` (its processing) in the background."""
        self.by_id[batch.id] = batch
        task = asyncio.create_task(work)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def reset(self, faults: BatchFaults) -> None:
        """Forget every batch and stop processing them (each task is cancelled at its next
        await, before it answers another slice); `faults`' draws from now on."""
        for task in self.tasks:
            task.cancel()
        self.by_id.clear()
        self.faults = faults


def _rfc3339(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")
