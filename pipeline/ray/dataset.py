"""For users already in Ray: `process(ds, job) -> ds` adds the result columns to a dataset.

Each batch of the dataset goes through the same row sender as a local run (run/rowsend.py:
renderer, cache breakpoint, client, budget, extractor and pricing with the job's [pricing]),
on actors that share one PoolActor (rate limits, requests in flight, cooldowns, budget)
however many there are. A row that fails is an error row (status, error_type, error_message), never
a failed job. A dataset transform keeps no checkpoint: that is what `pipeline run --ray`
is for.
"""

from __future__ import annotations

import asyncio
import uuid
import warnings
from pathlib import Path
from typing import Any

import pyarrow as pa

from pipeline.errors import JobStopped
from pipeline.job.load import load_job, with_options
from pipeline.job.model import Job
from pipeline.job.options import RunOptions
from pipeline.labels.extract import Extractor
from pipeline.pricing import load_price_table
from pipeline.providers.registry import provider_for
from pipeline.ray.actor import RayPool, start_pool
from pipeline.ray.budget import ClusterBudget
from pipeline.ray.lease import LeasedLimiter, job_limits
from pipeline.ray.outage import LeasedOutageWatch
from pipeline.run.outcome import RecordBuilder
from pipeline.run.rowsend import RowSender, api_client, auto_cache, job_transport
from pipeline.schema import LABEL_FIELDS, RESULT_FIELDS, ROW_INDEX
from pipeline.send.client import ApiClient


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
    # here, not at the top: each dataset actor imports this module for _Batches and needs
    # neither, and they load polars and pyarrow.parquet (0.13 CPU-s and 25 MB an actor)
    from pipeline.ray.driver import worker_count
    from pipeline.run.plan import api_key_from_env

    job = job if isinstance(job, Job) else load_job(job)
    job = with_options(job, RunOptions(base_url=base_url))
    key = api_key or api_key_from_env(job.api.api_key_env)
    if job.limits.max_cost_usd is not None:  # here, not in each actor at its first row
        load_price_table().with_overrides(job.pricing).refuse_unpriced_budget(job.models)
    count = worker_count(job.limits.concurrency, workers, _warn)
    pool = start_pool(
        Path(f"dataset-{uuid.uuid4()}"), job_limits(job.limits), _budget(job),
        job.limits.concurrency, workers=count, detached=False,
    )  # fmt: skip  # lives while this driver does (the dataset runs lazily, later)
    return ds.map_batches(
        _Batches, fn_constructor_kwargs={"job": job, "key": key, "pool": pool, "workers": count},
        batch_size=batch_size, batch_format="pyarrow", concurrency=count,
        num_cpus=0.25,  # waiting on the API, not computing: leave the CPUs to Ray Data
    )  # fmt: skip


def _halt(reason: JobStopped, stops: list[JobStopped], client: ApiClient) -> None:
    """What would stop a run (the budget, the API refusing every request): remembered for
    the rows not sent, and nothing more is sent."""
    stops.append(reason)
    client.halt()


def _warn(text: str) -> None:
    warnings.warn(text, stacklevel=3)


def _budget(job: Job) -> str | None:
    return str(job.limits.max_cost_usd) if job.limits.max_cost_usd is not None else None


class _Batches:
    """One dataset actor: its batches sent through the shared pool."""

    def __init__(self, job: Job, key: str, pool: Any, workers: int) -> None:
        self.job, self.key, self.pool, self.workers = job, key, pool, workers
        self.name = f"dataset-actor-{uuid.uuid4()}"
        prices = load_price_table().with_overrides(job.pricing)
        self.records = RecordBuilder([], Extractor(job.extract), prices)
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
        job, pool, limits = self.job, RayPool(self.pool), self.job.limits
        limiter = LeasedLimiter(
            pool, job_limits(limits), workers=self.workers, concurrency=limits.concurrency,
            name=self.name,
        )  # fmt: skip
        await limiter.join()  # this actor's share of the cluster's requests in flight
        transport = job_transport(limits)
        client = api_client(job, transport, limiter, self.key, provider_for(job.api.format))
        watch = LeasedOutageWatch.instead_of(client.outage, pool, self.name)
        client.outage = watch  # one outage, one probe at a time, for every actor
        stops: list[JobStopped] = []
        marker, gate = auto_cache(job, self.records.prices, len(rows), lambda _: None)
        sender = RowSender(
            job, self.records, client, stop=lambda e: _halt(e, stops, client),
            budget=(
                ClusterBudget(pool, self.name)
                if limits.max_cost_usd is not None
                else None
            ),
            marker=marker, gate=gate,
        )  # fmt: skip
        try:
            return list(await asyncio.gather(*(self._one(r, sender, stops) for r in rows)))
        finally:
            await transport.aclose()
            await watch.flush()
            await limiter.release_unused(pausing=True)  # this actor's next batch comes back

    async def _one(
        self, row: dict[str, Any], sender: RowSender, stops: list[JobStopped]
    ) -> dict[str, Any]:
        """The row's record; a row not sent (the budget, the API refusing every request)
        or any trouble of its own is an error row, never a failed job."""
        try:
            record = await sender.process(row)
        except Exception as e:
            record = self.records.unsent(row, "not_sent", str(e) or e.__class__.__name__)
        if record is None:
            why = str(stops[-1]) if stops else "not sent"
            record = self.records.unsent(row, "not_sent", why)
        return self._clean(record)

    def _clean(self, record: dict[str, Any]) -> dict[str, Any]:
        return {f.name: record.get(f.name) for f in self.schema}


__all__ = ["process"]
