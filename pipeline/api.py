"""The Python API: `run_job` runs a job file (or a `Job` built in code) and returns its
summary. The command line is a thin layer over it.

What a run may be told is `RunOptions` (job/options.py), declared once: `run_job`'s
keywords are its fields (a test checks they agree), the command line builds one from its
flags. Which engine runs the rows is one table, `ENGINES`: local, batch, Ray.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

from pipeline.errors import UsageError
from pipeline.input.sample import Sample
from pipeline.job.load import load_job, with_options
from pipeline.job.model import Job
from pipeline.job.options import InputFrame, RunOptions, runs_on_ray
from pipeline.run.frames import is_frame, snapshot_input
from pipeline.run.plan import Plan, prepare, refuse_while_batches_run, set_aside
from pipeline.run.progress import RunSummary
from pipeline.run.replicate import located, pushing, replicated
from pipeline.run.runner import run_plan
from pipeline.send.transport import Transport
from pipeline.store.layout import INPUT_SNAPSHOT, MANIFEST
from pipeline.store.lock import lock_output
from pipeline.store.output_dir import check_output_dir
from pipeline.store.remote import Replica

T = TypeVar("T")


def run_job(
    job: Job | str | Path,
    *,
    input: str | Path | InputFrame | None = None,
    output: str | Path | None = None,
    base_url: str | None = None,
    limit: int | None = None,
    sample: int | None = None,
    seed: int = 0,
    concurrency: int | None = None,
    rpm: float | None = None,
    max_cost: float | None = None,
    simulate: bool = False,
    retry_errors: bool = False,
    fresh: bool = False,
    set_aside_damaged: bool = False,
    batch: bool = False,
    detach: bool = False,
    ray: str | None = None,
    workers: int | None = None,
    show_progress: bool | None = None,
    api_key: str | None = None,
    transport: Transport | None = None,
    only_rows: Sequence[int] | None = None,
) -> RunSummary:
    """Run a job to the end (or to a clean stop, raised as a `JobStopped`), in scripts and
    notebooks alike (where an event loop may already run).

    The options are `RunOptions`'s (job/options.py), as `pipeline run`'s flags: `batch`
    sends through the Message Batches API, `detach` then submits and stops at once
    (`BatchesInProgress`, exit 5); `ray` runs on a Ray cluster at that address ("local":
    one started for the run) with `workers` worker actors (default: the cluster's CPUs);
    `sample` sends N rows chosen at random by their ids and `seed` (`--sample`).
    `input` may be a DataFrame (polars, pandas, a pyarrow Table): it is kept in the output
    as OUTPUT/input.parquet, so a resume finds the same rows (another frame on the same
    output is refused; `fresh=True` sets the earlier results aside).
    Besides them: `api_key` instead of the environment's, `transport` instead of aiohttp,
    and `only_rows`, input positions (0-based) to send alone, as `estimate --pilot` does.
    """
    options = RunOptions(
        input=input, output=output, base_url=base_url, limit=limit, sample=sample, seed=seed,
        concurrency=concurrency,
        rpm=rpm, max_cost=max_cost, simulate=simulate, retry_errors=retry_errors, fresh=fresh,
        set_aside_damaged=set_aside_damaged, batch=batch, detach=detach, ray=ray,
        workers=workers, show_progress=show_progress,
    )  # fmt: skip
    run = run_job_async(job, options, api_key=api_key, transport=transport, only_rows=only_rows)
    return run_to_the_end(run)


async def run_job_async(
    job: Job | str | Path,
    options: RunOptions | None = None,
    *,
    api_key: str | None = None,
    transport: Transport | None = None,
    only_rows: Sequence[int] | None = None,
) -> RunSummary:
    """`run_job` in a running event loop, its options given as one `RunOptions`."""
    options = options or RunOptions()
    if not isinstance(job, Job):
        job = load_job(job)
    frame = options.input if is_frame(options.input) else None
    job = with_options(job, replace(options, input=None) if frame is not None else options)
    if frame is not None:
        job, options = _with_frame(job, options, frame)
    if options.detach and job.api.mode != "batch":
        raise UsageError('--detach: only in batch mode ([api] mode = "batch" or --batch)')
    if options.detach and options.simulate:
        raise UsageError(
            "--detach with --simulate: the simulator ends with the run, and its batches "
            "with it; run without --detach, or against a simulator of your own (--base-url)"
        )
    async with replicated(job, options) as replica:
        if job.cascade is not None:
            summary = await _run_cascade(job, options, api_key, transport, replica)
        else:
            summary = await _run_plan(job, options, api_key, transport, only_rows, replica)
    return located(summary, job)


async def _run_plan(
    job: Job,
    options: RunOptions,
    api_key: str | None,
    transport: Transport | None,
    only_rows: Sequence[int] | None,
    replica: Replica | None,
) -> RunSummary:
    """The job's plan, run by its engine (pushed to its output URL meanwhile, if any)."""
    if options.simulate and api_key is None:
        api_key = _simulated_key()
    plan = prepare(
        job,
        api_key=api_key,
        retry_errors=options.retry_errors,
        limit=options.limit,
        only_rows=only_rows,
        sample=Sample(options.sample, options.seed) if options.sample is not None else None,
        fresh=options.fresh,
        set_aside_damaged=options.set_aside_damaged,
    )
    try:
        with _simulator(plan, options.simulate) as plan:
            return await _run_prepared(plan, options, transport, replica)
    finally:  # now, not when a traceback that holds the plan is dropped: a rerun may follow
        if plan.lock is not None:
            plan.lock.close()


async def _run_prepared(
    plan: Plan, options: RunOptions, transport: Transport | None, replica: Replica | None
) -> RunSummary:
    """A prepared plan (a job's, or a cascade's phase) run by its engine, pushed to its
    output URL meanwhile when it has one."""
    engine, options = _engine_for(plan.job, options)
    run = ENGINES[engine](plan, options, transport)
    return await pushing(replica, plan.sink, plan.job.fold_s, run)


def _with_frame(job: Job, options: RunOptions, frame: object) -> tuple[Job, RunOptions]:
    """A DataFrame as the job's input: its snapshot in the output (run/frames.py). With
    `fresh`, the earlier output is set aside first (under its lock, as a run would), so
    the snapshot is this frame's."""
    if options.fresh:
        check_output_dir(replace(job, input=job.output / INPUT_SNAPSHOT), fresh=True)
        with contextlib.closing(lock_output(job.output)):
            refuse_while_batches_run(job.output, "fresh=True would send their rows again")
            set_aside(job.output)
        options = replace(options, fresh=False)
    return replace(job, input=snapshot_input(frame, job.output)), options


async def _run_cascade(
    job: Job,
    options: RunOptions,
    api_key: str | None,
    transport: Transport | None,
    replica: Replica | None,
) -> RunSummary:
    """A [cascade] job: its phases, each run as a job of its own by the engine it asks
    for (local or batch; cascade.run)."""
    from pipeline.cascade.run import Scope, run_cascade
    from pipeline.run.plan import api_key_from_env

    if _engine_for(job, options)[0] == "ray":
        raise UsageError("[cascade]: runs locally or in batches (--batch), not on Ray yet")
    if options.simulate and api_key is None:
        api_key = _simulated_key()
    key = api_key if api_key is not None else api_key_from_env(job.api.api_key_env)

    async def run_phase(phase: Job) -> RunSummary:
        plan = prepare(phase, api_key=key, retry_errors=options.retry_errors)
        plan = replace(plan, simulated=options.simulate)  # the simulator is the cascade's
        try:
            return await _run_prepared(plan, options, transport, replica)
        finally:
            if plan.lock is not None:
                plan.lock.close()

    scope = Scope(options.limit, options.sample, options.seed)
    with _simulated_job(job, options.simulate) as job:
        return await run_cascade(job, scope, run_phase, fresh=options.fresh)


def _engine_for(job: Job, options: RunOptions) -> tuple[str, RunOptions]:
    """The engine that runs the job's rows: Ray (`--ray`, or `[run] engine = "ray"` with its
    address and workers), batch (`[api] mode = "batch"`), else local."""
    if not runs_on_ray(job, options):
        return ("batch" if job.api.mode == "batch" else "local"), options
    if job.api.mode == "batch":
        raise UsageError("--ray runs rows online; batch mode has the server run them")
    if options.ray is None:
        settings = job.run
        address, workers = settings.address or "local", options.workers or settings.workers
        options = replace(options, ray=address, workers=workers)
    return "ray", options


async def _run_locally(plan: Plan, options: RunOptions, transport: Transport | None) -> RunSummary:
    return await run_plan(plan, transport=transport, show_progress=options.show_progress)


async def _run_in_batches(
    plan: Plan, options: RunOptions, transport: Transport | None
) -> RunSummary:
    from pipeline.batch.runner import BatchRunner

    runner = BatchRunner(plan, detach=options.detach, show_progress=options.show_progress)
    return await runner.run()


async def _run_on_ray(plan: Plan, options: RunOptions, transport: Transport | None) -> RunSummary:
    """Blocking, on this (the main) thread: Ray installs its signal handlers here."""
    try:
        from pipeline.ray.driver import run_on_ray
    except ImportError:
        raise UsageError(
            "--ray needs Ray, an optional extra: pip install 'pipeline[ray]'"
        ) from None
    assert options.ray is not None  # _engine_for chose Ray for it
    return run_on_ray(
        plan, address=options.ray, workers=options.workers, show_progress=options.show_progress
    )


Engine = Callable[[Plan, RunOptions, Transport | None], Awaitable[RunSummary]]
ENGINES: dict[str, Engine] = {  # [run] engine names (local, ray) and batch mode's
    "local": _run_locally,
    "batch": _run_in_batches,
    "ray": _run_on_ray,
}


def reparse_job(
    job: Job | str | Path, *, input: str | Path | None = None, output: str | Path | None = None
) -> str:
    """Apply the job's (changed) [extract] to its stored answers, sending nothing."""
    from pipeline.labels.reparse import relabel

    if not isinstance(job, Job):
        job = load_job(job)
    job = with_options(job, RunOptions(input=input, output=output))
    if not (job.output / MANIFEST).exists():
        raise UsageError(f"{job.output}: no stored answers to reparse (has the job run?)")
    plan = prepare(job, api_key="not-needed-nothing-is-sent", reparse=True)
    return relabel(plan.sink, plan.job, plan.source.total_rows)


def run_to_the_end(run: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to its end from synchronous code, in a thread of its own if this
    one already runs an event loop (a notebook's)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(run)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, run).result()


def _simulated_key() -> str:
    """The key a --simulate run sends (its simulator takes any)."""
    from pipeline.simulator.process import SIMULATED_KEY  # lazy: --simulate runs only

    return SIMULATED_KEY


@contextlib.contextmanager
def _simulated_job(job: Job, simulate: bool) -> Iterator[Job]:
    """With --simulate: a simulator on a free loopback port, and the job pointed at it."""
    if not simulate:
        yield job
        return
    from pipeline.simulator.process import simulated_api  # lazy: --simulate runs only

    with simulated_api() as base_url:
        yield replace(job, api=replace(job.api, base_url=base_url))


@contextlib.contextmanager
def _simulator(plan: Plan, simulate: bool) -> Iterator[Plan]:
    """With --simulate: a simulator on a free loopback port, and the plan pointed at it."""
    with _simulated_job(plan.job, simulate) as job:
        yield replace(plan, job=job, simulated=True) if simulate else plan
