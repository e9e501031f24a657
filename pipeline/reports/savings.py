"""What caching and batches saved, per row, exact; and exact sums of cost columns.

`saved_by_caching_usd`: what the cache reads saved over the input price, minus the extra
the cache writes cost over it, each row priced by its own model (the built-in price table),
at half that in a batch. `saved_by_batch_usd`: what a batch row's tokens would have cost
online at its model's price, minus what they cost at the batch rate (null: not a batch row).
A row is a batch row when `batch_id` is set (or a `service_tier` column says "batch").

Both are exact: Decimal per row, as a Decimal column whose sums are exact. A row of a model
with no price, or priced by another table whose prices this row's costs do not confirm, has
a null saving and is not counted.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from decimal import Decimal, localcontext
from typing import Any

import polars as pl

from pipeline.exact import MAX_SCALE, decimal_column, decimal_places, decimal_series
from pipeline.pricing import BATCH_DISCOUNT, MILLION, Price, PriceTable, costs, load_price_table
from pipeline.providers.base import Usage
from pipeline.schema import COST_COLUMNS, TOKEN_COLUMNS, TOKEN_TOTALS

SAVED = "saved_by_caching_usd"
SAVED_BY_BATCH = "saved_by_batch_usd"
CACHE_TOKENS = ("cache_read_input_tokens", "cache_creation_5m_tokens", "cache_creation_1h_tokens")
# input, output, 5m writes, 1h writes, reads: every priced token kind, in `_online`'s order
PRICED_TOKENS = ("input_tokens", "output_tokens", *CACHE_TOKENS[1:], CACHE_TOKENS[0])
KEY_FLAGS = ("model", "_batch", "_long", "_priced")

# (price table, model, batch, long, priced, *token counts) -> the row's saving or None
Saving = Callable[..., Decimal | None]


def cache_savings(results: pl.DataFrame, prices: PriceTable | None = None) -> pl.Series:
    """Each row's saving by caching, USD, exact (a Decimal column; null: not known).

    Rows priced by this table save what their model, tier and cache tokens say: each
    distinct combination is computed once. A row priced by another table is computed alone,
    and only when its own cost columns are what this table's prices give."""
    return _savings(results, prices, SAVED, CACHE_TOKENS, _cache_saving)


def batch_savings(results: pl.DataFrame, prices: PriceTable | None = None) -> pl.Series:
    """Each row's saving by the batch rate, USD, exact (a Decimal column; null: not a batch
    row, or not known): its tokens at its model's online price minus at the batch price.
    Rows priced by another table follow the rules of `cache_savings`."""
    return _savings(results, prices, SAVED_BY_BATCH, PRICED_TOKENS, _batch_saving, _by_price)


def exact_sum(values: pl.Series) -> Decimal | None:
    """The exact sum of a float or Decimal column (each float as the Decimal of its shortest
    repr, which for a cost column is the exact cost); None when every value is null."""
    present = values.drop_nulls()
    if present.is_empty():
        return None
    if isinstance(values.dtype, pl.Decimal):
        return sum(present.to_list(), Decimal(0))
    exact = decimal_column("_exact", present)  # each distinct float converted once
    if isinstance(exact.dtype, pl.Decimal) and (exact.dtype.scale or 0) < MAX_SCALE:
        # no value was cut to MAX_SCALE places: polars adds 128-bit integers, exactly, and
        # in a blink where a Decimal a row took seconds at a million rows
        total = exact.sum()
        return total if isinstance(total, Decimal) else Decimal(total)
    with localcontext(prec=MAX_SCALE + 40):  # far above any sum's digits: no rounding
        return sum((Decimal(repr(v)) for v in present.to_list()), Decimal(0))


def batch_rows(results: pl.DataFrame) -> pl.Series:
    """Whether each row was answered at the batch rate: `batch_id` set, or a
    `service_tier` column saying "batch"."""
    return results.with_columns(_batch_flag(results))["_batch"]


def cache_rows() -> pl.Expr:
    """Whether each row read or wrote the cache (its tokens of either kind)."""
    kinds = ("cache_read_input_tokens", "cache_creation_input_tokens")
    return pl.sum_horizontal(pl.col(c).fill_null(0) for c in kinds) > 0


