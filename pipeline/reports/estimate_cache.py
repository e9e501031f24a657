"""The estimate's cache lines (`cache = "auto"`): the plan the run would follow
(cache.prefix, its own CacheMarker), the online cost with the shared prefix written once
and read by every other row, and the break-even row; without `auto`, one line when it
would pay."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from pipeline.cache.prefix import CacheMarker, CachePlan
from pipeline.job.model import Job
from pipeline.pricing import BATCH_DISCOUNT, MILLION, Price, PriceTable
from pipeline.providers.registry import prompt_cache_formats, provider_for
from pipeline.reports.estimate_totals import Totals


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


def cache_lines(job: Job, t: Totals, prices: PriceTable) -> list[str]:
    """`cache`, `cost cached` and `break-even` lines (cache = "auto"); else one line when
    `auto` would cache a prefix that pays."""
    if not provider_for(job.api.format).supports_prompt_cache:
        if job.cache != "auto":
            return []
        return ['cache          cache = "auto": cache_control is marked in the '
                f"{prompt_cache_formats()} format only: nothing cached"]  # fmt: skip
    found = cache_estimate(job, t, prices)
    active = [plan for plan in found.plans.values() if plan.active]
    if job.cache != "auto":
        if not active or found.saving <= 0:
            return []
        main = found.plans.get(job.model)
        tokens = (main if main is not None and main.active else active[0]).tokens
        return [
            f'cache          cache = "auto" would cache ~{tokens:,} tokens: cost '
            f"{t.cost_text(less=found.saving)} instead of {t.cost_text()}"
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
            f"; batch tier {t.cost_text(BATCH_DISCOUNT, found.saving)}, caching there best effort"
            if job.api.mode == "batch"
            else ""
        )
        lines.append(
            f"cost cached    {t.cost_text(less=found.saving)} (online; one {ttl} write of the "
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
