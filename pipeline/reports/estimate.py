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
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Any

import polars as pl

from pipeline.api import run_job
from pipeline.batch.book import uncollected
from pipeline.cache.prefix import CacheMarker, CachePlan
from pipeline.input.render import RequestRenderer
from pipeline.input.source import open_source
from pipeline.job.model import Job
from pipeline.job.template import Unsendable
from pipeline.pricing import BATCH_DISCOUNT, MILLION, Price, PriceTable, load_price_table
from pipeline.providers.anthropic import estimate_input_tokens
from pipeline.reports.estimate_batches import batch_lines
from pipeline.reports.report import load_results
from pipeline.reports.status import finished
from pipeline.run.plan import api_key_from_env
from pipeline.schema import ROW_INDEX
from pipeline.send.token_count import TokenCounter
from pipeline.store import checkpoint
from pipeline.store.output_dir import check_output_dir

Z95 = 1.96


@dataclass
class Totals:
    rows: int = 0
    input_tokens: int = 0
    output_max: int = 0
    cost_min: Decimal = Decimal(0)
    cost_max: Decimal = Decimal(0)
    unpriced: set[str] = field(default_factory=set)
    rows_by_model: dict[str, int] = field(default_factory=dict)  # each model's rows to send

    def add(
        self, body: dict[str, Any], prices: PriceTable, tokens: int | None = None
    ) -> tuple[int, Decimal]:
        """Count one request (its input tokens: counted by the API, else estimated here);
        its input tokens and their cost."""
        if tokens is None:
            tokens = estimate_input_tokens(body)  # of the Messages body: any format
        most = int(body["max_tokens"])
        self.rows += 1
        self.input_tokens += tokens
        self.output_max += most
        model = str(body["model"])
        self.rows_by_model[model] = self.rows_by_model.get(model, 0) + 1
        price = prices.lookup(model)
        if price is None:
            self.unpriced.add(str(body["model"]))
            return tokens, Decimal(0)
        input_cost = tokens * price.input / MILLION
        self.cost_min += input_cost
        self.cost_max += input_cost + most * price.output / MILLION
        return tokens, input_cost


@dataclass
class Pilot:
    rows: int
    cost_usd: float
    output_mean: float
    output_p50: float
    output_p95: float
    projected_output: tuple[float, float, float]  # low, mid, high for the rows left
    projected_cost: tuple[float, float, float]  # the whole job, pilot included


def estimate(job: Job, *, pilot: int = 0, simulate: bool = False, **run_options: Any) -> str:
    """The estimate as text. `run_options` (base_url, api_key) reach the API for the pilot
    and count_tokens; `simulate` points both at a simulator started for the purpose."""
    with contextlib.ExitStack() as stack:
        if simulate:
            from pipeline.simulator.process import SIMULATED_KEY, simulated_api

            run_options = {
                **run_options,
                "base_url": stack.enter_context(simulated_api()),
                "api_key": run_options.get("api_key") or SIMULATED_KEY,
            }
        return _estimate(job, pilot, run_options)


def _estimate(job: Job, pilot: int, run_options: dict[str, Any]) -> str:
    check_output_dir(job)  # as a run would: the pilot writes there, the count reads it
    prices = load_price_table().with_overrides(job.pricing)
    source = open_source(job.input, job.id_column)
    renderer = RequestRenderer(job.request, job.prompt, job.system, job.overrides)
    change = _job_change(job, prices)  # refused as the run would refuse it
    done = pl.Series([], dtype=pl.Int64)
    if job.output.exists() and change is None:  # a changed job starts over: none done
        done = finished(job.output)[ROW_INDEX]
    sent = uncollected(job.output, done=set(done.to_list()))
    in_batches = pl.Series(ROW_INDEX, sent.rows, pl.Int64)
    columns = [*job.template_columns(), *job.overrides.values()]
    counter = _counter(job, run_options) if job.count_tokens else None
    to_send = source.batches(columns, skip=pl.concat([done, in_batches]))
    totals, unsendable, inputs = _tally(to_send, renderer, counter, prices)
    lines = _describe(job, source.total_rows, len(done), unsendable, totals)
    lines[5:5] = _cache_lines(job, totals, prices)  # after the cost lines
    if sent.rows:  # the same rendering, count and prices as the rows to send: one basis
        bought, _, _ = _tally(source.batches(columns, only=in_batches), renderer, counter, prices)
        lines[1:1] = batch_lines(job, sent, bought)
    if change is not None:  # after the lines placed by index
        lines.insert(1, _start_over_line(change))
    if pilot:
        sample = sorted(random.Random(0).sample(sorted(inputs), min(pilot, len(inputs))))
        lines += _pilot_lines(_run_pilot(job, sample, totals, inputs, run_options))
    return "\n".join(lines) + "\n"


def _job_change(job: Job, prices: PriceTable) -> checkpoint.Change | None:
    """The run's own check of the output directory against the job (read only)."""
    if not job.output.exists():
        return None
    settings = checkpoint.fingerprint(job, prices.version)
    extract = checkpoint.labelling(job)
    return checkpoint.check_job_change(job.output, settings, extract, input_path=job.input)


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
    batch_min, batch_max = t.cost_min * BATCH_DISCOUNT, t.cost_max * BATCH_DISCOUNT
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
        f"cost online    ${t.cost_min:,.4f} .. ${t.cost_max:,.4f}",
        f"cost batch     ${batch_min:,.4f} .. ${batch_max:,.4f} (the batch tier, 50% off)",
        f"time           {_duration(job, t)}",
        f"time batch     {_batches(job, t.rows)}: most batches end within 1 hour; at most 24 h",
    ]
    if t.unpriced:
        lines.append(f"unpriced       {', '.join(sorted(t.unpriced))}: not in the costs above")
    return lines


