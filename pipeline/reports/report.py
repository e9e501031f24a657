"""Cost and usage reports from a job's results.parquet.

Every cost and total is exact: each row's float cost is the Decimal of its shortest repr
(the exact cost `pricing.costs` computed), and the columns are summed as Decimals; csv,
json and markdown print their exact digits, the terminal table six decimals. The savings
(`saved_by_caching_usd`, `saved_by_batch_usd`) are computed in `savings`; a group whose
rows' saving is not known (no price, another table's prices) is null.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import Context, Decimal
from pathlib import Path
from typing import Any

import polars as pl

from pipeline.cascade.account import cascade_account
from pipeline.errors import UsageError
from pipeline.exact import decimal_column, decimal_series
from pipeline.pricing import PriceTable, load_price_table, output_prices
from pipeline.reports.accuracy import (
    ACCURACY_COLUMNS,
    graded_aggregates,
    graded_columns,
    group_accuracy,
)
from pipeline.reports.job_card import facts_text, job_facts
from pipeline.reports.savings import (
    SAVED,
    SAVED_BY_BATCH,
    batch_rows,
    batch_savings,
    cache_rows,
    cache_savings,
    exact_sum,
)
from pipeline.reports.tables import (
    exact_json,
    exact_text,
    markdown,
    text_table,
    three_figures,
)
from pipeline.schema import COST_COLUMNS, TOKEN_TOTALS
from pipeline.store.layout import MANIFEST, PRICES_FILE, RESULTS_FILE, RUN_RECORD
from pipeline.store.shards import refuse_unmerged

FORMATS = ("table", "csv", "json", "markdown")
__all__ = [
    "SAVED",
    "SAVED_BY_BATCH",
    "batch_savings",
    "breakdown",
    "cache_savings",
    "exact_sum",
    "open_report",
    "report",
    "report_text",
    "rows_total",
    "run_record",
]


def load_results(output_dir: Path) -> pl.DataFrame:
    path = output_dir / RESULTS_FILE if output_dir.is_dir() else output_dir
    if output_dir.is_dir():  # rows a --ray run's shards hold are not in results.parquet yet
        refuse_unmerged(output_dir)
    if not path.exists():
        raise UsageError(f"{output_dir}: no {RESULTS_FILE} here (has the job run?)")
    try:
        return pl.read_parquet(path)
    except (pl.exceptions.PolarsError, OSError) as e:
        raise UsageError(f"{path}: cannot read results: {str(e).splitlines()[0]}") from None


@dataclass(frozen=True)
class Opened:
    """What a report is made of: result rows, the table that priced them, and the job's
    output directory (its run record: rows not done, gold labels) when they are a job's."""

    results: pl.DataFrame
    prices: PriceTable
    output_dir: Path | None  # None: usage files of another tool


def open_report(path: Path, prices_file: Path | None = None) -> Opened:
    """A job's output (a directory, or its results.parquet), priced by its job's table; or
    usage files of another tool (`usage_files`), priced by the built-in table with
    `prices_file`'s prices on top. One line, exit 2, when neither can be read."""
    from pipeline.reports import usage_files

    if not path.exists():
        load_results(path)  # raises: no results.parquet here (has the job run?)
    if _job_output(path):
        if prices_file is not None:
            raise UsageError(
                f"--prices: {path} is a job's output, priced when it ran (by its job's "
                "[pricing]); --prices prices usage files of another tool"
            )
        return Opened(load_results(path), output_prices(path), path)
    prices = load_price_table()
    if prices_file is not None:
        prices = prices.with_overrides(usage_files.read_prices(prices_file))
    return Opened(usage_files.usage_results(path, prices), prices, None)


def _job_output(path: Path) -> bool:
    """A job's output directory, or a results file with the columns a job writes."""
    if path.is_dir():
        marks = (RESULTS_FILE, RUN_RECORD, PRICES_FILE, MANIFEST)
        return any((path / mark).exists() for mark in marks)
    if path.suffix != ".parquet":
        return False
    try:
        columns = pl.read_parquet_schema(path)
    except (pl.exceptions.PolarsError, OSError):
        return True  # load_results says why it cannot be read
    return {"status", "price_table_version", *COST_COLUMNS} <= set(columns)


