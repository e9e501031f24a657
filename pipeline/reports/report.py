"""Cost and usage reports from a job's results.parquet.

`saved_by_caching_usd`: what the cache reads saved over the input price, minus the extra
the cache writes cost over it, each row priced by its own model (the built-in price table),
at half that in a batch (`batch_id` set). Exact: Decimal per row and a Decimal column whose
sums are exact; csv, json and markdown print its exact digits. A row of a model with no
price, or priced by another table whose prices this row's costs do not confirm, has a null
saving and is not counted; a group of such rows only is null.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

import polars as pl

from pipeline.errors import UsageError
from pipeline.pricing import load_price_table
from pipeline.reports.savings import SAVED, batch_savings, cache_savings, exact_sum
from pipeline.reports.tables import exact, exact_text, markdown, text_table
from pipeline.schema import COST_COLUMNS, TOKEN_TOTALS
from pipeline.store.layout import RESULTS_FILE

FORMATS = ("table", "csv", "json", "markdown")
__all__ = ["SAVED", "batch_savings", "breakdown", "cache_savings", "exact_sum", "report"]


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
