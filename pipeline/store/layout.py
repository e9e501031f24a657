"""The output directory's layout: every file and where it is. Every name below is given
here, and only here; the module in parentheses is the one that writes the file.

OUTPUT/
  job.json            what shapes the requests (manifest)
  input.parquet       the input, when it was a DataFrame given to run_job (run.frames)
  run.json            the last run's summary (run_record)
  prices.json         the job's [pricing], when it has one, for its reports (pricing)
  .lock               one run at a time (lock)
  unrecorded.bin      a live run's counts of rows paid and not yet recorded (unrecorded)
  journal.jsonl       finished rows, appended as they arrive (journal)
  journal-NNNNNN.sealed   a full journal, about to become part NNNNNN (journal, sink)
  parts/part-NNNNNN.parquet   finished rows, checksummed (sink, parts)
  .intact.json        the sha256 of parts written here or read whole and found intact: a
                      part with those bytes is not read whole again (part_check; local; not
                      in parts/, which a reader may take whole as one Parquet dataset)
  damaged/            parts set aside by --set-aside-damaged, never deleted (parts)
  results.parquet     every row's latest outcome, in input order (sink)
  batches/batch-NNNNNN.intent.json, batch-NNNNNN.json   batch mode's book (book)
  ray/shard-NNNN/     a --ray worker's shard: an output directory of its own (job.json,
                      journals, parts/, run.json), taken into OUTPUT/parts by the next
                      command that writes the output (shards)
  .lease              an output at a URL: the run that holds it, until when (remote; at
                      the URL only)
  ray/.taken          a mirror's shard files fetched from the URL to be taken in (remote)
  cascade/            a [cascade] run's own (cascade.run):
    cascade.json        what the cascade's rows and stages are (the input, scope, settings)
    plan.json           the thresholds set on the calibration rows, and what they promise
    PHASE.parquet, PHASE/   a phase's rows as an input, and its output directory (an output
                      directory as above); PHASE is calibration-K (the calibration rows at
                      stage K) or stage-K (the other rows that reach stage K), or its two
                      rounds first-K and rest-K (cascade.phases)
"""

from __future__ import annotations

from pathlib import Path

MANIFEST = "job.json"
INPUT_SNAPSHOT = "input.parquet"
RUN_RECORD = "run.json"
PRICES_FILE = "prices.json"
LOCK = ".lock"
UNRECORDED_FILE = "unrecorded.bin"
JOURNAL = "journal.jsonl"
JOURNAL_PREFIX = "journal"  # the live journal and the sealed ones
SEALED_GLOB = "journal-*.sealed"
PARTS_DIR = "parts"
PART_GLOB = "part-*.parquet"
INTACT_RECORD = ".intact.json"  # beside a parts directory, for its parts (part_check)
DAMAGED_DIR = "damaged"
RESULTS_FILE = "results.parquet"
BATCHES_DIR = "batches"
INTENT_GLOB = "batch-*.intent.json"
SHARDS_DIR = "ray"
SHARD_GLOB = "shard-*"
LEASE = ".lease"  # an output at a URL: who runs it, until when (store.remote)
SYNCED = ".synced.json"  # a mirror's: each file's two copies when they last matched (synced)
TAKEN = f"{SHARDS_DIR}/.taken"  # a mirror's: shard files fetched to be taken in (remote)
CASCADE_DIR = "cascade"
CASCADE_RECORD = "cascade.json"
CASCADE_PLAN = "plan.json"


def sealed_name(number: int) -> str:
    return f"journal-{number:06d}.sealed"


def sealed_number(path: Path) -> int:
    return int(path.name.split("-")[1].split(".")[0])


def part_name(number: int) -> str:
    return f"part-{number:06d}.parquet"


def part_number(path: Path) -> int:
    return int(path.stem.split("-")[1])


def part_files(output_dir: Path) -> list[Path]:
    """The part files, oldest first: a later part's outcome of a row replaces an earlier."""
    return sorted((output_dir / PARTS_DIR).glob(PART_GLOB), key=part_number)


def intent_name(number: int) -> str:
    return f"batch-{number:06d}.intent.json"


def status_name(number: int) -> str:
    return f"batch-{number:06d}.json"


def shard_name(index: int) -> str:
    return f"shard-{index:04d}"


def shard_dir(output_dir: Path, index: int) -> Path:
    return output_dir / SHARDS_DIR / shard_name(index)


def shard_dirs(output_dir: Path) -> list[Path]:
    """The --ray shard directories under `output_dir`, in shard order."""
    base = output_dir / SHARDS_DIR
    return sorted(p for p in base.glob(SHARD_GLOB) if p.is_dir()) if base.is_dir() else []


def cascade_phase(output_dir: Path, phase: str) -> tuple[Path, Path]:
    """A cascade phase's input file and output directory."""
    base = output_dir / CASCADE_DIR
    return base / f"{phase}.parquet", base / phase
