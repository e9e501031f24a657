"""One row, from its cells to its output record: render, mark the cache breakpoint, keep
the budget, send, check the API is not refusing everything, price and label.

Shared by a local run's Runner and by Ray's dataset transform (ray/dataset.py), so a row is
sent the same way whichever runs it. `stop` hears of what should end the run (the budget,
an API refusing every request or never answering); the caller decides what that means.
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from functools import partial
from typing import Any

import orjson

from pipeline.cache.prefix import CacheMarker, write_ttl
from pipeline.cache.warmup import WarmGate
from pipeline.errors import ApiRejectsEverything, ApiUnavailable, BudgetReached, JobStopped
from pipeline.input.render import RequestRenderer
from pipeline.job.model import Job, Limits
from pipeline.job.template import Unsendable
from pipeline.pricing import Price, PriceTable
from pipeline.providers.base import Provider
from pipeline.providers.registry import prompt_cache_formats, provider_for
from pipeline.run.outcome import RecordBuilder
from pipeline.send.budget import Stake, nano_usd, path_worst_usd, unpriced
from pipeline.send.client import ApiClient, CallResult, NotSent
from pipeline.send.limits import Limiter
from pipeline.send.transport import AiohttpTransport, Transport
from pipeline.store.unrecorded import Unrecorded

FAIL_FAST_ANSWERS = 20  # this many identical non-retryable errors first: stop, don't burn on
WORST_CASES_KEPT = 4096  # distinct (price, size, max_tokens) worst cases remembered


def job_transport(limits: Limits) -> AiohttpTransport:
    """The job's connection pool: its concurrency, timeouts and answer cap."""
    return AiohttpTransport(
        max_connections=limits.concurrency,
        connect_timeout_s=limits.connect_timeout_s,
        read_timeout_s=limits.timeout_s,  # the longest silence; the client sets deadlines
        max_answer_bytes=limits.max_answer_bytes,
    )


def auto_cache(
    job: Job, prices: PriceTable, rows: int, say: Callable[[str], None]
) -> tuple[CacheMarker | None, WarmGate | None]:
    """`cache = "auto"`: the breakpoint per model, and the warm-up before the fan-out."""
    if job.cache != "auto":
        return None, None
    if not provider_for(job.api.format).supports_prompt_cache:
        say(f'cache = "auto": cache_control is marked in the {prompt_cache_formats()} format only')
        return None, None
    marker = CacheMarker(job, prices, batch=False, rows=rows, say=say)
    return marker, WarmGate(marker.ttl)


def api_client(
    job: Job, transport: Transport, limiter: Limiter, api_key: str, provider: Provider
) -> ApiClient:
    """The job's client: its endpoint, headers, retries and deadlines."""
    limits = job.limits
    headers = provider.request_headers(job.api.auth, api_key, job.api.anthropic_version)
    return ApiClient(
        transport,
        provider.endpoint(job.api.base_url),
        headers,
        limiter,
        max_retries=limits.max_retries,
        provider=provider,
        secret=api_key,
        deadline_s=limits.timeout_s,
        stream_deadline_s=limits.stream_timeout_s,
        patience_s=limits.rate_limit_patience_s,
    )


class FailFast:
    """Stops a job the API rejects wholesale, instead of burning through the file."""

    def __init__(self, api_key_env: str) -> None:
        self.api_key_env = api_key_env
        self.first: list[tuple[int | None, str | None]] = []
        self.settled = False  # an ok answer, or a mixed start: never stop early

    def check(self, result: CallResult) -> None:
        if result.http_status in (401, 403):
            what = "authentication" if result.http_status == 401 else "permission"
            raise ApiRejectsEverything(
                f"the API refused {what} (HTTP {result.http_status} {result.error_type}): "
                f"check the key in ${self.api_key_env} and its access to this model"
            )
        if self.settled:
            return
        if result.answer is not None or result.retryable:
            self.settled = result.answer is not None
            return  # retries ran out on a transient error: not a verdict on the requests
        self.first.append((result.http_status, result.error_type))
        if len(set(self.first)) > 1:
            self.settled = True
        elif len(self.first) >= FAIL_FAST_ANSWERS:
            status, kind = self.first[0]
            raise ApiRejectsEverything(
                f"the first {FAIL_FAST_ANSWERS} answers were all HTTP {status} {kind} "
                f"({result.error_message}); stopped instead of sending the rest"
            )