def breakdown(
    results: pl.DataFrame,
    by: Sequence[str],
    not_done: int = 0,
    savings: pl.Series | None = None,
    batch: pl.Series | None = None,
    graded: tuple[str, str] | None = None,
) -> pl.DataFrame:
    """Rows, tokens and cost of each kind, the savings by caching and by batch, cost a row
    and cache hit share per group, and a TOTAL row that also projects the cost of the
    `not_done` rows at the mean cost a row. Every cost and saving is exact (Decimal);
    `savings`, `batch`: `cache_savings(results)`, `batch_savings(results)`, when already
    computed. `graded`: the (label, gold) columns: accuracy and its 95% Wilson interval
    per group, over the rows with a gold label (a row without a valid label is wrong)."""
    missing = [c for c in by if c not in results.columns]
    if missing:
        raise UsageError(
            f"--by {missing[0]}: no such column (columns: {', '.join(results.columns)})"
        )
    results = results.with_columns(
        pl.col("cost_usd").alias("_cost_float"),  # for the percentiles: a row's own value
        *(decimal_column(c, results[c]) for c in COST_COLUMNS),
        cache_savings(results) if savings is None else savings,
        batch_savings(results) if batch is None else batch,
    )
    aggregates = [*AGGREGATES, *graded_aggregates(graded)]
    groups = results.group_by(list(by)).agg(aggregates).sort(list(by), nulls_last=True)
    total = results.select(aggregates).with_columns(
        *(
            pl.lit("TOTAL" if i == 0 else None).cast(results.schema[c]).alias(c)
            if results.schema[c] == pl.String
            else pl.lit(None, results.schema[c]).alias(c)
            for i, c in enumerate(by)
        ),
        pl.lit(not_done).alias("rows_not_done"),
    )
    table = pl.concat([groups, total.select(*groups.columns, "rows_not_done")], how="diagonal")
    table = _per_row(table, not_done)
    if graded is None:
        return table.select(*by, *COLUMNS)
    return group_accuracy(table).select(*by, *COLUMNS, *ACCURACY_COLUMNS)


def _known_sum(column: str) -> pl.Expr:
    """The sum of a money column, null when no row's value is known (never a silent 0)."""
    return pl.when(pl.col(column).is_not_null().any()).then(pl.col(column).sum()).alias(column)


_ANSWERED = pl.col("status") == "ok"
AGGREGATES = [
    pl.len().alias("rows"),
    _ANSWERED.sum().alias("ok"),
    (pl.col("status") == "error").sum().alias("error"),
    *(pl.col(c).fill_null(0).sum().alias(c) for c in TOKEN_TOTALS),
    *(_known_sum(c) for c in COST_COLUMNS),  # Decimal: exact; null when no row is priced
    _known_sum(SAVED),
    _known_sum(SAVED_BY_BATCH),
    pl.col("cost_usd").is_null().sum().alias("unpriced_rows"),
    pl.col("cost_usd").filter(_ANSWERED).sum().alias("_answered_usd"),
    pl.col("cost_usd").filter(_ANSWERED).count().alias("_answered"),
    *(pl.col("_cost_float").filter(_ANSWERED).quantile(q, "nearest").alias(f"p{p}_cost_usd")
      for q, p in ((0.5, 50), (0.95, 95))),
    (pl.col("cache_read_input_tokens").fill_null(0).sum()
     / pl.sum_horizontal(pl.col(TOKEN_TOTALS[i]).fill_null(0).sum() for i in (0, 2, 3)))
    .fill_nan(None).alias("cache_hit_share"),
]  # fmt: skip
COLUMNS = (
    "rows", "ok", "error", *TOKEN_TOTALS, *COST_COLUMNS, SAVED, SAVED_BY_BATCH,
    "unpriced_rows", "mean_cost_usd", "p50_cost_usd", "p95_cost_usd", "cache_hit_share",
    "rows_not_done", "projected_cost_usd_not_done",
)  # fmt: skip
# A mean (and the projection from it) is a quotient that rarely ends: rounded to 12
# significant digits, more than any row's cost has (tokens x a price of a few digits) and
# short of the 16-17 where float noise would start. Exact whenever it ends sooner.
MEAN = Context(prec=12)


def _per_row(table: pl.DataFrame, not_done: int) -> pl.DataFrame:
    """`table` with the mean cost a row, the percentiles as exact Decimals (each is one
    row's cost, nearest rank) and the TOTAL row's projection for the `not_done` rows."""
    sums, counts = table["_answered_usd"].to_list(), table["_answered"].to_list()
    means = [MEAN.divide(s, n) if n else None for s, n in zip(sums, counts, strict=True)]
    projected: list[Decimal | None] = [None] * (table.height - 1)
    projected.append(
        MEAN.divide(Context(prec=80).multiply(sums[-1], not_done), counts[-1])
        if counts[-1]
        else None
    )
    return table.with_columns(
        decimal_series("mean_cost_usd", means),
        decimal_column("p50_cost_usd", table["p50_cost_usd"]),
        decimal_column("p95_cost_usd", table["p95_cost_usd"]),
        decimal_series("projected_cost_usd_not_done", projected),
    )


def render(frame: pl.DataFrame, fmt: str) -> str:
    if fmt == "csv":
        return exact_text(frame).write_csv()
    if fmt == "json":
        return _json(frame.to_dicts())
    if fmt == "markdown":
        return markdown(frame)
    return text_table(frame)


def _json(rows: Iterable[dict[str, Any]]) -> str:
    """The rows as a JSON list, Decimals as numbers of their exact digits."""
    return exact_json(list(rows))


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
            SAVED_BY_BATCH: "saved by batch",
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
    (
        "Accuracy against the gold labels",
        {
            "graded_rows": "rows with gold",
            "accuracy": "accuracy",
            "accuracy_low": "95% low",
            "accuracy_high": "95% high",
        },
    ),
)
# Shares shown as percentages to one decimal (98.6%) where people read them: the terminal
# table and the HTML page; csv, json and markdown keep the exact ratio, for machines.
PERCENT_COLUMNS = frozenset({"cache_hit_share", "accuracy", "accuracy_low", "accuracy_high"})


