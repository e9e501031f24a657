"""The HTML report's summary card: its figures as data (`summarize`: the job, its models,
rows by outcome, the exact cost, as Decimal sums of the cost column, the cost per 1,000
answered rows, the projected total, the run's time span, the price tables, what caching and
the batch tier saved) and the card drawn from them (`summary_card`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_HALF_UP, Context, Decimal
from typing import Any

import polars as pl

from pipeline.reports.accuracy import Accuracy
from pipeline.reports.charts import esc
from pipeline.reports.savings import batch_rows, cache_rows, exact_sum

QUOTIENT = Context(prec=12)  # a mean or a projection: far more digits than the page shows


@dataclass(frozen=True)
class Summary:
    job: str | None
    models: tuple[tuple[str, int], ...]  # (model, rows), most rows first
    rows: int  # in results.parquet
    ok: int
    error: int
    other: int  # another status
    not_done: int  # input rows without an outcome yet
    cost: Decimal | None  # exact; None when no row has a cost
    unpriced: int  # answered rows without a cost (a model with no price)
    mean_cost: Decimal | None  # a row answered, over the priced answered rows
    first: datetime | None  # the first and last row finished
    last: datetime | None
    prices: tuple[str, ...]  # price table versions
    cache_saved: Decimal | None
    cached_rows: int  # rows with cache tokens
    batch_saved: Decimal | None
    batch_rows: int

    @property
    def per_thousand(self) -> Decimal | None:
        return None if self.mean_cost is None else self.mean_cost * 1000

    @property
    def projected(self) -> Decimal | None:
        """The total once the rows not done are answered at the mean cost a row; None when
        rows are not done and no answered row has a cost to project from."""
        if self.mean_cost is None:
            return None if self.not_done else self.cost
        return (self.cost or Decimal(0)) + QUOTIENT.multiply(self.mean_cost, self.not_done)


def summarize(
    results: pl.DataFrame,
    record: dict[str, Any],
    not_done: int,
    cache: pl.Series,
    batch: pl.Series,
) -> Summary:
    """`cache`, `batch`: each row's saving (`cache_savings`, `batch_savings`)."""
    status = results["status"]
    ok = int((status == "ok").sum())
    error = int((status == "error").sum())
    answered = results.filter((pl.col("status") == "ok") & pl.col("cost_usd").is_not_null())
    answered_cost = exact_sum(answered["cost_usd"])
    models = results["model"].drop_nulls().value_counts(sort=True, name="n").rows()
    times = results["finished_at"].drop_nulls()
    unpriced = int(((status == "ok") & results["cost_usd"].is_null()).sum())
    job = record.get("job")
    return Summary(
        job=job if isinstance(job, str) else None,
        models=tuple((str(m), int(n)) for m, n in models),
        rows=results.height,
        ok=ok,
        error=error,
        other=results.height - ok - error,
        not_done=not_done,
        cost=_cost(results, unpriced),
        unpriced=unpriced,
        mean_cost=None
        if answered_cost is None
        else QUOTIENT.divide(answered_cost, answered.height),
        first=times.min() if len(times) else None,  # type: ignore[arg-type]
        last=times.max() if len(times) else None,  # type: ignore[arg-type]
        prices=tuple(results["price_table_version"].drop_nulls().unique().sort()),
        cache_saved=exact_sum(cache),
        cached_rows=int(results.select(cache_rows()).to_series().sum()),
        batch_saved=exact_sum(batch),
        batch_rows=int(batch_rows(results).sum()),
    )


def _cost(results: pl.DataFrame, unpriced: int) -> Decimal | None:
    """The exact total; 0 when no row was answered, None when no answered row is priced."""
    total = exact_sum(results["cost_usd"])
    return Decimal(0) if total is None and not unpriced else total


def money(value: Decimal, places: int | None = None) -> str:
    """$ and the exact digits (thousands separated), or rounded half up to `places`. Exact
    is up to 12 decimal places, more than any price table's cost has: a sum of noisy floats
    (3.0000000000000004e-05) shows as what was meant."""
    value = value.quantize(Decimal(1).scaleb(-(12 if places is None else places)), ROUND_HALF_UP)
    digits = format(abs(value).normalize(), ",f") if places is None else f"{abs(value):,}"
    return ("\u2212$" if value < 0 else "$") + digits


def derived(value: Decimal) -> str:
    """Money that is a quotient (a mean, a projection): six decimals below $100, else two."""
    return money(value, 2 if abs(value) >= 100 else 6)


