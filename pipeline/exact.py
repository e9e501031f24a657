"""Cost columns as exact decimals. A cost is written to Parquet as a float; the float's
shortest repr is the exact cost (prices and token counts have few digits), so each float
becomes the Decimal of its repr, and sums of them are exact: the one place that rule lives,
for the reports and the cascade's per-row sums."""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal, localcontext

import polars as pl

MAX_SCALE = 30  # decimal places kept of a cost or a saving (any real price needs far fewer)


def decimal_places(value: Decimal) -> int:
    """The decimal places a value needs to be written exactly: 0.0000425 -> 7, 100 -> 0."""
    exponent = value.normalize().as_tuple().exponent
    return -exponent if isinstance(exponent, int) and exponent < 0 else 0


def decimal_column(name: str, values: pl.Series) -> pl.Series:
    """A float (or Decimal) column as an exact Decimal column: each float as the Decimal of
    its shortest repr (distinct values converted once)."""
    if isinstance(values.dtype, pl.Decimal):
        return values.alias(name)
    distinct = values.drop_nulls().unique()
    table = pl.DataFrame(
        [
            distinct.alias("_float"),
            decimal_series("_exact", [Decimal(repr(v)) for v in distinct.to_list()]),
        ]
    )
    joined = (
        values.alias("_float")
        .to_frame()
        .join(table, on="_float", how="left", maintain_order="left")
    )
    return joined["_exact"].alias(name)


def decimal_series(name: str, values: Sequence[Decimal | None]) -> pl.Series:
    """A Decimal column of `values`, its scale the most decimal places any value needs (at
    most MAX_SCALE), so that every value and every sum of them is exact."""
    scale = min(MAX_SCALE, max((decimal_places(v) for v in values if v is not None), default=0))
    quantum = Decimal(1).scaleb(-scale)
    with localcontext(prec=60):
        exact = [None if v is None else v.quantize(quantum) for v in values]
    return pl.Series(name, exact, dtype=pl.Decimal(38, scale))
