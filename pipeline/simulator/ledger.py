"""What the simulator served and what it billed: the evidence tests count money with."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import IO, Any

import orjson

from pipeline.simulator.protocol import Usage


def ledger_entry(
    *,
    request_id: str,
    message_id: str,
    endpoint: str,
    model: str,
    prompt_text: str,
    usage: Usage,
    partial: bool = False,
    corrupted_event: int | None = None,
    in_flight: int = 1,
    batch_id: str | None = None,
    custom_id: str | None = None,
) -> dict[str, Any]:
    """One billed answer; prompt_sha256 is the sha256 of the last user message's text.

    `corrupted_event`: the index of the stream event sent garbled (the answer is billed in
    full all the same: the tokens were generated). `in_flight`: the requests the simulator
    was answering when this one was billed, itself included (how busy a client kept it).
    `batch_id` / `custom_id`: the Message Batch and the request in it that this answers
    (None online), so a test can find a row billed in two batches. `cache_event`: "write"
    if the request paid a cache write (even beside a read), "read" if it only read, else None.
    """
    return {
        "request_id": request_id,
        "message_id": message_id,
        "endpoint": endpoint,
        "model": model,
        "prompt_sha256": hashlib.sha256(prompt_text.encode()).hexdigest(),
        "input_tokens": usage.input_tokens,
        "output_tokens": usage.output_tokens,
        "cache_creation_input_tokens": usage.cache_creation_input_tokens,
        "cache_read_input_tokens": usage.cache_read_input_tokens,
        "cache_5m_tokens": usage.cache_5m_tokens,
        "cache_1h_tokens": usage.cache_1h_tokens,
        "cache_event": usage.cache_event,
        "service_tier": usage.service_tier,
        "partial": partial,
        "corrupted_event": corrupted_event,
        "in_flight": in_flight,
        "batch_id": batch_id,
        "custom_id": custom_id,
        "ts": time.time(),
    }


class Ledger:
    """Billed entries in billing order, mirrored line by line to a JSONL file if asked."""

    def __init__(self, path: str | None = None) -> None:
        self.entries: list[dict[str, Any]] = []
        # Append mode: a ledger file outlives restarts and resets; it is the paid record.
        self._file: IO[bytes] | None = open(path, "ab") if path else None  # noqa: SIM115

    def bill(self, entry: dict[str, Any]) -> None:
        self.entries.append(entry)
        if self._file is not None:
            self._file.write(orjson.dumps(entry) + b"\n")
            self._file.flush()  # readers (tests) look at it while the server runs

    def bill_many(self, entries: list[dict[str, Any]]) -> None:
        """Several entries, in order, with one write and one flush."""
        if not entries:
            return
        self.entries += entries
        if self._file is not None:
            self._file.write(
                b"".join(orjson.dumps(e, option=orjson.OPT_APPEND_NEWLINE) for e in entries)
            )
            self._file.flush()

    def clear(self) -> None:
        self.entries.clear()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


REFUSALS = ("concurrency", "outage", "rate_limit")


@dataclass(slots=True)
class Stats:
    """Counts of what arrived and how it was answered.

    `refused` counts the answers that turned a request away before any work, by cause: the
    concurrency cap's 429s, the outage's 503s, the token buckets' 429s (all unbilled).
    """

    requests: int = 0
    billed: int = 0
    dropped: int = 0
    corrupted_streams: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    by_status: Counter[int] = field(default_factory=Counter)
    refused: Counter[str] = field(default_factory=Counter)
    quiet: asyncio.Event = field(default_factory=asyncio.Event)  # set: nothing in flight

    def __post_init__(self) -> None:
        self.quiet.set()

    def enter(self) -> None:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        self.quiet.clear()

    def leave(self) -> None:
        self.in_flight -= 1
        if self.in_flight <= 0:
            self.quiet.set()

    def snapshot(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "billed": self.billed,
            "by_status": {str(code): n for code, n in sorted(self.by_status.items())},
            "refused": {cause: self.refused[cause] for cause in REFUSALS},
            "max_in_flight": self.max_in_flight,
            "in_flight": self.in_flight,
            "dropped": self.dropped,
            "corrupted_streams": self.corrupted_streams,
        }

    def clear(self) -> None:
        in_flight = self.in_flight  # requests still running will leave later
        self.requests = self.billed = self.dropped = self.corrupted_streams = 0
        self.by_status.clear()
        self.refused.clear()
        self.in_flight = self.max_in_flight = in_flight
