"""A worker's shard: its rows as the blocks of a materialized dataset (in the object store)
behind the Source face the Runner reads rows from; a replacement worker gets the same
shard and skips the rows its shard directory already holds.

The driver puts the rows in the object store in shards (read.py: read by itself, or as a Ray
Dataset split); a worker only fetches its blocks (pyarrow tables), so it never imports Ray
Data (nor pandas): each worker actor starts that much sooner.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import polars as pl
import ray

from pipeline.input.source import Source, in_scope
from pipeline.schema import ROW_INDEX


@dataclass
class ShardRows(Source):
    """A worker's shard, read from its dataset's blocks instead of the input file."""

    blocks: tuple[Any, ...] = ()  # ObjectRefs of pyarrow tables, in the shard's order

    @classmethod
    def of(cls, source: Source, count: int, blocks: tuple[Any, ...]) -> ShardRows:
        """`count` rows of `source` in `blocks` (ObjectRefs of arrow tables: read.py)."""
        empty = pl.LazyFrame(schema=source.schema)
        return cls(source.path, source.id_column, source.schema, count, empty, count, blocks)

    def done_in_scope(self, done: pl.Series) -> int:
        return len(done)  # a shard directory holds rows of its shard only (merged away after)

    def id_positions(self) -> pl.DataFrame:
        return pl.concat([t.select(ROW_INDEX, self.id_column) for t in self._tables()])

    def batches(
        self,
        columns: Sequence[str],
        batch_size: int = 2000,
        skip: pl.Series | None = None,
        only: pl.Series | None = None,
    ) -> Iterator[list[dict[str, Any]]]:
        for table in self._tables(batch_size):
            frame = in_scope(table.select(self.wanted(columns)), skip, only)
            if frame.height:
                yield frame.to_dicts()

    def frame_of(self, columns: Sequence[str], only: pl.Series) -> pl.DataFrame:
        wanted = self.wanted(columns)
        frames = [in_scope(t.select(wanted), only=only) for t in self._tables()]
        return pl.concat(frames) if frames else pl.DataFrame(schema=self.schema).select(wanted)

    def _tables(self, batch_size: int = 2000) -> Iterator[pl.DataFrame]:
        """The shard's rows in frames of `batch_size` (the last one fewer), in order; its
        blocks (as small as Ray Data splits a read in) fetched one at a time."""
        held: list[pl.DataFrame] = []
        rows = 0
        for ref in self.blocks:
            block = pl.from_arrow(ray.get(ref))
            assert isinstance(block, pl.DataFrame)
            held.append(block)
            rows += block.height
            if rows >= batch_size:
                frame = pl.concat(held, rechunk=False)
                whole = rows - rows % batch_size
                yield from frame.slice(0, whole).iter_slices(batch_size)
                held, rows = [frame.slice(whole)], rows - whole
        if rows:
            yield pl.concat(held, rechunk=False)
