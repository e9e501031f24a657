"""The output directory's layout: every file and where it is, in the map below, each with
the module that names it (parts, results, prices, damaged and the shards are named here).

OUTPUT/
  job.json            what shapes the requests (manifest)
  run.json            the last run's summary (checkpoint)
  prices.json         the job's [pricing], when it has one, for its reports (pricing)
  .lock               one run at a time (checkpoint)
  journal.jsonl       finished rows, appended as they arrive (journal)
  journal-NNNNNN.sealed   a full journal, about to become part NNNNNN (journal, sink)
  parts/part-NNNNNN.parquet   finished rows, checksummed (sink, parts)
  damaged/            parts set aside by --set-aside-damaged, never deleted (parts)
  results.parquet     every row's latest outcome, in input order (sink)
  batches/batch-NNNNNN.intent.json, batch-NNNNNN.json   batch mode's book (batch.book)
  ray/shard-NNNN/     a --ray worker's shard: an output directory of its own (job.json,
                      journals, parts/, run.json), taken into OUTPUT/parts by the next
                      command that writes the output (store.shards)
"""

from __future__ import annotations

from pathlib import Path

PARTS_DIR = "parts"
PART_GLOB = "part-*.parquet"
RESULTS_FILE = "results.parquet"
PRICES_FILE = "prices.json"
DAMAGED_DIR = "damaged"
SHARDS_DIR = "ray"
SHARD_GLOB = "shard-*"


def part_name(number: int) -> str:
    return f"part-{number:06d}.parquet"


def part_number(path: Path) -> int:
    return int(path.stem.split("-")[1])


def part_files(output_dir: Path) -> list[Path]:
    """The part files, oldest first: a later part's outcome of a row replaces an earlier."""
    return sorted((output_dir / PARTS_DIR).glob(PART_GLOB), key=part_number)


def shard_dir(output_dir: Path, index: int) -> Path:
    return output_dir / SHARDS_DIR / f"shard-{index:04d}"


def shard_dirs(output_dir: Path) -> list[Path]:
    """The --ray shard directories under `output_dir`, in shard order."""
    base = output_dir / SHARDS_DIR
    return sorted(p for p in base.glob(SHARD_GLOB) if p.is_dir()) if base.is_dir() else []