class RowSender:
    def __init__(
        self,
        job: Job,
        records: RecordBuilder,
        client: ApiClient,
        *,
        stop: Callable[[JobStopped], None],
        budget: Any = None,
        marker: CacheMarker | None = None,
        gate: WarmGate | None = None,
        sent: Callable[[int], None] | None = None,
        book: Unrecorded | None = None,
    ) -> None:
        """`budget`: a Budget or anything with its reserve / settle (Ray's ClusterBudget);
        `marker`, `gate`: `cache = "auto"`; `sent` hears how many attempts a row took;
        `book` keeps count of requests in flight and of those that may have been billed."""
        self.renderer = RequestRenderer(
            job.request, job.prompt, job.system, job.overrides, job.prompt_after
        )
        self.provider = provider_for(job.api.format)
        self.records, self.client, self.budget = records, client, budget
        self.marker, self.gate = marker, gate
        records.write_ttl = partial(write_ttl, job, marker)  # what its requests ask for
        self.fail_fast = FailFast(job.api.api_key_env)
        self.later = job.limits.later_requests  # a cascade stage's: its rows' later requests
        self.unknown_cost_usd = Decimal(0)  # answers without usage, at their worst case
        self._stop, self._sent, self.book = stop, sent, book
        # (id(price), payload bytes, max_tokens) -> (price, worst case, its nano-dollars)
        self._worst_cases: dict[tuple[int, int, Any], tuple[Price, Decimal, int]] = {}

    async def process(self, row: dict[str, Any]) -> dict[str, Any] | None:
        """The row's output record, or None when it was not sent (the resume sends it)."""
        try:
            body = self.renderer.render(row)
        except Unsendable as e:  # a null cell, a bad override, an empty prompt
            return self.records.unsent(row, e.error_type, str(e))
        prefix = None
        if self.marker is not None:
            body, prefix = self.marker.mark(body)
        payload = orjson.dumps(self.provider.body(body))
        try:
            worst, nano = self._worst_of(body, payload)
            if self.budget is not None:  # no coroutine without a budget: nothing to wait for
                await self.budget.reserve(worst)
        except BudgetReached as e:
            self._stop(e)
            return None
        stake = Stake(worst, self.budget, self.book, held=self.budget is not None, nano=nano)
        record = None
        try:
            record = await self._send(row, body, payload, prefix, stake)
            if record["status"] == "ok" and record.get("cost_usd") is None:
                self._unknown_cost(stake)
            return record
        except NotSent:
            return None
        # ApiUnavailable: no success for the patience; BudgetReached: no room to send again
        # after an attempt that may have been billed. Either way the row stays to do.
        except (ApiUnavailable, BudgetReached) as e:
            self._stop(e)
            return None
        finally:  # every reservation is settled, or budget waiters would wait for ever
            stake.settle(record.get("cost_usd") if record else None)

    async def _send(
        self,
        row: dict[str, Any],
        body: dict[str, Any],
        payload: bytes,
        prefix: str | None,
        stake: Stake,
    ) -> dict[str, Any]:
        input_tokens = self.provider.estimate_input_tokens(body)
        warmer = prefix is not None and self.gate is not None and await self.gate.enter(prefix)
        result = None
        try:
            result = await self.client.call(
                payload, input_tokens, int(body["max_tokens"]),
                stream=self.provider.streamed(body), watch=stake,
            )  # fmt: skip
        finally:
            if prefix is not None and self.gate is not None:
                answered = result is not None and result.answer is not None
                self.gate.done(prefix, warmer=warmer, answered=answered)
        if self._sent is not None:
            self._sent(result.attempts)
        try:
            self.fail_fast.check(result)
        except ApiRejectsEverything as e:
            self._stop(e)  # nothing more is sent; requests in flight finish and are kept
            if result.http_status in (401, 403):
                raise NotSent from e  # not recorded: a resume with a working key sends it
        if prefix is not None and self.marker is not None and result.answer is not None:
            self.marker.heard(prefix, result.answer.usage)
        return self.records.from_call(row, str(body["model"]), result)

    def _worst_of(self, body: dict[str, Any], payload: bytes) -> tuple[Decimal, int]:
        """The row's worst case and its nano-dollars. (An unpriced model's requests count
        with no money: there is no price to say how much; with a budget, BudgetReached.)"""
        price = self.records.prices.lookup(str(body["model"]))
        if price is None:
            if self.budget is not None:
                raise unpriced(body["model"])
            return Decimal(0), 0
        return self._worst(body, payload, price)

    def _worst(self, body: dict[str, Any], payload: bytes, price: Price) -> tuple[Decimal, int]:
        """The row's worst case and its nano-dollars. A request's depends only on its
        price, its size and max_tokens, which rows share: worked out once for each."""
        later = self.later if self.budget is not None else ()
        if later:  # a cascade stage's path: not worth keeping
            worst = path_worst_usd(body, payload, price, later, self.records.prices.lookup)
            return worst, nano_usd(worst)
        key = (id(price), len(payload), body.get("max_tokens", 0))
        known = self._worst_cases.get(key)
        if known is not None and known[0] is price:  # the same Price, not a reused id
            return known[1], known[2]
        worst = path_worst_usd(body, payload, price, (), self.records.prices.lookup)
        if len(self._worst_cases) >= WORST_CASES_KEPT:
            self._worst_cases.clear()
        self._worst_cases[key] = (price, worst, nano := nano_usd(worst))
        return worst, nano

    def _unknown_cost(self, stake: Stake) -> None:
        """An answer without usage: its worst case is remembered (run.json, and the book
        while the run goes), so a later run's budget counts it too. (An unpriced model's
        rows stay unpriced, not counted.)"""
        self.unknown_cost_usd += stake.worst
        if self.book is not None and stake.nano:
            self.book.unknown(stake.nano)
