"""`pipeline estimate`: what a job will cost and take, before spending on it.

Every row still to send is rendered and its input tokens estimated locally (~4 bytes a
token); output tokens range from 0 to each row's max_tokens. `--pilot N` sends N sampled
rows for real (kept in the output directory: the main run does not pay for them again),
then extrapolates their output tokens and cost to the rest with a 95% interval. Rows in
batches sent and not yet collected (OUTPUT/batches/) are bought already: not to send, on a
line of their own at batch prices (estimate_batches); `pipeline run JOB --batch` collects them.
The output directory gets the run's own check (checkpoint.check_job_change): a job changed
since its rows were answered is refused with the run's line; one whose earlier runs answered
no row is estimated as the run will do it, starting over.

With `cache = "auto"` it also prints the plan the run would follow (cache.prefix) and the
online cost with the shared prefix written once and read by every other row; without it, one
line says what `auto` would save when the prefix qualifies.
"""

from __future__ import annotations

import contextlib
import math
import random
from collections.abc import Iterable
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Any

import polars as pl

from pipeline.api import run_job
from pipeline.errors import UsageError
from pipeline.input.render import RequestRenderer
from pipeline.input.sample import Sample, sampled_rows
from pipeline.input.source import open_source
from pipeline.job.model import Job
from pipeline.job.template import Unsendable
from pipeline.pricing import BATCH_DISCOUNT, PriceTable, load_price_table
from pipeline.reports.estimate_batches import batch_lines
from pipeline.reports.estimate_cache import cache_lines
from pipeline.reports.estimate_totals import Totals as Totals
from pipeline.reports.report import load_results
from pipeline.reports.status import finished
from pipeline.run.plan import api_key_from_env
from pipeline.schema import ROW_INDEX
from pipeline.send.token_count import TokenCounter
from pipeline.store import checkpoint
from pipeline.store.book import uncollected
from pipeline.store.output_dir import check_output_dir

Z95 = 1.96


@dataclass
class Pilot:
    rows: int
    cost_usd: float
    output_mean: float
    output_p50: float
    output_p95: float
    projected_output: tuple[float, float, float]  # low, mid, high for the rows left
    projected_cost: tuple[float, float, float]  # the whole job, pilot included
    priced: bool = True  # every answered pilot row has a cost (its model has a price)


def estimate(
    job: Job,
    *,
    pilot: int = 0,
    simulate: bool = False,
    limit: int | None = None,
    sample: Sample | None = None,
    seed: int = 0,
    **run_options: Any,
) -> str:
    """The estimate as text, of the rows a run with the same `limit` / `sample` sends.
    `run_options` (base_url, api_key) reach the API for the pilot and count_tokens;
    `simulate` points both at a simulator started for the purpose. A [cascade] job:
    `estimate_cascade` (`seed` chooses its calibration rows, as the run's --seed)."""
    if job.cascade is not None:
        return _cascade(job, pilot, limit, sample, seed)
    with contextlib.ExitStack() as stack:
        if simulate:
            from pipeline.simulator.process import SIMULATED_KEY, simulated_api

            run_options = {
                **run_options,
                "base_url": stack.enter_context(simulated_api()),
                "api_key": run_options.get("api_key") or SIMULATED_KEY,
            }
        return _estimate(job, pilot, run_options, limit, sample)


def _estimate(
    job: Job,
    pilot: int,
    run_options: dict[str, Any],
    limit: int | None = None,
    sample: Sample | None = None,
) -> str:
    check_output_dir(job)  # as a run would: the pilot writes there, the count reads it
    prices = load_price_table().with_overrides(job.pricing)
    source = open_source(job.input, job.id_column, limit=limit)
    only = sampled_rows(source, sample, job.gold_column) if sample else None
    renderer = RequestRenderer(job.request, job.prompt, job.system, job.overrides, job.prompt_after)
    change = _job_change(job, prices)  # refused as the run would refuse it
    done = pl.Series([], dtype=pl.Int64)
    if job.output.exists() and change is None:  # a changed job starts over: none done
        done = finished(job.output)[ROW_INDEX]
    sent = uncollected(job.output, done=set(done.to_list()))
    in_batches = pl.Series(ROW_INDEX, sent.rows, pl.Int64)
    columns = [*job.template_columns(), *job.overrides.values()]
    counter = _counter(job, run_options) if job.count_tokens else None
    to_send = source.batches(columns, skip=pl.concat([done, in_batches]), only=only)
    totals, unsendable, inputs = _tally(to_send, renderer, counter, prices)
    lines = _describe(job, source.total_rows, len(done), unsendable, totals)
    lines[5:5] = cache_lines(job, totals, prices)  # after the cost lines
    if sent.rows:  # the same rendering, count and prices as the rows to send: one basis
        bought, _, _ = _tally(source.batches(columns, only=in_batches), renderer, counter, prices)
        lines[1:1] = batch_lines(job, sent, bought)
    if change is not None:  # after the lines placed by index
        lines.insert(1, _start_over_line(change))
    if pilot:
        rows = sorted(random.Random(0).sample(sorted(inputs), min(pilot, len(inputs))))
        lines += _pilot_lines(_run_pilot(job, rows, totals, inputs, run_options))
    return "\n".join(lines) + "\n"


