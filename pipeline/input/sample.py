"""A random sample of an input's rows that depends only on their ids, its size and a seed.

Each row gets a key in [0, 1): the first 8 bytes of blake2b(seed, id) (ids as text; the
row number where the job names no id column), the same on every machine and version.
Rows are taken in the order of their keys, so the same input, N and seed give the same
rows whatever the prompt, the model or any other setting, and a larger N with the same
seed holds every row of a smaller one (the sample grows; nothing answered is bought again).

With strata (the gold labels), a row's place is (its rank among its stratum's keys + its
key) / its stratum's size: every prefix of that order holds each stratum in proportion,
to within a row, and stays a prefix as N grows (an allocation by largest remainders can
take a row away from a stratum when N grows: the Alabama paradox). A missing gold label
is a stratum of its own.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import polars as pl

from pipeline.input.source import Source
from pipeline.schema import ROW_INDEX

KEY_BYTES = 8


@dataclass(frozen=True)
class Sample:
    """`--sample N --seed S`."""

    size: int
    seed: int = 0


def sampled_rows(source: Source, sample: Sample, gold_column: str | None) -> pl.Series:
    """The input positions a run with `--sample` sends (and `estimate --sample` prices):
    the one place they are chosen. Stratified by `gold_column` when the job has one."""
    rows = source.id_positions()
    strata = source.column(gold_column) if gold_column else None
    chosen = sample_positions(rows[source.id_column], sample.size, sample.seed, strata)
    return rows[ROW_INDEX].gather(chosen).rename(ROW_INDEX)


def sample_keys(ids: pl.Series, seed: int) -> pl.Series:
    """Each id's key in [0, 1), from the seed and the id's text only."""
    prefix = f"{seed}\x00".encode()
    scale = float(1 << (8 * KEY_BYTES))
    keys = [
        int.from_bytes(
            hashlib.blake2b(prefix + str(value).encode(), digest_size=KEY_BYTES).digest()
        )
        / scale
        for value in ids.to_list()
    ]
    return pl.Series("key", keys, pl.Float64)


def sample_positions(
    ids: pl.Series, size: int, seed: int, strata: pl.Series | None = None
) -> pl.Series:
    """The positions (0-based, ascending) of the `size` rows sampled from `ids` (all of
    them when `size` is at least their number)."""
    if size < 0:
        raise ValueError(f"a sample of {size} rows")
    frame = pl.DataFrame({"position": pl.int_range(ids.len(), eager=True, dtype=pl.Int64)})
    frame = frame.with_columns(sample_keys(ids, seed))
    if strata is None:
        order = pl.col("key")
    else:
        frame = frame.with_columns(strata.cast(pl.String).fill_null("\x00missing").alias("s"))
        rank = pl.col("key").rank("ordinal").over("s") - 1
        order = (rank + pl.col("key")) / pl.len().over("s")
    chosen = frame.with_columns(order.alias("place")).sort("place", "key").head(size)
    return chosen["position"].sort()