def report(output_dir: Path, by: Sequence[str] = ("model",), fmt: str = "table") -> str:
    """The report text: rows by status, then tokens and cost per group (default: model)."""
    return report_text(open_report(output_dir), by, fmt, output_dir)


def report_text(opened: Opened, by: Sequence[str], fmt: str, heading: Path | str) -> str:
    """The report of `opened` (`open_report`), headed by `heading` (what was asked for)."""
    results, output_dir, prices = opened.results, opened.output_dir, opened.prices
    if fmt not in FORMATS:
        raise UsageError(f"--format {fmt}: must be one of {', '.join(FORMATS)}")
    not_done = 0
    if output_dir is not None:
        not_done = max(0, rows_total(output_dir, results.height) - results.height)
    savings, batch = cache_savings(results, prices), batch_savings(results, prices)
    record = run_record(output_dir) if output_dir is not None else {}
    table = breakdown(results, by, not_done, savings, batch, graded_columns(record, results))
    if fmt != "table":
        return render(table, fmt)
    status = results.group_by("status").len("rows").sort("status")
    versions = ", ".join(results["price_table_version"].drop_nulls().unique().sort())
    parts = [
        f"{heading}: {results.height:,} rows{_invalid_labels(results)}; "
        f"prices: {versions or 'none'}\n",
        facts_text(job_facts(output_dir, record)),
        text_table(status),
    ]
    shown = for_people(table)
    for title, names in sections(table):
        parts.append(f"\n{title} by {', '.join(by)}\n")
        parts.append(text_table(shown, {**{c: c for c in by}, **names}, PERCENT_COLUMNS))
    from pipeline.reports.accuracy import gold_report

    if record.get("gold_column") and record.get("label_column"):
        parts.append(gold_report(results, record["label_column"], record["gold_column"]))
    parts.append(_left_out(results, savings, batch, prices.version))
    if output_dir is not None and (account := cascade_account(output_dir)):
        parts.append("\n" + account)
    projected = table["projected_cost_usd_not_done"][-1]
    from pipeline.store.unrecorded import notes

    if output_dir is not None:  # a job's own notes; usage files of another tool have none
        parts += [f"\nbeyond the costs above, {note}\n" for note in notes(output_dir)]
    if output_dir is None:  # usage files: no job, so no rows still to do
        return "".join(parts).rstrip("\n") + "\n"
    parts.append(f"\nnot done: {not_done:,} rows")
    if not_done and projected is not None:
        parts.append(f", projected ${projected:,.4f} at the mean cost a row")
    return "".join(parts) + "\n"


def _invalid_labels(results: pl.DataFrame) -> str:
    """The header's word on answered rows without a usable label (the status table counts
    them as ok: they were answered and paid for)."""
    if "label_status" not in results.columns:  # a Parquet file of another making
        return ""
    count = results.filter(_ANSWERED & (pl.col("label_status") == "invalid")).height
    return f", {count:,} ok with an invalid label" if count else ""


def _left_out(results: pl.DataFrame, savings: pl.Series, batch: pl.Series, version: str) -> str:
    """A note of the rows with cache tokens, and of the batch rows, whose saving is not
    known (not counted)."""
    unknown = results.select((cache_rows() & savings.is_null().alias("unknown")).sum()).item()
    unbatched = (batch_rows(results) & batch.is_null()).sum()
    why = f"no price for their model in {version}, or priced by another "
    why += "table differently"
    notes = [
        f"\nsaved by caching leaves out {unknown:,} row(s) with cache tokens: {why}\n"
        if unknown
        else "",
        f"\nsaved by batch leaves out {unbatched:,} batch row(s): {why}\n" if unbatched else "",
    ]
    return "".join(notes)


def run_record(output_dir: Path) -> dict[str, Any]:
    """The last run's record (`output_dir`/run.json: the job's name, `rows_total`, the gold
    and label columns, ...), or {} when there is none to read or it is not an object."""
    try:
        record = json.loads((output_dir / RUN_RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def rows_total(output_dir: Path, default: int) -> int:
    """The input's row count (done or not), from the last run's record; `default` when
    the record is missing or has no usable count."""
    try:
        return int(run_record(output_dir)["rows_total"])
    except (KeyError, TypeError, ValueError):
        return default


def sections(table: pl.DataFrame) -> list[tuple[str, dict[str, str]]]:
    """The terminal (and HTML) sections whose columns the table has."""
    return [(t, names) for t, names in TERMINAL_SECTIONS if set(names) & set(table.columns)]


def for_people(table: pl.DataFrame) -> pl.DataFrame:
    """`table` as a person reads it: the mean cost a row to 3 significant figures (json
    and csv keep every digit)."""
    means = [None if v is None else three_figures(v) for v in table["mean_cost_usd"]]
    return table.with_columns(decimal_series("mean_cost_usd", means))
