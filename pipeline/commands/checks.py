"""What `pipeline run` refuses before anything starts (exit 2, nothing sent), where the run
itself would come to it late or say it less clearly: a run against a local simulator
without a key variable set. And, as soon as the run is known, the work its plan would
begin with, started ahead beside the run's imports (`start_ahead`). (A budget over a model
without a price is refused by the plan, run/plan.py, for the API's callers too.)"""

from __future__ import annotations

import contextlib
import ipaddress
import os
from urllib.parse import urlsplit

from pipeline import ahead
from pipeline.errors import UsageError
from pipeline.job.load import with_options
from pipeline.job.model import Job
from pipeline.job.options import RunOptions
from pipeline.send.scrub import MIN_SECRET
from pipeline.store.layout import PARTS_DIR

FALLBACK_KEY_ENV = "ANTHROPIC_API_KEY"  # run/plan.py's api_key_from_env tries it second


def check_run(job: Job, options: RunOptions) -> None:
    """UsageError naming what to change, else nothing (the run checks the rest)."""
    job = with_options(job, options)
    if not options.simulate:
        check_local_key(job)


def start_ahead(job: Job, options: RunOptions) -> None:
    """The run's first work started on the ahead thread (pipeline.ahead) while the run
    imports the rest: its output's parts checked (store.part_check; not with --fresh:
    they are moved aside), its input's ids read and checked (input.source), its digest
    taken (store.manifest), and what the parts finished (store.checkpoint). The parts
    first: polars, which the rest needs, is imported meanwhile. Then aiohttp imported beside
    them all, once they are queued (its thread started first held the ahead thread back:
    a resume's first request 0.75 -> 0.62 s, 0.66 -> 0.63 s, medians of 10)."""
    job = with_options(job, options)
    with contextlib.suppress(OSError):  # a path the system refuses: the run says so, in order
        if not options.fresh:
            from pipeline.store.part_check import check_ahead

            check_ahead(job.output / PARTS_DIR)
        from pipeline.input.source import open_ahead
        from pipeline.store.checkpoint import resume_ahead
        from pipeline.store.manifest import identity_ahead

        open_ahead(job.input, job.id_column, limit=options.limit)
        identity_ahead(job.input)
        if not options.fresh:
            resume_ahead(job.output)
    ahead.import_beside("aiohttp")


def check_local_key(job: Job) -> None:
    """Against a simulator on this machine (`pipeline simulate`, which takes any key) the
    key is a placeholder: say which variable to set, rather than that a key is missing."""
    if not is_loopback(job.api.base_url):
        return
    name = job.api.api_key_env
    if any(os.environ.get(n, "").strip() for n in (name, FALLBACK_KEY_ENV)):
        return  # set: run/plan.py checks its length
    raise UsageError(
        f"no API key for {job.api.base_url}: set {name} (the job's [api] api_key_env) to "
        f"any value of {MIN_SECRET}+ characters, e.g. `export {name}=sim-local-key`; a "
        "`pipeline simulate` takes any key unless started with --require-key-env"
    )


def is_loopback(url: str) -> bool:
    """Whether `url` names this machine (localhost, 127.0.0.0/8, ::1)."""
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a name, not an address
        return False