def _batch_flag(results: pl.DataFrame) -> pl.Expr:
    flags = [pl.lit(False)]
    if "batch_id" in results.columns:
        flags.append(pl.col("batch_id").is_not_null())
    if "service_tier" in results.columns:
        flags.append((pl.col("service_tier") == "batch").fill_null(False))
    return pl.any_horizontal(*flags).alias("_batch")


def _savings(
    results: pl.DataFrame,
    prices: PriceTable | None,
    name: str,
    tokens: tuple[str, ...],
    saving: Saving,
    vectorized: Callable[[pl.DataFrame, PriceTable], pl.Series] | None = None,
) -> pl.Series:
    """Each row's `saving`: for rows of this price table by `vectorized`, else once per
    distinct (model, tier, long context, priced, `tokens`); alone (confirmed) for others."""
    table = prices or load_price_table()
    quiet = PriceTable(table.version, table.prices, table.aliases, warn_to=io.StringIO())
    frame = _frame(results, quiet)
    keys = [*KEY_FLAGS, *tokens]
    ours, others = frame.filter(pl.col("_ours")), frame.filter(~pl.col("_ours"))
    with localcontext(prec=60):  # every product here exact
        alone = decimal_series(
            name,
            [
                _confirmed(row, quiet, saving(quiet, *(row[k] for k in keys)))
                for row in others.iter_rows(named=True)
            ],
        )
        mine = vectorized(ours, quiet) if vectorized else _distinct(ours, keys, quiet, saving)
    scales = [s.dtype.scale for s in (alone, mine) if isinstance(s.dtype, pl.Decimal)]
    dtype = pl.Decimal(38, max(scales, default=0))  # one scale for both: an exact cast
    saved = pl.concat(
        [
            ours.select("_position", mine.cast(dtype).alias(name)),
            others.select("_position", alone.cast(dtype)),
        ]
    )
    return saved.sort("_position")[name]


def _distinct(
    frame: pl.DataFrame, keys: list[str], prices: PriceTable, saving: Saving
) -> pl.Series:
    """`saving` of each row of `frame`, computed once per distinct `keys`."""
    distinct = frame.select(keys).unique()
    found = decimal_series("_saving", [saving(prices, *key) for key in distinct.iter_rows()])
    joined = frame.join(
        distinct.with_columns(found), on=keys, how="left", nulls_equal=True, maintain_order="left"
    )
    return joined["_saving"]


def _by_price(frame: pl.DataFrame, prices: PriceTable) -> pl.Series:
    """`_batch_saving` of each row of `frame` (of this table) without a loop over rows:
    per (model, long context) what a token of each kind saves, as integers at one scale,
    times the row's token counts. Exact: integer products, then a Decimal of that scale."""
    batch = pl.col("_batch") & pl.col("_priced")
    units: dict[tuple[str, bool], list[Decimal]] = {}
    for model, long in frame.filter(batch).select("model", "_long").unique().iter_rows():
        if (price := _price(prices, model, long, True)) is not None:
            units[(model, long)] = [p * (1 - BATCH_DISCOUNT) / MILLION for p in _units(price)]
    scale = min(MAX_SCALE, max((decimal_places(u) for us in units.values() for u in us), default=0))
    names = [f"_unit{i}" for i in range(len(PRICED_TOKENS))]
    table = pl.DataFrame(
        [(m, lg, *(int(u.scaleb(scale).to_integral_value()) for u in us))
         for (m, lg), us in units.items()],
        schema={"model": pl.String, "_long": pl.Boolean, **dict.fromkeys(names, pl.Int128)},
        orient="row",
    )  # fmt: skip
    joined = frame.join(table, on=["model", "_long"], how="left", maintain_order="left")
    numerator = pl.sum_horizontal(
        pl.col(t).cast(pl.Int128) * pl.col(u) for t, u in zip(PRICED_TOKENS, names, strict=True)
    )
    value = numerator.cast(pl.Decimal(38, 0)) * pl.lit(
        Decimal(1).scaleb(-scale), pl.Decimal(38, scale)
    )
    known = batch & pl.col(names[0]).is_not_null()
    return joined.select(pl.when(known).then(value).alias("_saving"))["_saving"]


