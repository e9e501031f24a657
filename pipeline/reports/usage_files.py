"""`pipeline report FILE|DIR` on usage columns another tool wrote (Parquet, CSV, JSONL, or
a directory of them): each file becomes the columns a job's own results have, then takes
the report's one path (tables, `--by`, formats, the HTML page).

A file needs `model` and the input and output token counts, in Anthropic's names
(`input_tokens`, `output_tokens`, `cache_creation_input_tokens`, `cache_read_input_tokens`,
`cache_creation.ephemeral_5m_input_tokens` ...) or OpenAI's (`prompt_tokens`,
`completion_tokens`, `prompt_tokens_details.cached_tokens`); nested (a struct, a JSON
object) or flattened (`a.b`, `a_b`), under a `usage` object or not. OpenAI's prompt_tokens
include the cached tokens: input = prompt_tokens - cached_tokens, cache reads = cached_tokens.
A `service_tier` / `tier` of "batch", a `batch_id`, or a true `batch` / `is_batch` is a
batch row (50% off). Costs are `pricing.costs` of each row, as a run prices its own rows;
cost and status columns in the file are replaced by these.
"""

from __future__ import annotations

import io
import sys
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa

from pipeline.errors import UsageError
from pipeline.pricing import PriceTable, costs, split_writes
from pipeline.providers.base import Usage
from pipeline.schema import COST_COLUMNS, RESULT_FIELDS, TOKEN_COLUMNS

SUFFIXES = (".parquet", ".csv", ".jsonl", ".ndjson")
# Our token column -> the names it may have in a file (after `_key`), the first found wins
NAMES: dict[str, tuple[str, ...]] = {
    "input_tokens": ("input_tokens", "prompt_tokens"),
    "output_tokens": ("output_tokens", "completion_tokens"),
    "cache_creation_input_tokens": ("cache_creation_input_tokens",),
    "cache_read_input_tokens": ("cache_read_input_tokens",),
    "cache_creation_5m_tokens": (
        "cache_creation_5m_tokens",
        "cache_creation_ephemeral_5m_input_tokens",
    ),
    "cache_creation_1h_tokens": (
        "cache_creation_1h_tokens",
        "cache_creation_ephemeral_1h_input_tokens",
    ),
}
CACHED = ("prompt_tokens_details_cached_tokens", "cached_tokens")  # OpenAI's cache reads
REQUIRED = ("model", "input_tokens", "output_tokens")
TIERS, BATCH_FLAGS = ("service_tier", "tier"), ("batch", "is_batch")
TRUE = ("true", "1", "yes")
KEY = ("model", "_batch", *TOKEN_COLUMNS)  # what a row's cost depends on


def usage_results(path: Path, prices: PriceTable) -> pl.DataFrame:
    """The usage file at `path` (or every usage file in the directory), as results."""
    files = sorted(p for p in path.iterdir() if p.suffix in SUFFIXES) if path.is_dir() else [path]
    if not files:
        raise UsageError(
            f"{path}: no results.parquet and no usage files ({', '.join(SUFFIXES)}) here"
        )
    frames = [_results_of(file, prices) for file in files]
    return pl.concat(frames, how="diagonal_relaxed") if len(frames) > 1 else frames[0]


def _results_of(file: Path, prices: PriceTable) -> pl.DataFrame:
    """One file's rows as results; a cell of a kind no usage column holds (a list, an
    object) is one line naming the file, never a traceback."""
    try:
        return as_results(read_file(file), prices, str(file))
    except pl.exceptions.PolarsError as e:
        raise UsageError(
            f"{file}: not usage columns this report can read: {_first_line(e)}"
        ) from None


def read_file(path: Path) -> pl.DataFrame:
    """A file as read: CSV cells as text (data, never guessed at), JSON objects as structs."""
    if path.suffix not in SUFFIXES:
        raise UsageError(f"{path}: not a usage file (expected {', '.join(SUFFIXES)})")
    try:
        if path.suffix == ".parquet":
            return pl.read_parquet(path)
        if path.suffix == ".csv":
            return pl.read_csv(path, infer_schema=False)
        return pl.read_ndjson(path, infer_schema_length=None)
    except (pl.exceptions.PolarsError, OSError, ValueError) as e:
        raise UsageError(f"{path}: cannot read: {_first_line(e)}") from None


