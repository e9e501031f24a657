"""One output row from one input row and how its request ended."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from pipeline.labels.extract import Extractor
from pipeline.pricing import PriceTable, costs, split_writes
from pipeline.providers.base import Answer, Usage
from pipeline.schema import COST_COLUMNS, ROW_INDEX, TOKEN_COLUMNS
from pipeline.send.client import CallResult

_NO_USAGE = dict.fromkeys(TOKEN_COLUMNS)
_NO_COST = dict.fromkeys(COST_COLUMNS, 0.0)  # never answered: nothing was paid
_UNKNOWN_COST = dict.fromkeys(COST_COLUMNS)  # answered without usage: paid, but how much?
COSTS_KEPT = 4096  # distinct (models, usage) cost columns remembered
NO_USAGE_WARNING = (
    "warning: the API's answer carried no usage: its cost is unknown; "
    "the budget counts it at its worst case"
)


class RecordBuilder:
    def __init__(
        self, carried_columns: Sequence[str], extractor: Extractor, prices: PriceTable
    ) -> None:
        self.carried = (ROW_INDEX, *carried_columns)  # the id column comes first
        self.extractor = extractor
        self.prices = prices
        self.warned_no_usage = False
        # model -> the cache TTL its requests ask for ("5m" / "1h"; None: none), set by
        # whoever marks them (cache.prefix.write_ttl): the price of cache writes an answer
        # gives without their 5m / 1h split
        self.write_ttl: Callable[[str], str | None] = _no_breakpoints
        self._costs: dict[tuple[Any, ...], Mapping[str, float] | None] = {}  # by _priced

    def _base(self, row: Mapping[str, Any]) -> dict[str, Any]:
        record = {name: row[name] for name in self.carried}
        record["finished_at"] = time.time_ns() // 1000  # microseconds: journal-friendly
        record["price_table_version"] = self.prices.version
        return record

    def unsent(self, row: Mapping[str, Any], error_type: str, message: str) -> dict[str, Any]:
        """A row that could not be rendered: an error row, never sent, costing nothing."""
        record = self._base(row)
        record.update(
            _NO_USAGE,
            **_NO_COST,
            status="error",
            error_type=error_type,
            error_message=message,
            attempts=0,
        )
        return record

    def from_call(
        self, row: Mapping[str, Any], requested_model: str, result: CallResult
    ) -> dict[str, Any]:
        record = self._base(row)
        record["http_status"] = result.http_status
        record["attempts"] = result.attempts
        record["request_id"] = result.request_id
        record["latency_ms"] = result.latency_ms
        answer = result.answer
        if answer is None:
            record.update(
                _NO_USAGE,
                **_NO_COST,
                status="error",
                error_type=result.error_type,
                error_message=result.error_message,
            )
            return record
        self._answered(record, answer, requested_model)
        return record

    def billed_error(
        self, record: dict[str, Any], requested_model: str, usage: Usage | None
    ) -> None:
        """An error row whose answer was billed though unreadable: priced by its usage
        when that could be read, else its cost is unknown (null, never a free 0.0)."""
        if usage is None:
            record.update(_UNKNOWN_COST)
            return
        usage = self._split(usage, requested_model)
        record.update(zip(TOKEN_COLUMNS, _token_counts(usage), strict=True))
        price = self.prices.lookup(requested_model)
        record.update(costs(price, usage) if price is not None else _UNKNOWN_COST)

    def _answered(self, record: dict[str, Any], answer: Answer, requested_model: str) -> None:
        usage = answer.usage
        record["status"] = "ok"
        record["response_text"] = answer.text
        record["content_json"] = answer.content_json
        record["stop_reason"] = answer.stop_reason
        record["model"] = answer.model or requested_model
        record.update(self.extractor.record(answer.text, answer.content))
        if usage is None:  # null, never 0: a report must not call it free
            record.update(_NO_USAGE, **_UNKNOWN_COST)
            self._warn_no_usage()
            return
        # the 5m / 1h columns say what was priced
        usage = self._split(usage, requested_model)
        record.update(zip(TOKEN_COLUMNS, _token_counts(usage), strict=True))
        priced = self._priced(answer.model or requested_model, requested_model, usage)
        if priced is not None:
            record.update(priced)

    def _priced(self, model: str, requested_model: str, usage: Usage) -> Mapping[str, float] | None:
        """The cost columns of `usage`, priced by the model that answered (a gateway's own
        model name falls back to the model asked for); None: no price. Answers repeat their
        models and counts: each pair is priced once, looked up by plain values."""
        key = (model, requested_model, *_token_counts(usage), usage.service_tier)
        if key in self._costs:
            return self._costs[key]
        price = self.prices.lookup(model, requested_model)
        priced = costs(price, usage) if price is not None else None
        if len(self._costs) >= COSTS_KEPT:
            self._costs.clear()
        self._costs[key] = priced
        return priced

    def _split(self, usage: Usage, requested_model: str) -> Usage:
        """`split_writes` at the TTL the request asked for, looked up only when the answer
        leaves writes out of its 5m / 1h split (most answers write nothing)."""
        if usage.cache_creation_input_tokens <= (
            usage.cache_creation_5m_tokens + usage.cache_creation_1h_tokens
        ):
            return usage  # what split_writes gives: nothing left out
        return split_writes(usage, self.write_ttl(requested_model))

    def _warn_no_usage(self) -> None:
        if not self.warned_no_usage:
            self.warned_no_usage = True
            print(NO_USAGE_WARNING, file=sys.stderr)


def _token_counts(usage: Usage) -> tuple[int, ...]:
    """The TOKEN_COLUMNS' values, in their order."""
    return (
        usage.input_tokens,
        usage.output_tokens,
        usage.cache_creation_input_tokens,
        usage.cache_read_input_tokens,
        usage.cache_creation_5m_tokens,
        usage.cache_creation_1h_tokens,
    )


def _no_breakpoints(model: str) -> str | None:
    return None
