"""A run whose output is a URL (store.remote): the lease taken and the URL's files pulled
into the mirror before anything else, the live journal folded and pushed every
`[job] fold_s` while the run goes, and everything pushed at its end, however it ends."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import TypeVar

from pipeline.errors import OutputUnreachable, UsageError, first_line
from pipeline.job.model import Job, mirror_of
from pipeline.job.options import RunOptions
from pipeline.run.progress import RunSummary
from pipeline.store.durable import is_write_error
from pipeline.store.layout import RESULTS_FILE
from pipeline.store.lock import lock_output
from pipeline.store.remote import LeaseKeeper, Replica
from pipeline.store.sink import ResultSink

T = TypeVar("T")


@contextlib.asynccontextmanager
async def replicated(job: Job, options: RunOptions) -> AsyncIterator[Replica | None]:
    """The job's Replica (None for a local output), pulled and leased for the run."""
    if job.output_url is None:
        yield None
        return
    if options.fresh:
        raise UsageError(
            f"--fresh with an output at a URL ({job.output_url}): name another output URL; "
            "the earlier results stay where they are"
        )
    replica = Replica(job.output_url, job.output, job.fold_s)
    try:
        await _reaching(replica.take_lease, job.output_url)  # (its read-back may fail)
        await _reaching(replica.pull, job.output_url)
        # a long pull used some of the lease: renewed unless it ran out and was taken
        await _reaching(replica.renew_held, job.output_url)
    except BaseException:
        # nothing sent: nothing to put (a mirror pulled part-way is not the output: a push
        # would spread it); its lease, once put, let go (never another's), or a rerun
        # would wait for it (a store never reached is not asked again: 6 s of retries)
        if replica.leased:
            with contextlib.suppress(OSError):
                await asyncio.to_thread(replica.release_lease)
        raise
    ended_by: BaseException | None = None
    try:
        yield replica
    except UsageError as e:  # a refusal names the output the user named, not its mirror
        ended_by = UsageError(str(e).replace(str(job.output), job.output_url))
        raise ended_by from None
    except BaseException as e:
        ended_by = e
        raise
    finally:  # paid answers go to the URL however the run ended
        await _put_at_end(replica, ended_by)


async def _reaching(step: Callable[[], object], url: str) -> None:
    """`_at_start` on a thread."""
    await asyncio.to_thread(_at_start, step, url)


def _at_start(step: Callable[[], object], url: str) -> None:
    """A step of a run's start at its output URL; a store that cannot be reached or
    refuses is one line (exit 2: nothing was sent yet), not an internal error."""
    try:
        step()
    except OSError as e:  # pyarrow's filesystems raise OSError for what the store says
        if is_write_error(e):  # the mirror's disk (full, read-only): said as one, exit 6
            raise
        raise UsageError(
            f"output {url}: cannot reach it ({first_line(e)}); nothing was sent: check the "
            "URL and the store's credentials and endpoint (AWS_ENDPOINT_URL for S3)"
        ) from None


async def _put_at_end(replica: Replica, ended_by: BaseException | None) -> None:
    """Everything put to the URL and the lease let go. A store that refuses stops a run
    that went well with one line (its answers wait in the mirror for the next run); a run
    already ending on an error of its own ends on that one, this one said beside it."""
    try:
        if await asyncio.to_thread(replica.holds_lease):
            try:
                await asyncio.to_thread(replica.push)
                await asyncio.to_thread(replica.drop_merged_shards)
            finally:
                await asyncio.to_thread(replica.release_lease)
            return
        line = (
            f"output {replica.url}: another run took it over (this run's lease ran out); "
            f"this run's answers are kept in {replica.mirror}, not put over that run's"
        )
    except OSError as e:
        line = f"{replica.unreachable(e)}: run again to put them"
    if ended_by is not None:
        print(f"warning: {line}", file=sys.stderr)
        return
    raise OutputUnreachable(line)


def local_copy(url: str) -> Path:
    """The mirror of the output at `url`, brought up to date from it (reading only: no
    lease), for `report`, `status` and `cancel`; under the mirror's lock, as a run holds
    it. A run on this machine writing the mirror holds it: then the mirror is read as that
    run has it (newer than the URL, which it puts there), never pulled over: a pull there
    could bring back parts it merged away, or records it changed since its last put."""
    url = url.rstrip("/")
    mirror = mirror_of(url)
    try:
        lock = lock_output(mirror)
    except UsageError:
        print(
            f"pipeline: {url}: a run on this machine is writing its mirror: read as that run "
            "has it now",
            file=sys.stderr,
        )
        return mirror
    with contextlib.closing(lock):
        Replica(url, mirror).pull()
    return mirror


def pull_shards(job: Job, *, started: bool) -> None:
    """A --ray driver's output at a URL: what its workers put there (ray/shard-K/) into
    the mirror, where the merge takes it in (no filesystem is shared with the workers).
    A store that cannot be reached is one line: before the workers `started`, as at the
    run's start (exit 2, nothing sent); after, a stop (exit 6) saying where their answers
    wait."""
    if job.output_url is None:
        return
    replica = Replica(job.output_url, job.output, job.fold_s)
    if not started:
        _at_start(replica.pull, job.output_url)
        return
    try:
        replica.pull()
    except OSError as e:
        if is_write_error(e):  # the mirror's disk: said as one, exit 6
            raise
        raise OutputUnreachable(
            f"output {job.output_url}: cannot take in what the workers put there "
            f"({first_line(e)}); their answers are kept there: run again to take them in"
        ) from None


def located(summary: RunSummary, job: Job) -> RunSummary:
    """The summary naming the output's URL (pushed by now) rather than its mirror."""
    if job.output_url is None:
        return summary
    results = f"{job.output_url}/{RESULTS_FILE}" if summary.results else None
    return replace(summary, output_dir=job.output_url, results=results)


async def pushing(replica: Replica | None, sink: ResultSink, fold_s: float, run: Awaitable[T]) -> T:
    """`run`, with its sink's journal folded and pushed every `fold_s` meanwhile."""
    if replica is None:
        return await run
    # a lease about to run out stops the run through its sink (the runner's stop)
    task = asyncio.create_task(
        replica.keep_pushing(sink.fold_now, fold_s, lambda reason: sink.on_stop(reason))
    )
    sink.keep_lease = LeaseKeeper(replica, fold_s)  # for an engine that holds the loop (Ray)
    try:
        return await run
    finally:
        sink.keep_lease = lambda: None
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
