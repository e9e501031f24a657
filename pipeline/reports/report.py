"""Cost and usage reports from a job's results.parquet.

`saved_by_caching_usd`: what the cache reads saved over the input price, minus the extra
the cache writes cost over it, each row priced by its own model (the built-in price table),
at half that in a batch (`batch_id` set). Exact: Decimal per row and a Decimal column whose
sums are exact; csv, json and markdown print its exact digits. A row of a model with no
price, or priced by another table whose prices this row's costs do not confirm, has a null
saving and is not counted; a group of such rows only is null.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable, Sequence
from decimal import Decimal, localcontext
from pathlib import Path
from typing import Any

import polars as pl

from pipeline.errors import UsageError
from pipeline.pricing import BATCH_DISCOUNT, MILLION, PriceTable, costs, load_price_table
from pipeline.providers.base import Usage
from pipeline.reports.tables import exact, exact_text, markdown, text_table
from pipeline.schema import COST_COLUMNS, TOKEN_COLUMNS, TOKEN_TOTALS
from pipeline.store.layout import RESULTS_FILE

FORMATS = ("table", "csv", "json", "markdown")
SAVED = "saved_by_caching_usd"
MAX_SCALE = 30  # decimal places kept of a saving (any real price needs far fewer)
CACHE_TOKENS = ("cache_read_input_tokens", "cache_creation_5m_tokens", "cache_creation_1h_tokens")


def load_results(output_dir: Path) -> pl.DataFrame:
    path = output_dir / RESULTS_FILE if output_dir.is_dir() else output_dir
    if not path.exists():
        raise UsageError(f"{output_dir}: no {RESULTS_FILE} here (has the job run?)")
    try:
        return pl.read_parquet(path)
    except (pl.exceptions.PolarsError, OSError) as e:
        raise UsageError(f"{path}: cannot read results: {str(e).splitlines()[0]}") from None


def breakdown(
    results: pl.DataFrame,
    by: Sequence[str],
    not_done: int = 0,
    savings: pl.Series | None = None,
) -> pl.DataFrame:
    """Rows, tokens and cost of each kind, the saving by caching, cost a row and cache hit
    share per group, and a TOTAL row that also projects the cost of the `not_done` rows at
    the mean cost a row. `savings`: `cache_savings(results)`, when already computed."""
    missing = [c for c in by if c not in results.columns]
    if missing:
        raise UsageError(
            f"--by {missing[0]}: no such column (columns: {', '.join(results.columns)})"
        )
    answered = pl.col("cost_usd").filter(pl.col("status") == "ok")
    results = results.with_columns(cache_savings(results) if savings is None else savings)
    aggregates = [
        pl.len().alias("rows"),
        (pl.col("status") == "ok").sum().alias("ok"),
        (pl.col("status") == "error").sum().alias("error"),
        *(pl.col(c).fill_null(0).sum().alias(c) for c in TOKEN_TOTALS),
        *(pl.col(c).sum().alias(c) for c in COST_COLUMNS),
        pl.when(pl.col(SAVED).is_not_null().any()).then(pl.col(SAVED).sum()).alias(SAVED),
        pl.col("cost_usd").is_null().sum().alias("unpriced_rows"),
        *(answered.mean().alias("mean_cost_usd"), answered.quantile(0.5).alias("p50_cost_usd"),
          answered.quantile(0.95).alias("p95_cost_usd")),
        (pl.col("cache_read_input_tokens").fill_null(0).sum()
         / pl.sum_horizontal(pl.col(TOKEN_TOTALS[i]).fill_null(0).sum() for i in (0, 2, 3)))
        .fill_nan(None).alias("cache_hit_share"),
    ]  # fmt: skip
    groups = results.group_by(list(by)).agg(aggregates).sort(list(by), nulls_last=True)
    total = (
        results.select(aggregates)
        .with_columns(
            *(
                pl.lit("TOTAL" if i == 0 else None).cast(results.schema[c]).alias(c)
                if results.schema[c] == pl.String
                else pl.lit(None, results.schema[c]).alias(c)
                for i, c in enumerate(by)
            )
        )
        .select(groups.columns)
        .with_columns(
            pl.lit(not_done).alias("rows_not_done"),
            (pl.col("mean_cost_usd") * not_done).alias("projected_cost_usd_not_done"),
        )
    )
    return pl.concat([groups, total], how="diagonal_relaxed")


def cache_savings(results: pl.DataFrame, prices: PriceTable | None = None) -> pl.Series:
    """Each row's saving by caching, USD, exact (a Decimal column; null: not known).

    Rows priced by this table save what their model, tier and cache tokens say: each
    distinct combination is computed once. A row priced by another table is computed alone,
    and only when its own cost columns are what this table's prices give."""
    table = prices or load_price_table()
    quiet = PriceTable(table.version, table.prices, table.aliases, warn_to=io.StringIO())
    columns = ["model", "price_table_version", "batch_id", *TOKEN_COLUMNS, *COST_COLUMNS]
    frame = results.select(
        pl.col(c) if c in results.columns else pl.lit(None).alias(c) for c in columns
    ).with_columns(
        pl.int_range(pl.len(), dtype=pl.Int64).alias("_position"),
        (pl.col("price_table_version") == quiet.version).fill_null(False).alias("_ours"),
        pl.col("batch_id").is_not_null().alias("_batch"),
        pl.col("cost_usd").is_not_null().alias("_priced"),
        *(pl.col(c).fill_null(0).cast(pl.Int64) for c in TOKEN_COLUMNS),
    )
    models = frame["model"].drop_nulls().unique().to_list()
    above = {m: p.long_context_above for m in models if (p := quiet.lookup(m)) is not None}
    frame = frame.with_columns(
        (
            pl.sum_horizontal(TOKEN_TOTALS[0], *TOKEN_TOTALS[2:])
            > pl.col("model").replace_strict(above, default=None, return_dtype=pl.Int64)
        )
        .fill_null(False)
        .alias("_long")
    )
    keys = ["model", "_batch", "_long", "_priced", *CACHE_TOKENS]
    ours, others = frame.filter(pl.col("_ours")), frame.filter(~pl.col("_ours"))
    distinct = ours.select(keys).unique()
    with localcontext(prec=60):  # every product here exact
        found = [_saving(quiet, *key) for key in distinct.iter_rows()]
        alone = [_row_saving(row, quiet) for row in others.select(columns).iter_rows(named=True)]
        scale = min(
            MAX_SCALE, max((_scale(v) for v in (*found, *alone) if v is not None), default=0)
        )
        quantum = Decimal(1).scaleb(-scale)
        dtype = pl.Decimal(38, scale)
        found_exact = [None if v is None else v.quantize(quantum) for v in found]
        alone_exact = [None if v is None else v.quantize(quantum) for v in alone]
    priced = distinct.with_columns(pl.Series(SAVED, found_exact, dtype=dtype))
    saved = pl.concat(
        [
            ours.join(priced, on=keys, how="left", nulls_equal=True).select("_position", SAVED),
            others.select("_position", pl.Series(SAVED, alone_exact, dtype=dtype)),
        ]
    )
    return saved.sort("_position")[SAVED]