def as_results(raw: pl.DataFrame, prices: PriceTable, where: str) -> pl.DataFrame:
    """`raw`'s usage as a job's result columns: tokens, the five costs, status, tier."""
    frame = _flat(raw)
    found = {_key(c): c for c in reversed(frame.columns)}  # the first of equal keys wins
    source: dict[str, str | None] = {
        ours: next((found[n] for n in names if n in found), None) for ours, names in NAMES.items()
    }
    source["model"] = found.get("model")
    missing = [_wanted(name) for name in REQUIRED if source[name] is None]
    if missing:
        raise UsageError(
            f"{where}: missing usage column(s): {'; '.join(missing)} "
            f"(columns: {', '.join(raw.columns)})"
        )
    tokens = _tokens(frame, source, found, where)
    kept = frame.drop([c for c in frame.columns if c in (*TOKEN_COLUMNS, *COST_COLUMNS)])
    batch = _batch(frame, found)
    tier = next((frame[found[k]].cast(pl.String) for k in TIERS if k in found), None)
    results = kept.with_columns(
        *tokens.select(TOKEN_COLUMNS).get_columns(),
        frame[source["model"] or "model"].cast(pl.String).alias("model"),
        batch.alias("_batch"),
        # the tier as the savings read it: "batch" for every batch row, however the file said
        pl.when(batch).then(pl.lit("batch")).otherwise(tier).alias("service_tier"),
    )
    return _priced(_with_result_fields(results), prices)


def _flat(frame: pl.DataFrame) -> pl.DataFrame:
    """Struct columns (nested objects) unnested into `outer.inner` columns, all levels."""
    while structs := {c: t for c, t in frame.schema.items() if isinstance(t, pl.Struct)}:
        frame = frame.with_columns(
            pl.col(c).struct.field(f.name).alias(f"{c}.{f.name}")
            for c, t in structs.items()
            for f in t.fields
        ).drop(list(structs))
    return frame


def _key(column: str) -> str:
    """A column's name as looked up: `usage.` / `usage_` dropped, `.` as `_`."""
    name = column.strip().lower().replace(".", "_")
    return name.removeprefix("usage_")


def _wanted(name: str) -> str:
    alternatives = NAMES.get(name, (name,))
    return " or ".join(alternatives[:2])


def _tokens(
    frame: pl.DataFrame, source: dict[str, str | None], found: dict[str, str], where: str
) -> pl.DataFrame:
    """The six token columns (Int64); OpenAI's cached tokens as cache reads, out of input."""
    columns = {ours: frame[name] if name else None for ours, name in source.items()}
    for values in columns.values():
        if values is not None and values.dtype.is_float() and (values.fill_null(0) % 1 != 0).any():
            raise UsageError(f"{where}: token counts must be whole numbers ({values.name})")
    cached = next((found[n] for n in CACHED if n in found), None)
    openai = source["input_tokens"] == found.get("prompt_tokens")
    try:
        out = pl.DataFrame(
            {
                ours: (pl.Series(ours, [0] * frame.height) if s is None else s).cast(pl.Int64)
                for ours, s in columns.items()
                if ours != "model"
            }
        )
        if cached is not None and openai and source["cache_read_input_tokens"] is None:
            reads = frame[cached].cast(pl.Int64).fill_null(0)
            out = out.with_columns(
                (pl.col("input_tokens") - reads).alias("input_tokens"),
                reads.alias("cache_read_input_tokens"),
            )
    except pl.exceptions.PolarsError as e:
        raise UsageError(f"{where}: token counts must be whole numbers: {_first_line(e)}") from None
    answered = out["input_tokens"].is_not_null() & out["output_tokens"].is_not_null()
    zeros = [pl.col(c).fill_null(0) for c in TOKEN_COLUMNS[2:]]  # absent cache: none
    out = out.with_columns(pl.when(answered).then(z) for z in zeros)
    if (out.select(pl.min_horizontal(TOKEN_COLUMNS)).to_series() < 0).any():
        raise UsageError(f"{where}: negative token counts (cached_tokens above prompt_tokens?)")
    return out


def _batch(frame: pl.DataFrame, found: dict[str, str]) -> pl.Series:
    """Whether each row was at the batch rate: a tier of "batch", a batch id, a flag."""
    flags = [pl.lit(False)]
    for key in TIERS:
        if key in found:
            tier = pl.col(found[key]).cast(pl.String).str.strip_chars().str.to_lowercase()
            flags.append(tier == "batch")
    if "batch_id" in found:
        flags.append(pl.col(found["batch_id"]).cast(pl.String).str.strip_chars() != "")
    for key in BATCH_FLAGS:
        if key in found:
            flag = pl.col(found[key]).cast(pl.String).str.strip_chars().str.to_lowercase()
            flags.append(flag.is_in(TRUE))
    batch = pl.any_horizontal(f.fill_null(False) for f in flags).alias("_batch")
    return frame.with_columns(batch)["_batch"]  # a column of the frame's height, always


