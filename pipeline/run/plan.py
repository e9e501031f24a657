"""A run's plan: every check that needs no network (job, input, columns, key, output
directory), then, and only then, the output directory itself: --fresh, the lock, job.json,
journals folded, a --ray run's shards taken in (store.shards), every part checked (damaged
ones named or set aside and recovered), and what earlier runs finished. Nothing is sent here.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import polars as pl
import pyarrow as pa

from pipeline.errors import UsageError
from pipeline.input.sample import Sample, sampled_rows
from pipeline.input.source import Source, open_source
from pipeline.job.model import Job
from pipeline.labels.extract import Extractor
from pipeline.labels.reparse import label_transform
from pipeline.pricing import PriceTable, load_price_table, record_prices
from pipeline.schema import RESULT_FIELDS, ROW_INDEX, output_schema
from pipeline.send.scrub import MIN_SECRET
from pipeline.store import checkpoint, parts, shards
from pipeline.store.book import BatchBook
from pipeline.store.layout import part_name
from pipeline.store.lock import lock_output
from pipeline.store.manifest import identity_soon
from pipeline.store.output_dir import check_output_dir
from pipeline.store.sink import ResultSink


@dataclass
class Plan:
    """Everything checked and ready; nothing sent yet."""

    job: Job
    source: Source
    api_key: str
    prices: PriceTable
    carried: list[str]  # input columns copied to the output: the id column first
    sink: ResultSink
    resume: checkpoint.ResumeState
    only_rows: pl.Series | None = None  # send only these input positions (a pilot)
    lock: IO[bytes] | None = None  # the output directory's lock, held while the plan lives
    simulated: bool = False  # the API is a --simulate run's own simulator (gone after it)
    retry_errors: bool = False  # --retry-errors: error rows count as not done
    set_aside_damaged: bool = False  # --set-aside-damaged: also a --ray shard's parts
    sampled: bool = False  # only_rows is a --sample: the summary still speaks of the job


def prepare(
    job: Job,
    *,
    api_key: str | None = None,
    retry_errors: bool = False,
    limit: int | None = None,
    only_rows: Sequence[int] | None = None,
    reparse: bool = False,
    fresh: bool = False,
    set_aside_damaged: bool = False,
    source: Source | None = None,
    settings: dict[str, Any] | None = None,
    sample: Sample | None = None,
) -> Plan:
    """Check everything that needs no network, then (and only then) touch the output
    directory: --fresh, the lock, the fingerprint, and what earlier runs finished.
    `source` and `settings` (the fingerprint): a Ray worker's, of its shard (ray/rows.py)."""
    # the whole input's digest (for the fingerprint) is taken beside its reading
    background = ThreadPoolExecutor(max_workers=1)
    digest = identity_soon(job.input, background) if settings is None else None
    background.shutdown(wait=False)
    if source is None:
        source = open_source(job.input, job.id_column, limit=limit)
    source.require_columns(sorted(job.template_columns()), "the prompt/system template")
    source.require_columns(list(job.keep_columns), "[job] keep_columns")
    source.require_columns(list(job.overrides.values()), "[overrides]")
    carried = list(dict.fromkeys([source.id_column, *job.keep_columns]))
    if job.gold_column:  # the gold labels travel with the output, for the accuracy report
        source.require_columns([job.gold_column], "[job] gold_column")
        carried = list(dict.fromkeys([*carried, job.gold_column]))
    source.require_plain(
        [*carried, *job.template_columns(), *job.overrides.values()],
        "[job] keep_columns / templates / [overrides]",
    )
    labels = Extractor(job.extract).fields()
    clash = {f.name for f in labels} & {*carried, *(f.name for f in RESULT_FIELDS)}
    if clash:
        raise UsageError(
            f"[extract]: label column {sorted(clash)[0]!r} is already a column "
            "of the output; name it differently"
        )
    if api_key is None:
        api_key = api_key_from_env(job.api.api_key_env)
    prices = load_price_table().with_overrides(job.pricing)
    if job.limits.max_cost_usd is not None:  # refused now, before anything is created
        prices.refuse_unpriced_budget(job.models)
    check_output_dir(job, fresh=fresh)  # before anything is created there, or moved
    lock = lock_output(job.output)  # before --fresh moves a directory in use
    try:
        if settings is None:
            assert digest is not None
            settings = checkpoint.fingerprint(job, prices.version, digest.result())
            moved = start_over(job, settings, fresh=fresh, reparse=reparse)
        else:  # a Ray worker's shard: the driver's plan decided
            moved = False
    except BaseException:
        lock.close()
        raise
    if moved:
        lock.close()
        lock = lock_output(job.output)
    try:
        manifest = checkpoint.record_job_or_refuse(
            job.output,
            settings,
            checkpoint.labelling(job),
            reparse=reparse,
            input_path=job.input,
            url=job.output_url,
        )
        record_prices(job.output, prices)  # the job's [pricing]: its report needs them
        if job.api.mode != "batch" and not reparse:
            refuse_while_batches_run(job.output)
        fields = [pa.field(c, _arrow_type(source.schema, c)) for c in carried]
        sink = ResultSink(  # folds what a crashed run left in journals
            job.output, output_schema(fields, labels), manifest=json.dumps(manifest).encode()
        )
        # a --ray run's shards first: what they hold is paid for, and is this output's
        take_in_shards(sink, job, source, set_aside_damaged=set_aside_damaged)
        check_or_set_aside_parts(sink, source, set_aside_damaged=set_aside_damaged)
        resume = checkpoint.resume_state(job.output, retry_errors=retry_errors)
        chosen = sampled_rows(source, sample, job.gold_column) if sample else None
        if retry_errors and only_rows is None:  # only what was tried and failed, nothing new
            errors = resume.error_rows
            only_rows = (
                errors if chosen is None else errors.filter(errors.is_in(chosen.implode()))
            ).to_list()
        elif chosen is not None and only_rows is None:
            only_rows = chosen.to_list()
        only = pl.Series(ROW_INDEX, list(only_rows), pl.Int64) if only_rows is not None else None
    except BaseException:  # refused after the lock was taken: release it now, not at GC
        lock.close()
        raise
    return Plan(
        job, source, api_key, prices, carried, sink, resume, only, lock,
        retry_errors=retry_errors, set_aside_damaged=set_aside_damaged,
        sampled=sample is not None,
    )  # fmt: skip