def summary_card(
    s: Summary, title: str, figures: Accuracy | None, job: Sequence[tuple[str, str]] = ()
) -> str:
    """The card at the top: the job, figure tiles, then facts and savings; `job`: what was
    run (job_card.job_facts), so two variants' pages can be told apart."""
    tiles = _tiles(s, figures)
    facts = [
        ("Models", ", ".join(f"{esc(m)} ({n:,} rows)" for m, n in s.models) or "none"),
        ("Time span", esc(_span(s.first, s.last))),
        ("Prices", esc(", ".join(s.prices) or "none")),
        ("Savings", _savings(s)),
        *((name.capitalize(), esc(text)) for name, text in job if name not in ("job", "model")),
    ]
    return (
        f'<section class="card summary"><div class="eyebrow">Job report</div>'
        f'<h1>{esc(s.job or title)}</h1><p class="sub">{esc(title)}</p>'
        f'<div class="tiles">{"".join(tiles)}</div><dl class="facts">'
        + "".join(f"<div><dt>{name}</dt><dd>{text}</dd></div>" for name, text in facts)
        + "</dl></section>"
    )


def _tiles(s: Summary, figures: Accuracy | None) -> list[str]:
    total = s.rows + s.not_done
    bar = "".join(
        f'<span class="{name}" style="width:{100 * n / total:.2f}%"></span>'
        for name, n in (("ok", s.ok), ("error", s.error), ("todo", s.not_done))
        if total and n
    )
    tiles = [
        _tile(
            "Rows",
            f"{total:,}",
            f"{s.ok:,} ok \u00b7 {s.error:,} error \u00b7 {s.not_done:,} not done"
            + (f" \u00b7 {s.other:,} other" if s.other else ""),
            f'<div class="progress">{bar}</div>',
        ),
        _tile("Total cost", "unknown" if s.cost is None else money(s.cost), _cost_note(s)),
    ]
    if s.projected is not None and s.not_done:
        tiles.append(_tile("Projected total", derived(s.projected), "at the mean cost a row"))
    if figures is not None:
        low, high = figures.interval
        tiles.append(
            _tile(
                "Accuracy",
                f"{figures.accuracy:.1%}",
                f"95% interval {low:.1%} \u2013 {high:.1%} \u00b7 {figures.rows:,} gold labels",
            )
        )
    return tiles


def _tile(name: str, value: str, note: str, extra: str = "") -> str:
    return (
        f'<div class="tile"><div class="tile-name">{esc(name)}</div>'
        f'<div class="tile-value">{esc(value)}</div>{extra}'
        f'<div class="tile-note">{esc(note)}</div></div>'
    )


def _cost_note(s: Summary) -> str:
    notes = [] if s.per_thousand is None else [f"{derived(s.per_thousand)} per 1,000 answered rows"]
    if s.unpriced:
        notes.append(f"{s.unpriced:,} rows without a price not counted")
    return " \u00b7 ".join(notes) or "no answered row"


def _savings(s: Summary) -> str:
    """What caching and the batch tier saved, where they did (exact sums)."""
    parts = []
    if s.cached_rows or s.cache_saved:
        if s.cache_saved is None:
            text = "saved by caching: unknown (no priced row)"
        else:
            text = f"saved by caching: {money(s.cache_saved).replace(chr(0x2212), '-')}"
            text += " (negative: the cache writes cost more than their reads saved)" * (
                s.cache_saved < 0
            )
        parts.append(f'<span class="saved">{esc(text)}</span>' + _share(s.cache_saved, s.cost))
    if s.batch_rows:
        saved = "unknown" if s.batch_saved is None else money(s.batch_saved)
        parts.append(
            f'<span class="saved-batch">saved by the batch tier: {esc(saved)}</span> '
            f"({s.batch_rows:,} rows at half price){_share(s.batch_saved, s.cost)}"
        )
    return " \u00b7 ".join(parts) or "none: no row read the cache or went through a batch"


def _share(saved: Decimal | None, cost: Decimal | None) -> str:
    """What a saving is of the cost without it: ' (88% less than without)'."""
    if saved is None or cost is None or saved <= 0:
        return ""
    return f" ({saved / (saved + cost):.0%} less than without)"


def _span(first: datetime | None, last: datetime | None) -> str:
    if first is None or last is None:
        return "unknown"
    end = last.strftime("%H:%M:%S" if first.date() == last.date() else "%Y-%m-%d %H:%M:%S")
    return f"{first:%Y-%m-%d %H:%M:%S} \u2192 {end} UTC ({_duration(last - first)})"


def _duration(delta: Any) -> str:
    seconds = round(delta.total_seconds())
    for unit, size, sub, sub_size in (("d", 86400, "h", 3600), ("h", 3600, "min", 60)):
        if seconds >= size:
            return f"{seconds // size} {unit} {seconds % size // sub_size} {sub}"
    if seconds >= 60:
        return f"{seconds // 60} min {seconds % 60} s"
    return f"{delta.total_seconds():.1f} s" if seconds < 10 else f"{seconds} s"