def _saving(
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
    if not priced:
        return None  # unpriced when it ran, or answered without usage
    if not (read or five or hour):
        return Decimal(0)  # no cache tokens: nothing saved, nothing lost
    price = prices.lookup(model) if model is not None else None
    if price is None:
        return None
    if long and price.long_context is not None:
        price = price.long_context  # every token of the request, as `pricing.costs` bills it
    factor = BATCH_DISCOUNT if batch else Decimal(1)
    saved = read * (price.input - price.cache_read) - (
        five * (price.cache_write_5m - price.input) + hour * (price.cache_write_1h - price.input)
    )
    return saved * factor / MILLION


def _row_saving(row: dict[str, Any], prices: PriceTable) -> Decimal | None:
    """The saving of a row priced by another table: only when this table's prices give
    back its cost columns exactly (else None: its prices are not known here)."""
    if row["cost_usd"] is None or row["model"] is None:
        return None
    price = prices.lookup(row["model"])
    if price is None:
        return None
    batch = row["batch_id"] is not None
    usage = Usage(**{c: row[c] for c in TOKEN_COLUMNS}, service_tier="batch" if batch else None)
    if costs(price, usage) != {c: row[c] for c in COST_COLUMNS}:
        return None  # another table priced it, differently for this row
    long = price.long_context_above is not None and (
        usage.input_tokens + usage.cache_creation_input_tokens + usage.cache_read_input_tokens
        > price.long_context_above
    )
    return _saving(prices, row["model"], batch, long, True,
                   *(row[c] for c in CACHE_TOKENS))  # fmt: skip


def _scale(value: Decimal) -> int:
    exponent = value.normalize().as_tuple().exponent
    return -exponent if isinstance(exponent, int) and exponent < 0 else 0


def render(frame: pl.DataFrame, fmt: str) -> str:
    if fmt == "csv":
        return exact_text(frame).write_csv()
    if fmt == "json":
        return _json(frame.to_dicts())
    if fmt == "markdown":
        return markdown(frame)
    return text_table(frame)


def _json(rows: Iterable[dict[str, Any]]) -> str:
    """As `json.dumps(rows, indent=2, default=str)`, with Decimals as JSON numbers of their
    exact digits (never through a float)."""

    def value(v: Any) -> str:
        return exact(v) if isinstance(v, Decimal) else json.dumps(v, default=str)

    objects = [
        "  {\n" + ",\n".join(f"    {json.dumps(k)}: {value(v)}" for k, v in row.items()) + "\n  }"
        for row in rows
    ]
    return ("[\n" + ",\n".join(objects) + "\n]" if objects else "[]") + "\n"


TERMINAL_SECTIONS = (
    (
        "Tokens",
        {
            "rows": "rows",
            "ok": "ok",
            "error": "error",
            "input_tokens": "input",
            "output_tokens": "output",
            "cache_creation_input_tokens": "cache write",
            "cache_read_input_tokens": "cache read",
        },
    ),
    (
        "Cost (USD)",
        {
            "input_cost_usd": "input",
            "output_cost_usd": "output",
            "cache_write_cost_usd": "cache write",
            "cache_read_cost_usd": "cache read",
            "cost_usd": "total",
            SAVED: "saved by caching",
            "unpriced_rows": "unpriced rows",
        },
    ),
    (
        "Cost a row (USD, answered rows) and cache hits",
        {
            "mean_cost_usd": "mean",
            "p50_cost_usd": "p50",
            "p95_cost_usd": "p95",
            "cache_hit_share": "cache hit share",
        },
    ),
)


def report(output_dir: Path, by: Sequence[str] = ("model",), fmt: str = "table") -> str:
    """The report text: rows by status, then tokens and cost per group (default: model)."""
    results = load_results(output_dir)
    if fmt not in FORMATS:
        raise UsageError(f"--format {fmt}: must be one of {', '.join(FORMATS)}")
    not_done = max(0, _rows_total(output_dir, results.height) - results.height)
    savings = cache_savings(results)
    table = breakdown(results, by, not_done, savings)
    if fmt != "table":
        return render(table, fmt)
    status = results.group_by("status").len("rows").sort("status")
    versions = ", ".join(results["price_table_version"].drop_nulls().unique().sort())
    parts = [
        f"{output_dir}: {results.height:,} rows; prices: {versions or 'none'}\n",
        text_table(status),
    ]
    for title, names in TERMINAL_SECTIONS:
        parts.append(f"\n{title} by {', '.join(by)}\n")
        parts.append(text_table(table, {**{c: c for c in by}, **names}))
    from pipeline.reports.accuracy import gold_report

    record = _run_record(output_dir)
    if record.get("gold_column") and record.get("label_column"):
        parts.append(gold_report(results, record["label_column"], record["gold_column"]))
    parts.append(_left_out(results, savings))
    projected = table["projected_cost_usd_not_done"][-1]
    parts.append(f"\nnot done: {not_done:,} rows")
    if not_done and projected is not None:
        parts.append(f", projected ${projected:,.4f} at the mean cost a row")
    return "".join(parts) + "\n"


def _left_out(results: pl.DataFrame, savings: pl.Series) -> str:
    """A note of the rows with cache tokens whose saving is not known (not counted)."""
    cached = pl.sum_horizontal(
        pl.col(c).fill_null(0) for c in ("cache_read_input_tokens", "cache_creation_input_tokens")
    )
    unknown = results.select(((cached > 0) & savings.is_null().alias("unknown")).sum()).item()
    if not unknown:
        return ""
    return (
        f"\nsaved by caching leaves out {unknown:,} row(s) with cache tokens: no price for "
        f"their model in {load_price_table().version}, or priced by another table differently\n"
    )


def _run_record(output_dir: Path) -> dict[str, Any]:
    """The last run's record (run.json), or {} when there is none to read."""
    try:
        record = json.loads((output_dir / "run.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def _rows_total(output_dir: Path, default: int) -> int:
    """The input's row count, from the last run's record, if there is one."""
    try:
        return int(_run_record(output_dir)["rows_total"])
    except (KeyError, TypeError, ValueError):
        return default