def take_in_shards(sink: ResultSink, job: Job, source: Source, *, set_aside_damaged: bool) -> None:
    """The rows a --ray run's workers finished (OUTPUT/ray/shard-*) into the output's
    parts, checked as its own are, relabelled if another [extract] labelled them."""
    shards.merge_shards(
        sink,
        label_transform(job, sink.part_schema.names),
        set_aside_damaged=set_aside_damaged,
        salvage=functools.partial(salvage, source=source),
    )


def merge_shards(plan: Plan) -> None:
    """`take_in_shards` for a --ray driver, at its start and once its workers are done."""
    take_in_shards(plan.sink, plan.job, plan.source, set_aside_damaged=plan.set_aside_damaged)


def start_over(job: Job, settings: dict[str, Any], *, fresh: bool, reparse: bool) -> bool:
    """--fresh, or a changed job whose earlier runs answered no row (a settings mistake
    the API refused row after row): the earlier results are moved aside, never deleted.
    True when something was moved."""
    if fresh:
        refuse_while_batches_run(job.output, "--fresh would send their rows again")
        return set_aside(job.output) is not None
    if reparse:
        return False
    try:
        change = checkpoint.check_job_change(
            job.output, settings, checkpoint.labelling(job), input_path=job.input
        )
    except UsageError:  # record_job_or_refuse refuses it, once it has restored a lost job.json
        return False
    if change is None:
        return False
    try:
        check_output_dir(job, fresh=True)  # what --fresh would not move, this does not
    except UsageError as e:
        raise UsageError(f"{change.name} changed since the earlier run, and {e}") from None
    target = set_aside(job.output)
    print(
        f"note: {change.name} changed since the earlier run, which answered no row: "
        f"starting over (its error rows are kept in {target})",
        file=sys.stderr,
    )
    return target is not None


