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
from collections.abc import Callable, Sequence
from decimal import Decimal, localcontext
from typing import Any

import polars as pl

from pipeline.pricing import BATCH_DISCOUNT, MILLION, Price, PriceTable, costs, load_price_table
from pipeline.providers.base import Usage
from pipeline.schema import COST_COLUMNS, TOKEN_COLUMNS, TOKEN_TOTALS

SAVED = "saved_by_caching_usd"
SAVED_BY_BATCH = "saved_by_batch_usd"
MAX_SCALE = 30  # decimal places kept of a saving (any real price needs far fewer)
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
    return _savings(results, prices, SAVED_BY_BATCH, PRICED_TOKENS, _batch_saving)


def exact_sum(values: pl.Series) -> Decimal | None:
    """The exact sum of a float or Decimal column (each float as the Decimal of its shortest
    repr, which for a cost column is the exact cost); None when every value is null."""
    present = values.drop_nulls()
    if present.is_empty():
        return None
    if isinstance(values.dtype, pl.Decimal):
        return sum(present.to_list(), Decimal(0))
    with localcontext(prec=MAX_SCALE + 40):  # far above any sum's digits: no rounding
        return sum((Decimal(repr(v)) for v in present.to_list()), Decimal(0))


def decimal_column(name: str, values: pl.Series) -> pl.Series:
    """A float (or Decimal) column as an exact Decimal column: each float as the Decimal of
    its shortest repr; the scale is the most decimal places any value needs. Distinct values
    are converted once."""
    if isinstance(values.dtype, pl.Decimal):
        return values.alias(name)
    distinct = values.drop_nulls().unique()
    exact = [Decimal(repr(v)) for v in distinct.to_list()]
    scale = min(MAX_SCALE, max((_scale(v) for v in exact), default=0))
    dtype = pl.Decimal(38, scale)
    table = pl.DataFrame(
        [distinct.alias("_float"), pl.Series("_exact", _quantized(exact, scale), dtype=dtype)]
    )
    joined = (
        values.alias("_float")
        .to_frame()
        .join(table, on="_float", how="left", maintain_order="left")
    )
    return joined["_exact"].alias(name)


def _savings(
    results: pl.DataFrame,
    prices: PriceTable | None,
    name: str,
    tokens: tuple[str, ...],
    saving: Saving,
) -> pl.Series:
    """Each row's `saving`, computed once per distinct (model, tier, long context, priced,
    `tokens`) for rows of this price table, and alone (confirmed) for the others."""
    table = prices or load_price_table()
    quiet = PriceTable(table.version, table.prices, table.aliases, warn_to=io.StringIO())
    frame = _frame(results, quiet)
    keys = [*KEY_FLAGS, *tokens]
    ours, others = frame.filter(pl.col("_ours")), frame.filter(~pl.col("_ours"))
    distinct = ours.select(keys).unique()
    with localcontext(prec=60):  # every product here exact
        found = [saving(quiet, *key) for key in distinct.iter_rows()]
        alone = [
            _confirmed(row, quiet, saving(quiet, *(row[k] for k in keys)))
            for row in others.iter_rows(named=True)
        ]
    scale = min(MAX_SCALE, max((_scale(v) for v in (*found, *alone) if v is not None), default=0))
    dtype = pl.Decimal(38, scale)
    priced = distinct.with_columns(pl.Series(name, _quantized(found, scale), dtype=dtype))
    saved = pl.concat(
        [
            ours.join(priced, on=keys, how="left", nulls_equal=True).select("_position", name),
            others.select("_position", pl.Series(name, _quantized(alone, scale), dtype=dtype)),
        ]
    )
    return saved.sort("_position")[name]


def _frame(results: pl.DataFrame, prices: PriceTable) -> pl.DataFrame:
    """The columns a saving reads, nulls as 0 tokens, and its flags: _ours (priced by this
    table), _batch, _priced (has costs), _long (over its model's long context threshold)."""
    columns = ["model", "price_table_version", "batch_id", *TOKEN_COLUMNS, *COST_COLUMNS]
    tier = pl.col("service_tier") if "service_tier" in results.columns else pl.lit(None)
    frame = results.select(
        *(pl.col(c) if c in results.columns else pl.lit(None).alias(c) for c in columns),
        (pl.col("batch_id").is_not_null() | (tier == "batch")).fill_null(False).alias("_batch")
        if "batch_id" in results.columns
        else (tier == "batch").fill_null(False).alias("_batch"),
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


def _online(price: Price, inputs: int, outputs: int, five: int, hour: int, read: int) -> Decimal:
    """The online cost of these tokens at `price`, USD x a million."""
    return (
        inputs * price.input
        + outputs * price.output
        + five * price.cache_write_5m
        + hour * price.cache_write_1h
        + read * price.cache_read
    )


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


def _quantized(values: Sequence[Decimal | None], scale: int) -> list[Decimal | None]:
    quantum = Decimal(1).scaleb(-scale)
    with localcontext(prec=60):
        return [None if v is None else v.quantize(quantum) for v in values]


def _scale(value: Decimal) -> int:
    exponent = value.normalize().as_tuple().exponent
    return -exponent if isinstance(exponent, int) and exponent < 0 else 0
