"""The Python API: `run_job` runs a job file (or a `Job` built in code) and returns its
summary. The command line is a thin layer over it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from pipeline.errors import UsageError
from pipeline.job.load import load_job, with_options
from pipeline.job.model import Job
from pipeline.run.plan import Plan, prepare
from pipeline.run.progress import RunSummary
from pipeline.run.runner import run_plan
from pipeline.send.transport import Transport
from pipeline.simulator.process import SIMULATED_KEY, simulated_api
from pipeline.store.layout import MANIFEST


async def run_job_async(
    job: Job | str | Path,
    *,
    input: str | Path | None = None,
    output: str | Path | None = None,
    base_url: str | None = None,
    limit: int | None = None,
    concurrency: int | None = None,
    rpm: float | None = None,
    max_cost: float | None = None,
    simulate: bool = False,
    retry_errors: bool = False,
    fresh: bool = False,
    set_aside_damaged: bool = False,
    api_key: str | None = None,
    transport: Transport | None = None,
    show_progress: bool | None = None,
    only_rows: Sequence[int] | None = None,
    batch: bool = False,
    detach: bool = False,
    ray: str | None = None,
    workers: int | None = None,
) -> RunSummary:
    """Run a job to the end (or to a clean stop, raised as a `JobStopped`).

    `only_rows` sends only those input positions (0-based), as `estimate --pilot` does.
    `batch` sends through the Message Batches API ([api] mode = "batch"); `detach` then
    submits and stops at once (`BatchesInProgress`, exit 5) instead of waiting.
    `ray` runs on a Ray cluster at that address ("local": one started for the run), with
    `workers` worker actors (default: the cluster's CPUs).
    """
    if not isinstance(job, Job):
        job = load_job(job)
    job = with_options(
        job,
        input=input,
        output=output,
        base_url=base_url,
        concurrency=concurrency,
        rpm=rpm,
        max_cost=max_cost,
        batch=batch,
    )
    if detach and job.api.mode != "batch":
        raise UsageError('--detach: only in batch mode ([api] mode = "batch" or --batch)')
    if detach and simulate:
        raise UsageError(
            "--detach with --simulate: the simulator ends with the run, and its batches "
            "with it; run without --detach, or against a simulator of your own (--base-url)"
        )
    plan = prepare(
        job,
        api_key=SIMULATED_KEY if simulate and api_key is None else api_key,
        retry_errors=retry_errors,
        limit=limit,
        only_rows=only_rows,
        fresh=fresh,
        set_aside_damaged=set_aside_damaged,
    )
    try:
        with _simulator(plan, simulate) as plan:
            settings = plan.job.run
            if ray is None and settings.engine == "ray":
                ray, workers = settings.address or "local", workers or settings.workers
            if ray is not None and plan.job.api.mode == "batch":
                raise UsageError("--ray runs rows online; batch mode has the server run them")
            if ray is not None:
                # blocking, on this (the main) thread: Ray installs its signal handlers here
                return _run_on_ray(plan, ray, workers, show_progress)
            if plan.job.api.mode == "batch":
                from pipeline.batch.runner import BatchRunner

                return await BatchRunner(plan, detach=detach, show_progress=show_progress).run()
            return await run_plan(plan, transport=transport, show_progress=show_progress)
    finally:  # now, not when a traceback that holds the plan is dropped: a rerun may follow
        if plan.lock is not None:
            plan.lock.close()


def _run_on_ray(
    plan: Plan, address: str, workers: int | None, show_progress: bool | None
) -> RunSummary:
    try:
        from pipeline.ray.driver import run_on_ray
    except ImportError:
        raise UsageError(
            "--ray needs Ray, an optional extra: pip install 'pipeline[ray]'"
        ) from None
    return run_on_ray(plan, address=address, workers=workers, show_progress=show_progress)


def reparse_job(
    job: Job | str | Path, *, input: str | Path | None = None, output: str | Path | None = None
) -> str:
    """Apply the job's (changed) [extract] to its stored answers, sending nothing."""
    from pipeline.labels.reparse import relabel

    if not isinstance(job, Job):
        job = load_job(job)
    job = with_options(job, input=input, output=output)
    if not (job.output / MANIFEST).exists():
        raise UsageError(f"{job.output}: no stored answers to reparse (has the job run?)")
    plan = prepare(job, api_key="not-needed-nothing-is-sent", reparse=True)
    return relabel(plan.sink, plan.job, plan.source.total_rows)


def run_job(job: Job | str | Path, **options: Any) -> RunSummary:
    """`run_job_async` for scripts and notebooks (where an event loop may already run)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(run_job_async(job, **options))
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, run_job_async(job, **options)).result()


@contextlib.contextmanager
def _simulator(plan: Plan, simulate: bool) -> Iterator[Plan]:
    """With --simulate: a simulator on a free loopback port, and the plan pointed at it."""
    if not simulate:
        yield plan
        return
    with simulated_api() as base_url:
        api = replace(plan.job.api, base_url=base_url)
        yield replace(plan, job=replace(plan.job, api=api), simulated=True)