def refuse_while_batches_run(output: Path, why: str = "an online run would pay twice") -> None:
    """An online run (or --fresh) beside batches not yet collected would pay for their
    rows twice."""
    pending = BatchBook(output).pending()
    if pending:
        raise UsageError(
            f"{output}: {len(pending)} batch(es) of this job are not collected yet ({why}): "
            "run it with --batch to collect them first, or `pipeline cancel` them and run "
            "with --batch to collect what they finished"
        )


def check_or_set_aside_parts(sink: ResultSink, source: Source, *, set_aside_damaged: bool) -> None:
    """Every part file must read whole before anything is sent: a damaged one would make
    the run pay for rows and then fail at the merge (parts.check_or_set_aside)."""
    parts.check_or_set_aside(
        sink.part_files(), sink.out_dir, set_aside_damaged=set_aside_damaged,
        salvage=lambda: salvage(sink, source), results=sink.results_path,
    )  # fmt: skip


def salvage(sink: ResultSink, source: Source) -> int:
    """Rows results.parquet holds that no intact part does (a damaged part's, set aside):
    written as a new part, so they are not paid for again. results.parquet is used only
    when it reads whole with its checksums."""
    results = sink.results_path
    if not results.exists() or parts.damage(results) is not None:
        return 0
    done = [parts.read_part(p, [ROW_INDEX]).column(0) for p in sink.part_files()]
    done_rows = pl.Series(ROW_INDEX, pa.chunked_array(done, pa.int64()) if done else [])
    table = pl.from_arrow(parts.read_part(results))
    assert isinstance(table, pl.DataFrame)
    ids = source.id_positions()
    found = table.join(ids, on=source.id_column, how="inner").filter(
        ~pl.col(ROW_INDEX).is_in(done_rows.implode())
    )
    if found.is_empty():
        return 0
    arrow = found.to_arrow().select(sink.part_schema.names).cast(sink.part_schema)
    final = sink.parts_dir / part_name(sink.next_part_number())
    parts.write_part(final, lambda path: parts.write_parquet(arrow, path))
    return found.height


def set_aside(output: Path) -> Path | None:
    """--fresh: move earlier results to a dated name beside them. Paid work is never deleted."""
    if not output.exists() or not any(output.iterdir()):
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = output.with_name(f"{output.name}.old-{stamp}")
    counter = 1
    while target.exists():
        counter += 1
        target = output.with_name(f"{output.name}.old-{stamp}-{counter}")
    os.replace(output, target)
    return target


def api_key_from_env(name: str) -> str:
    """The key, refused when shorter than MIN_SECRET: too short to scrub from what a
    server sends back without mangling answers (send.scrub), and no real key is."""
    for candidate in dict.fromkeys((name, "ANTHROPIC_API_KEY")):
        key = os.environ.get(candidate, "").strip()
        if key and len(key) < MIN_SECRET:  # its length only: the key itself is never said
            raise UsageError(
                f"the API key in ${candidate} is {len(key)} character(s): a real key has "
                f"{MIN_SECRET} or more; set the real key, or use --simulate"
            )
        if key:
            return key
    raise UsageError(
        f"no API key: set the environment variable {name} (or ANTHROPIC_API_KEY), or use --simulate"
    )


def _arrow_type(schema: pl.Schema, column: str) -> pa.DataType:
    return pl.DataFrame(schema={column: schema[column]}).to_arrow().schema.field(0).type