def _cascade(job: Job, pilot: int, limit: int | None, sample: Sample | None, seed: int) -> str:
    from pipeline.cascade.run import Scope
    from pipeline.reports.estimate_cascade import cascade_estimate

    if pilot:
        raise UsageError("--pilot: not for a [cascade] job; its calibration rows are its pilot")
    check_output_dir(job)
    size = sample.size if sample else None
    return cascade_estimate(job, Scope(limit, size, sample.seed if sample else seed))


def _job_change(job: Job, prices: PriceTable) -> checkpoint.Change | None:
    """The run's own check of the output directory against the job (read only)."""
    if not job.output.exists():
        return None
    settings = checkpoint.fingerprint(job, prices.version)
    extract = checkpoint.labelling(job)
    return checkpoint.check_job_change(
        job.output, settings, extract, input_path=job.input, url=job.output_url
    )


def _start_over_line(change: checkpoint.Change) -> str:
    return (
        f"earlier run    {change.name} changed since, and it answered no row: the run "
        "starts over (its error rows moved aside, kept)"
    )


def _tally(
    batches: Iterable[list[dict[str, Any]]],
    renderer: RequestRenderer,
    counter: TokenCounter | None,
    prices: PriceTable,
) -> tuple[Totals, int, dict[int, tuple[int, Decimal]]]:
    """Render, count and price rows: their totals, how many are not sendable, and each
    row's estimated input tokens and cost by position."""
    totals, unsendable = Totals(), 0
    inputs: dict[int, tuple[int, Decimal]] = {}
    for batch in batches:
        rendered = []
        for row in batch:
            try:
                rendered.append((row[ROW_INDEX], renderer.render(row)))
            except Unsendable:  # a null cell, a bad override, an empty prompt: never sent
                unsendable += 1
        counts = counter.count([b for _, b in rendered]) if counter else [None] * len(rendered)
        for (position, body), tokens in zip(rendered, counts, strict=True):
            inputs[position] = totals.add(body, prices, tokens)
    return totals, unsendable, inputs


def _counter(job: Job, options: dict[str, Any]) -> TokenCounter:
    key = options.get("api_key") or api_key_from_env(job.api.api_key_env)
    return TokenCounter(job, options.get("base_url") or job.api.base_url, key)


def _describe(job: Job, total: int, done: int, unsendable: int, t: Totals) -> list[str]:
    lines = [
        f"{job.name}: {total:,} rows, {done:,} done, {t.rows:,} to send"
        + (f", {unsendable:,} not sendable (bad or empty cells)" if unsendable else ""),
        f"input tokens   {t.input_tokens:,} ("
        + (
            "counted by the API's count_tokens)"
            if job.count_tokens
            else "local estimate, about 4 bytes a token)"
        ),
        f"output tokens  0 .. {t.output_max:,} (0 to max_tokens a row)",
        f"cost online    {t.cost_text()}",
        f"cost batch     {t.cost_text(BATCH_DISCOUNT)} (the batch tier, 50% off)",
        f"time           {_duration(job, t)}",
        f"time batch     {_batches(job, t.rows)}: most batches end within 1 hour; at most 24 h",
    ]
    if t.unpriced:
        lines.append(
            f"unpriced       {', '.join(sorted(t.unpriced))}: no price, not in the costs "
            "above (add it under [pricing] in the job file)"
        )
    return lines