def _with_result_fields(results: pl.DataFrame) -> pl.DataFrame:
    """Every result column a report reads (latency, finish time, ...): the file's, cast to
    our type (null where it does not cast), else null."""
    ours = pl.DataFrame(pa.schema(RESULT_FIELDS).empty_table()).schema
    columns: list[pl.Expr | pl.Series] = []
    for name, dtype in ours.items():
        if name in (*TOKEN_COLUMNS, *COST_COLUMNS, "model", "status"):
            continue
        if name not in results.columns:
            columns.append(pl.lit(None, dtype).alias(name))
        elif results.schema[name] != dtype:
            columns.append(_cast(results[name], dtype))
    return results.with_columns(columns)


def _cast(values: pl.Series, dtype: pl.DataType) -> pl.Series:
    try:
        if values.dtype == pl.String and isinstance(dtype, pl.Datetime):
            return values.str.to_datetime(time_zone="UTC", strict=False)
        return values.cast(dtype, strict=False)
    except pl.exceptions.PolarsError:  # not of that kind at all: not known
        return pl.Series(values.name, [None] * len(values), dtype)


def _priced(results: pl.DataFrame, prices: PriceTable) -> pl.DataFrame:
    """Status, the five costs (`pricing.costs`, each distinct usage priced once) and the
    price table's version; rows without usage or a price have null costs."""
    quiet = PriceTable(prices.version, prices.prices, prices.aliases, warn_to=io.StringIO())
    answered = pl.col("input_tokens").is_not_null() & pl.col("output_tokens").is_not_null()
    results = results.with_columns(
        pl.when(answered).then(pl.lit("ok")).otherwise(pl.lit("error")).alias("status"),
        pl.lit(prices.version).alias("price_table_version"),
    )
    distinct = results.filter(answered).select(KEY).unique()
    rows, unpriced = [], set()
    for key in distinct.iter_rows(named=True):
        priced = _row_costs(key, quiet)
        if priced is None:
            unpriced.add(key["model"])
        rows.append([*key.values(), *((priced or {}).get(c[1:]) for c in PRICED)])
    _warn(results.filter(answered), unpriced)
    table = pl.DataFrame(rows, schema={**distinct.schema, **PRICED}, orient="row")
    joined = results.join(table, on=list(KEY), how="left", nulls_equal=True, maintain_order="left")
    split = TOKEN_COLUMNS[4:]  # the 5m / 1h split as priced; as the file gave it if unpriced
    return joined.with_columns(
        *(pl.col(f"_{c}").alias(c) for c in COST_COLUMNS),
        *(pl.coalesce(f"_{c}", c).alias(c) for c in split),
    ).drop(*PRICED, "_batch")


# The columns `_row_costs` gives, as `_priced` joins them before they replace ours
PRICED: dict[str, pl.DataType] = {
    **{f"_{c}": pl.Float64() for c in COST_COLUMNS},
    **{f"_{c}": pl.Int64() for c in TOKEN_COLUMNS[4:]},
}


def _row_costs(key: Mapping[str, Any], prices: PriceTable) -> dict[str, Any] | None:
    """A distinct usage's cost columns and the 5m / 1h split that was priced (`split_writes`:
    writes the file does not split are 5-minute ones, the API's default)."""
    price = prices.lookup(key["model"]) if key["model"] is not None else None
    if price is None:
        return None
    tier = "batch" if key["_batch"] else None
    usage = Usage(**{c: key[c] for c in TOKEN_COLUMNS}, service_tier=tier)
    split = split_writes(usage, None)
    return {
        **costs(price, usage),
        "cache_creation_5m_tokens": split.cache_creation_5m_tokens,
        "cache_creation_1h_tokens": split.cache_creation_1h_tokens,
    }


def _warn(answered: pl.DataFrame, unpriced: set[str | None]) -> None:
    """One line a model without a price: how many rows it leaves out of the costs."""
    for model in sorted(m for m in unpriced if m is not None):
        count = answered.filter(pl.col("model") == model).height
        print(
            f"warning: no price for model {model!r} ({count:,} rows): their cost columns are "
            "null (give its prices with --prices FILE)",
            file=sys.stderr,
        )


def read_prices(path: Path) -> dict[str, dict[str, float]]:
    """`--prices FILE`: TOML shaped like a job's [pricing] (a job file will do), or its model
    tables at the top level: `["claude-x"] input = 1.0 output = 5.0` (USD per million)."""
    from pipeline.job.load import _pricing_entry  # the job file's own rules, one place

    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"--prices {path}: cannot read: {_first_line(e)}") from None
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"--prices {path}: invalid TOML: {e}") from None
    table = raw.get("pricing", raw)
    if not isinstance(table, dict) or not table:
        raise UsageError(f"--prices {path}: no prices (a [pricing] table of models)")
    where = f"--prices {path}"
    return {model: _pricing_entry(model, value, where) for model, value in table.items()}


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]