@dataclass(frozen=True)
class CacheEstimate:
    """What `cache = "auto"` would do to the rows to send: each model's plan, and the
    online cost it takes off (negative: the writes cost more than the reads save)."""

    plans: dict[str, CachePlan]  # model -> its plan, as the run would make it
    saving: Decimal  # USD, exact
    why_ttl: str


def cache_estimate(job: Job, t: Totals, prices: PriceTable) -> CacheEstimate:
    """Each model's plan (a `model` override gives each its own, as in a run), and the
    saving: per cached model, one write of the prefix at the TTL's price and a read by
    every other row, instead of the input price on those tokens of every row."""
    marker = CacheMarker(  # the run's own plans: the same prefix, TTL and pays-or-not
        job, prices, batch=job.api.mode == "batch", rows=t.rows, say=lambda _: None
    )
    ttl, why = marker.ttl, marker.why
    plans: dict[str, CachePlan] = {}
    saving = Decimal(0)
    for model, rows in sorted(t.rows_by_model.items()):
        price = prices.lookup(model)
        plan = marker.plan_for(model)
        plans[model] = plan
        if plan.active and price is not None and rows:
            write = _write_price(price, ttl)
            uncached = rows * price.input
            cached = write + (rows - 1) * price.cache_read
            saving += plan.tokens * (uncached - cached) / MILLION
    return CacheEstimate(plans, saving, why)


def _write_price(price: Price, ttl: str) -> Decimal:
    return price.cache_write_1h if ttl == "1h" else price.cache_write_5m


def _cache_lines(job: Job, t: Totals, prices: PriceTable) -> list[str]:
    """`cache`, `cost cached` and `break-even` lines (cache = "auto"); else one line when
    `auto` would cache a prefix that pays."""
    if job.api.format != "anthropic":
        if job.cache != "auto":
            return []
        return ['cache          cache = "auto": cache_control is marked in the anthropic '
                "format only: nothing cached"]  # fmt: skip
    found = cache_estimate(job, t, prices)
    active = [plan for plan in found.plans.values() if plan.active]
    low, high = t.cost_min - found.saving, t.cost_max - found.saving
    if job.cache != "auto":
        if not active or found.saving <= 0:
            return []
        main = found.plans.get(job.model)
        tokens = (main if main is not None and main.active else active[0]).tokens
        return [
            f'cache          cache = "auto" would cache ~{tokens:,} tokens: cost ${low:,.4f} .. '
            f"${high:,.4f} instead of ${t.cost_min:,.4f} .. ${t.cost_max:,.4f}"
        ]
    reasons = dict.fromkeys(  # one line each, in model order, said once
        plan.reason + (f" ({found.why_ttl})" if plan.active else "")
        for plan in found.plans.values()
    )
    lines = [f"cache          {reason}" for reason in reasons] or [
        "cache          no rows to send: nothing to cache"
    ]
    if active:
        ttl = active[0].ttl
        batch = (
            f"; batch tier ${low * BATCH_DISCOUNT:,.4f} .. ${high * BATCH_DISCOUNT:,.4f}, "
            "caching there best effort"
            if job.api.mode == "batch"
            else ""
        )
        lines.append(
            f"cost cached    ${low:,.4f} .. ${high:,.4f} (online; one {ttl} write of the "
            f"shared prefix, every other row reads it{batch})"
        )
    price = prices.lookup(job.model) or next(
        (p for m in found.plans if (p := prices.lookup(m)) is not None), None
    )
    if price is not None:
        lines += _break_even(price)
    return lines


def _break_even(price: Price) -> list[str]:
    """The write and read prices as multiples of the input price, and the row from which
    one write and reads by every other row cost less than the input price on every row."""
    if price.input <= 0:
        return []

    def times(amount: Decimal) -> str:
        return _plain((amount / price.input).quantize(Decimal("0.0001")))

    five, hour = break_even_rows(price, "5m"), break_even_rows(price, "1h")
    pays_from = (
        f"caching pays from the {_ordinal(five)} row (5m) / {_ordinal(hour)} row (1h)"
        if five is not None and hour is not None
        else "caching never pays (a read costs as much as the input)"
    )
    return [
        f"break-even     a 5m write costs {times(price.cache_write_5m)}x input, a 1h write "
        f"{times(price.cache_write_1h)}x; each read {times(price.cache_read)}x: {pays_from}"
    ]


def break_even_rows(price: Price, ttl: str) -> int | None:
    """The fewest rows n for which write + (n - 1) x read < n x input (None: never)."""
    gain = price.input - price.cache_read  # what each row's read saves
    if gain <= 0:
        return None
    return max(1, int((_write_price(price, ttl) - price.cache_read) // gain) + 1)


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n:,}{suffix}"


def _plain(value: Decimal) -> str:
    """A Decimal without trailing zeros or an exponent: 1.25, 2, 0.1."""
    return format(value.normalize(), "f")


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
    return [
        f"pilot          {p.rows:,} rows sent for real, cost ${p.cost_usd:,.4f}; output tokens "
        f"a row: mean {p.output_mean:,.1f}, p50 {p.output_p50:,.0f}, p95 {p.output_p95:,.0f}",
        f"projected      output tokens {out_mid:,.0f} for the rest (95%: {out_low:,.0f} .. "
        f"{out_high:,.0f})",
        f"projected cost ${mid:,.4f} for the whole job, pilot included (95%: ${low:,.4f} .. "
        f"${high:,.4f}); batch tier ${mid * float(BATCH_DISCOUNT):,.4f}",
    ]
