"""For users already in Ray: `process(ds, job) -> ds` adds the result columns to a dataset.

Each batch of the dataset goes through the same renderer, client, extractor and pricing as
a local run, on actors that share one PoolActor (rate limits, cooldowns, budget) however
many there are. A row that fails is an error row (status, error_type, error_message), never
a failed job. A dataset transform keeps no checkpoint: that is what `pipeline run --ray`
is for.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import ray

from pipeline.input.render import RequestRenderer
from pipeline.job.load import load_job, with_options
from pipeline.job.model import Job
from pipeline.job.template import Unsendable
from pipeline.labels.extract import Extractor
from pipeline.pricing import load_price_table
from pipeline.providers.registry import provider_for
from pipeline.ray.actor import RayPool, start_pool
from pipeline.ray.driver import ClusterBudget
from pipeline.ray.lease import LeasedLimiter, job_limits
from pipeline.run.outcome import RecordBuilder
from pipeline.run.plan import api_key_from_env
from pipeline.schema import LABEL_FIELDS, RESULT_FIELDS, ROW_INDEX
from pipeline.send.budget import worst_case_usd
from pipeline.send.client import ApiClient, NotSent
from pipeline.send.transport import AiohttpTransport


def process(
    ds: Any,
    job: Job | str | Path,
    *,
    api_key: str | None = None,
    base_url: str | None = None,
    workers: int | None = None,
    batch_size: int = 256,
) -> Any:
    """`ds` with the result and label columns added, row for row."""
    job = job if isinstance(job, Job) else load_job(job)
    job = with_options(job, base_url=base_url)
    key = api_key or api_key_from_env(job.api.api_key_env)
    count = workers or max(1, int(ray.cluster_resources().get("CPU", 1)))  # type: ignore[no-untyped-call]
    pool = start_pool(
        Path(f"dataset-{uuid.uuid4()}"), job_limits(job.limits), _budget(job),
        job.limits.concurrency, detached=False,
    )  # fmt: skip  # lives while this driver does (the dataset runs lazily, later)
    return ds.map_batches(
        _Batches, fn_constructor_kwargs={"job": job, "key": key, "pool": pool, "workers": count},
        batch_size=batch_size, batch_format="pyarrow", concurrency=count,
        num_cpus=0.25,  # waiting on the API, not computing: leave the CPUs to Ray Data
    )  # fmt: skip


def _budget(job: Job) -> str | None:
    return str(job.limits.max_cost_usd) if job.limits.max_cost_usd is not None else None


class _Batches:
    """One dataset actor: its batches sent through the shared pool."""

    def __init__(self, job: Job, key: str, pool: Any, workers: int) -> None:
        self.job, self.key, self.pool, self.workers = job, key, pool, workers
        self.name = f"dataset-actor-{uuid.uuid4()}"
        self.renderer = RequestRenderer(job.request, job.prompt, job.system, job.overrides)
        self.records = RecordBuilder([], Extractor(job.extract), load_price_table())
        self.provider = provider_for(job.api.format)
        fields = [*RESULT_FIELDS, *Extractor(job.extract).fields(), *LABEL_FIELDS]
        self.schema = pa.schema([f for f in fields if f.name != "batch_id"])

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = [{**row, ROW_INDEX: i} for i, row in enumerate(batch.to_pylist())]
        records = asyncio.run(self._all(rows))
        table = pa.Table.from_pylist(records, schema=self.schema)
        for field in self.schema:
            batch = batch.append_column(field, table.column(field.name))
        return batch

    async def _all(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        job, pool = self.job, RayPool(self.pool)
        limits = job.limits
        concurrency = limits.concurrency  # the cluster's: this actor gets its share
        limiter = LeasedLimiter(
            pool, job_limits(job.limits), workers=self.workers, concurrency=concurrency,
            name=self.name,
        )  # fmt: skip
        await limiter.join()
        transport = AiohttpTransport(
            max_connections=concurrency, connect_timeout_s=limits.connect_timeout_s,
            read_timeout_s=limits.timeout_s, max_answer_bytes=limits.max_answer_bytes,
        )  # fmt: skip
        headers = self.provider.request_headers(job.api.auth, self.key, job.api.anthropic_version)
        client = ApiClient(
            transport, self.provider.endpoint(job.api.base_url), headers, limiter,
            max_retries=limits.max_retries, provider=self.provider, secret=self.key,
            deadline_s=limits.timeout_s, patience_s=limits.rate_limit_patience_s,
        )  # fmt: skip
        budget = ClusterBudget(pool) if limits.max_cost_usd is not None else None
        try:
            return list(await asyncio.gather(*(self._one(r, client, budget) for r in rows)))
        finally:
            await transport.aclose()
            await limiter.release_unused()

    async def _one(self, row: dict[str, Any], client: ApiClient, budget: Any) -> dict[str, Any]:
        try:
            body = self.renderer.render(row)
        except Unsendable as e:
            return self._clean(self.records.unsent(row, e.error_type, str(e)))
        payload = orjson.dumps(self.provider.body(body))
        price = self.records.prices.lookup(str(body["model"]))
        worst = worst_case_usd(body, payload, price) if budget and price else None
        record = None
        try:
            if worst is not None:
                await budget.reserve(worst)
            result = await client.call(
                payload, self.provider.estimate_input_tokens(body), int(body["max_tokens"]),
                stream=self.provider.streamed(body),
            )  # fmt: skip
            record = self.records.from_call(row, str(body["model"]), result)
        except (NotSent, Exception) as e:  # a row's trouble is that row's error, never the job's
            record = self.records.unsent(row, "not_sent", str(e) or e.__class__.__name__)
        finally:
            if worst is not None:
                budget.settle(worst, record.get("cost_usd") if record else None)
        return self._clean(record)

    def _clean(self, record: dict[str, Any]) -> dict[str, Any]:
        return {f.name: record.get(f.name) for f in self.schema}


__all__ = ["process"]