def _frame(results: pl.DataFrame, prices: PriceTable) -> pl.DataFrame:
    """The columns a saving reads, nulls as 0 tokens, and its flags: _ours (priced by this
    table), _batch, _priced (has costs), _long (over its model's long context threshold)."""
    columns = ["model", "price_table_version", "batch_id", *TOKEN_COLUMNS, *COST_COLUMNS]
    frame = results.select(
        *(pl.col(c) if c in results.columns else pl.lit(None).alias(c) for c in columns),
        _batch_flag(results),
    ).with_columns(
        pl.int_range(pl.len(), dtype=pl.Int64).alias("_position"),
        (pl.col("price_table_version") == prices.version).fill_null(False).alias("_ours"),
        pl.col("cost_usd").is_not_null().alias("_priced"),
        *(pl.col(c).fill_null(0).cast(pl.Int64) for c in TOKEN_COLUMNS),
    )
    models = frame["model"].drop_nulls().unique().to_list()
    above = {m: p.long_context_above for m in models if (p := prices.lookup(m)) is not None}
    return frame.with_columns(
        (
            pl.sum_horizontal(TOKEN_TOTALS[0], *TOKEN_TOTALS[2:])
            > pl.col("model").replace_strict(above, default=None, return_dtype=pl.Int64)
        )
        .fill_null(False)
        .alias("_long")
    )


def _price(prices: PriceTable, model: str | None, long: bool, priced: bool) -> Price | None:
    """The price a row was billed at (long context when over it), None when not known."""
    if not priced or model is None:
        return None  # unpriced when it ran, or answered without usage
    price = prices.lookup(model)
    if price is not None and long and price.long_context is not None:
        return price.long_context  # every token of the request, as `pricing.costs` bills it
    return price


def _cache_saving(
    prices: PriceTable,
    model: str | None,
    batch: bool,
    long: bool,
    priced: bool,
    read: int,
    five: int,
    hour: int,
) -> Decimal | None:
    """Reads x (input - read price) - 5m writes x (5m write - input price) - 1h writes x
    (1h write - input price), per million, halved in a batch; None when unknown."""
    if priced and not (read or five or hour):
        return Decimal(0)  # no cache tokens: nothing saved, nothing lost
    price = _price(prices, model, long, priced)
    if price is None:
        return None
    factor = BATCH_DISCOUNT if batch else Decimal(1)
    saved = read * (price.input - price.cache_read) - (
        five * (price.cache_write_5m - price.input) + hour * (price.cache_write_1h - price.input)
    )
    return saved * factor / MILLION


def _batch_saving(
    prices: PriceTable,
    model: str | None,
    batch: bool,
    long: bool,
    priced: bool,
    *tokens: int,
) -> Decimal | None:
    """A batch row's tokens (`PRICED_TOKENS`) at the online price x (1 - the batch
    discount), per million; None when not a batch row or its price is not known."""
    price = _price(prices, model, long, priced) if batch else None
    if price is None:
        return None
    return _online(price, *tokens) * (1 - BATCH_DISCOUNT) / MILLION


def _online(price: Price, *tokens: int) -> Decimal:
    """The online cost of these tokens (`PRICED_TOKENS`) at `price`, USD x a million."""
    return sum((n * p for n, p in zip(tokens, _units(price), strict=True)), Decimal(0))


def _units(price: Price) -> tuple[Decimal, ...]:
    """The price of a token of each kind of `PRICED_TOKENS`, in that order."""
    return price.input, price.output, price.cache_write_5m, price.cache_write_1h, price.cache_read


def _confirmed(row: dict[str, Any], prices: PriceTable, saving: Decimal | None) -> Decimal | None:
    """`saving` of a row priced by another table: only when this table's prices give back
    its cost columns exactly (else None: its prices are not known here)."""
    if saving is None or row["model"] is None:
        return None
    price = prices.lookup(row["model"])
    if price is None:
        return None
    tier = "batch" if row["_batch"] else None
    usage = Usage(**{c: row[c] for c in TOKEN_COLUMNS}, service_tier=tier)
    if costs(price, usage) != {c: row[c] for c in COST_COLUMNS}:
        return None  # another table priced it, differently for this row
    return saving