def _batches(job: Job, rows: int) -> str:
    count = -(-rows // job.batch.max_requests) if rows else 0
    mode = " (this job's mode)" if job.api.mode == "batch" else ""
    return (
        f"{count:,} batch{'es' if count != 1 else ''} of at most {job.batch.max_requests:,}{mode}"
    )


def _duration(job: Job, t: Totals) -> str:
    limits = job.limits
    bounds = {
        "requests_per_minute": (t.rows, limits.requests_per_minute),
        "input_tokens_per_minute": (t.input_tokens, limits.input_tokens_per_minute),
        "output_tokens_per_minute": (t.output_max, limits.output_tokens_per_minute),
        "tokens_per_minute": (t.input_tokens + t.output_max, limits.tokens_per_minute),
    }
    minutes = {name: amount / limit for name, (amount, limit) in bounds.items() if limit}
    if not minutes:
        return "depends on the API's limits (none set in [limits]; learned during the run)"
    name = max(minutes, key=lambda k: minutes[k])
    return f"at least {_clock(minutes[name] * 60)} at the job's limits ({name} binds)"


def _clock(seconds: float) -> str:
    seconds = round(seconds)
    return (
        f"{seconds // 3600}h {seconds % 3600 // 60:02d}m"
        if seconds >= 3600
        else (f"{seconds // 60}m {seconds % 60:02d}s")
    )


def _run_pilot(
    job: Job,
    sample: list[int],
    totals: Totals,
    inputs: dict[int, tuple[int, Decimal]],
    options: dict[str, Any],
) -> Pilot:
    """Send the sample; extrapolate its output to the rest, whose input is known already."""
    online = replace(job, api=replace(job.api, mode="online"))  # a pilot's answers now
    summary = run_job(online, only_rows=sample, show_progress=False, **options)
    results = load_results(job.output)
    position_of = dict(zip(_ids_of(job, sample).to_list(), sample, strict=True))
    id_column = results.columns[0]
    rows = results.filter(pl.col(id_column).is_in(list(position_of)) & (pl.col("status") == "ok"))
    n, left = max(rows.height, 1), totals.rows - len(sample)
    # the local estimate of the input's cost, calibrated by what the answered pilot rows'
    # input really cost (input, cache writes and cache reads each at their own price)
    estimated = float(sum(inputs[position_of[i]][1] for i in rows[id_column])) or 1.0
    paid = sum(
        _number(rows[c].fill_null(0.0).sum())
        for c in ("input_cost_usd", "cache_write_cost_usd", "cache_read_cost_usd")
    )
    rest_input = float(totals.cost_min - sum(inputs[p][1] for p in sample)) * paid / estimated
    output = rows["output_tokens"].cast(pl.Float64)
    out_cost = rows["output_cost_usd"].fill_null(0.0)
    spread = math.sqrt(left + left * left / n)  # future rows' spread + the mean's uncertainty
    mean_out, sd_out = _number(output.mean()), _number(output.std())
    mid = summary.cost_usd + rest_input + left * _number(out_cost.mean())
    half = Z95 * _number(out_cost.std()) * spread
    return Pilot(
        rows=rows.height, cost_usd=summary.cost_usd, output_mean=mean_out,
        output_p50=_number(output.quantile(0.5)), output_p95=_number(output.quantile(0.95)),
        projected_output=(max(0.0, left * mean_out - Z95 * sd_out * spread), left * mean_out,
                          left * mean_out + Z95 * sd_out * spread),
        projected_cost=(mid - half, mid, mid + half),
        priced=rows["cost_usd"].null_count() == 0 and not totals.unpriced,
    )  # fmt: skip


def _number(value: object) -> float:
    """A polars aggregate as a float: None (no rows) and NaN count as 0."""
    return float(value) if isinstance(value, int | float) and value == value else 0.0


def _ids_of(job: Job, positions: list[int]) -> pl.Series:
    source = open_source(job.input, job.id_column)
    rows = [r for batch in source.batches([], only=pl.Series(positions)) for r in batch]
    return pl.Series([r[source.id_column] for r in rows])


def _pilot_lines(p: Pilot) -> list[str]:
    low, mid, high = p.projected_cost
    out_low, out_mid, out_high = p.projected_output
    cost = f"${p.cost_usd:,.4f}" if p.priced else "unknown (a model without a price)"
    return [
        f"pilot          {p.rows:,} rows sent for real, cost {cost}; output tokens "
        f"a row: mean {p.output_mean:,.1f}, p50 {p.output_p50:,.0f}, p95 {p.output_p95:,.0f}",
        f"projected      output tokens {out_mid:,.0f} for the rest (95%: {out_low:,.0f} .. "
        f"{out_high:,.0f})",
        f"projected cost ${mid:,.4f} for the whole job, pilot included (95%: ${low:,.4f} .. "
        f"${high:,.4f}); batch tier ${mid * float(BATCH_DISCOUNT):,.4f}"
        if p.priced
        else "projected cost unknown: a model of the job has no price (add it under [pricing])",
    ]
