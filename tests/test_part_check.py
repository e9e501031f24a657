"""The parts' damage check: started ahead of a resume (part_check.check_ahead), its answers
taken only for the very file they were about, what it kept for the resume equal to reading
the part, its cheaper read (strings as dictionaries) flagging every damaged file the plain
read with checksums flags, and parts known intact by their sha256 (INTACT_RECORD) not read
whole again while a part with any byte changed is."""

from __future__ import annotations

import os
import random
import shutil
import time
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline import ahead
from pipeline.commands.checks import start_ahead
from pipeline.job.load import load_job
from pipeline.job.options import RunOptions
from pipeline.store import part_check
from pipeline.store.checkpoint import resume_state
from pipeline.store.layout import INTACT_RECORD
from pipeline.store.part_summary import summarize
from pipeline.store.parts import write_parquet, write_part
from pipeline.store.sink import PART_ROW_GROUP
from tests.ahead_helpers import wait_for_ahead
from tests.e2e import label_job


def part_table(start: int, rows: int) -> pa.Table:
    positions = list(range(start, start + rows))
    return pa.table(
        {
            "_row": pa.array(positions, pa.int64()),
            "id": [f"r{i:07d}" for i in positions],
            "status": ["error" if i % 7 == 0 else "ok" for i in positions],
            "response_text": [f"answer {i % 5}" for i in positions],
            "cost_usd": [0.001 * (i % 3) for i in positions],
            "label": pa.array([["a", "b"][i % 2] if i % 11 else None for i in positions]),
        }
    )


@pytest.fixture
def output(tmp_path: Path) -> Path:
    parts = tmp_path / "out" / "parts"
    parts.mkdir(parents=True)
    for number, start in enumerate(range(0, 9000, 3000), start=1):
        write_parquet(part_table(start, 3000), parts / f"part-{number:06d}.parquet", PART_ROW_GROUP)
    return tmp_path / "out"


def parts_of(output: Path) -> list[Path]:
    return sorted((output / "parts").glob("part-*.parquet"))


def started_checks() -> int:
    return sum(1 for key in ahead._started if key[0] == "part check")


def counting(monkeypatch, name: str = "_checked") -> list[Path]:
    """The parts `name` is called for: `_checked` (checked at all), `_read_whole` (read
    whole, CRCs verified)."""
    calls: list[Path] = []
    real = getattr(part_check, name)

    def spy(part: Path, *args, **how):
        calls.append(part)
        return real(part, *args, **how)

    monkeypatch.setattr(part_check, name, spy)
    return calls


def in_a_page(path: Path, group: int, column: int) -> int:
    """An offset in the body of a column chunk's last page: under its CRC."""
    chunk = pq.read_metadata(path).row_group(group).column(column)
    start = chunk.dictionary_page_offset if chunk.has_dictionary_page else chunk.data_page_offset
    return start + chunk.total_compressed_size - 3


def flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def test_answers_checked_ahead_are_taken_not_read_again(output, monkeypatch):
    calls = counting(monkeypatch)
    part_check.check_ahead(output / "parts")
    wait_for_ahead()
    assert part_check.damaged_parts(parts_of(output)) == []
    assert sorted(calls) == parts_of(output)  # each part read once, ahead


def test_a_part_damaged_after_its_check_ahead_is_read_again_and_named(output, monkeypatch):
    calls = counting(monkeypatch)
    part_check.check_ahead(output / "parts")
    wait_for_ahead()
    damaged = parts_of(output)[1]
    time.sleep(0.01)  # a later modification time, even on a coarse clock
    flip(damaged, in_a_page(damaged, 1, 1))
    found = part_check.damaged_parts(parts_of(output))
    assert [part for part, _ in found] == [damaged]
    assert "CRC" in found[0][1] or "checksum" in found[0][1].lower()
    assert calls.count(damaged) == 2  # ahead, then again: the file changed since
    assert part_check.checked(damaged) is None  # nothing kept of a damaged part


def test_a_part_replaced_by_another_of_the_same_size_is_read_again(output, monkeypatch):
    part_check.check_ahead(output / "parts")
    wait_for_ahead()
    first, second = parts_of(output)[:2]
    spare = output / "spare.parquet"
    shutil.copy(first, spare)
    flip(spare, in_a_page(spare, 0, 0))
    os.replace(spare, first)  # a new inode: another file at the same path
    found = part_check.damaged_parts(parts_of(output))
    assert [part for part, _ in found] == [first]
    assert part_check.checked(second) is not None


def test_what_the_check_kept_equals_the_part_and_is_taken_once(output):
    part_check.check_ahead(output / "parts")
    part_check.damaged_parts(parts_of(output))
    for part in parts_of(output):
        kept = part_check.checked(part)
        assert kept is not None and kept.kept is not None
        assert kept.kept.equals(pl.read_parquet(part, columns=list(part_check.RESUME_COLUMNS)))
        assert kept.summary == summarize(kept.kept)
        assert part_check.checked(part) is None  # taken once


def test_a_part_not_checked_ahead_keeps_its_summary_not_its_columns(output):
    assert part_check.damaged_parts(parts_of(output)) == []
    for part in parts_of(output):
        kept = part_check.checked(part)
        assert kept is not None and kept.kept is None and kept.summary is not None


def test_the_resume_from_kept_columns_equals_the_resume_from_the_parts(output):
    read = resume_state(output)
    part_check.check_ahead(output / "parts")
    assert part_check.damaged_parts(parts_of(output)) == []
    kept = resume_state(output)
    assert all(part_check.checked(p) is None for p in parts_of(output))  # used
    assert kept.done_rows.equals(read.done_rows)
    assert kept.error_rows.equals(read.error_rows)
    assert kept.spent_usd == pytest.approx(read.spent_usd)
    assert kept.error_rows.len() > 0 and kept.done_rows.len() == 9000


def plain_verified_damage(part: Path) -> str | None:
    """The check as it was: the part read whole, strings built, every CRC verified."""
    try:
        metadata = pq.read_metadata(part)
        with pq.ParquetFile(part, page_checksum_verification=True) as file:
            table = file.read()
    except (OSError, pa.ArrowException, OverflowError, TypeError, ValueError) as e:
        return str(e) or type(e).__name__
    return "rows" if table.num_rows != metadata.num_rows else None


def test_the_dictionary_read_flags_every_damage_the_plain_read_flags(tmp_path):
    """Flipped bytes at many offsets and truncations, over pages and footer alike: the
    check (strings read as dictionaries) and the plain read agree on every one."""
    part = tmp_path / "part.parquet"
    write_parquet(part_table(0, 3000), part, PART_ROW_GROUP)
    data = part.read_bytes()
    rng = random.Random(22)
    offsets = sorted(rng.sample(range(len(data)), 150))
    cases = [
        (f"flip at {o}", bytes(data[:o]) + bytes([data[o] ^ 0x5A]) + data[o + 1 :]) for o in offsets
    ]
    cases += [(f"cut at {n}", data[:n]) for n in sorted(rng.sample(range(len(data)), 20))]
    damaged = tmp_path / "damaged.parquet"
    flagged = 0
    for name, content in cases:
        damaged.write_bytes(content)
        expected = plain_verified_damage(damaged)
        assert (part_check.damage(damaged) is not None) == (expected is not None), name
        flagged += expected is not None
    assert flagged > len(cases) // 2  # most flips land in pages: the CRCs find them


@pytest.mark.parametrize("fresh", [False, True])
def test_a_run_starts_the_check_ahead_unless_fresh(output, fresh):
    job = load_job(label_job(output.parent, output.parent / "in.csv"))
    start_ahead(job, RunOptions(fresh=fresh))
    wait_for_ahead()
    assert started_checks() == (0 if fresh else len(parts_of(output)))


def written_by_a_run(output: Path) -> list[Path]:
    """The fixture's parts written again as a run writes them (remembered as intact)."""
    for part in parts_of(output):
        table = pq.read_table(part)
        part.unlink()
        write_part(part, lambda path, t=table: write_parquet(t, path, PART_ROW_GROUP))
    return parts_of(output)


def test_parts_a_run_wrote_are_hashed_not_read_whole(output, monkeypatch):
    parts = written_by_a_run(output)
    whole = counting(monkeypatch, "_read_whole")
    part_check.check_ahead(output / "parts")
    assert part_check.damaged_parts(parts) == []
    assert whole == []
    for part in parts:  # no column read: the summary the run remembered, of its columns
        kept = part_check.checked(part)
        assert kept is not None and kept.kept is None
        columns = pl.read_parquet(part, columns=list(part_check.RESUME_COLUMNS))
        assert kept.summary is not None and kept.summary == summarize(columns)


def test_a_part_found_intact_is_remembered_and_not_read_whole_again(output, monkeypatch):
    whole = counting(monkeypatch, "_read_whole")
    assert part_check.damaged_parts(parts_of(output)) == []
    assert sorted(whole) == parts_of(output)  # not written by a run: read whole, once
    assert part_check.damaged_parts(parts_of(output)) == []
    assert sorted(whole) == parts_of(output)  # and then known by its bytes


def test_a_remembered_part_with_any_byte_changed_is_judged_as_if_never_remembered(tmp_path):
    """Flips over pages, headers and footer alike, and cuts: each damaged copy of a part
    the record vouches for is read whole, and flagged exactly when the plain read flags it
    (a flip the read cannot see, as in a statistic, passes as it did before)."""
    parts = tmp_path / "parts"
    parts.mkdir()
    part = parts / "part-000001.parquet"
    write_part(part, lambda path: write_parquet(part_table(0, 3000), path, PART_ROW_GROUP))
    data = part.read_bytes()
    assert part_check.known_intact(parts)  # the run's write remembered it
    rng = random.Random(2207)
    cases = [bytes(data[:o]) + bytes([data[o] ^ 0x21]) + data[o + 1 :]
             for o in rng.sample(range(len(data)), 60)]  # fmt: skip
    cases += [data[:n] for n in rng.sample(range(len(data)), 10)]
    for content in cases:
        part.write_bytes(content)
        part_check._kept.clear()
        found = part_check.damaged_parts([part])
        assert bool(found) == (plain_verified_damage(part) is not None)
        part.write_bytes(data)  # the record's own bytes again: never forgotten by a flip
    assert part_check.damaged_parts([part]) == []


def test_the_record_keeps_only_the_parts_there(output):
    parts = written_by_a_run(output)
    assert len(part_check.known_intact(output / "parts")) == 3
    parts[0].unlink()
    assert part_check.damaged_parts(parts[1:]) == []
    assert len(part_check.known_intact(output / "parts")) == 2


@pytest.mark.parametrize("record", ["torn", "a directory"])
def test_a_record_unreadable_or_unwritable_costs_reads_only(output, monkeypatch, record):
    parts = written_by_a_run(output)
    path = output / INTACT_RECORD
    path.unlink()
    if record == "torn":
        path.write_text('{"sha256": ["ab')
    else:
        path.mkdir()
    whole = counting(monkeypatch, "_read_whole")
    assert part_check.damaged_parts(parts) == []
    assert sorted(whole) == parts
    flip(parts[1], in_a_page(parts[1], 0, 1))
    assert [p for p, _ in part_check.damaged_parts(parts)] == [parts[1]]


def test_a_part_replaced_while_it_is_checked_is_not_remembered(output, monkeypatch):
    """Hashed, then replaced by another writer before its read: the bytes read whole are
    not those hashed, so the hash is not remembered as intact."""
    part = parts_of(output)[0]
    damaged = bytearray(part.read_bytes())
    damaged[in_a_page(part, 0, 1)] ^= 0xFF
    good = part.read_bytes()
    part.write_bytes(bytes(damaged))
    real = part_check._read_whole

    def replaced_first(path: Path, digest: str, **how):
        spare = path.with_name("spare")
        spare.write_bytes(good)
        os.replace(spare, path)  # the intact copy, renamed over it after the hash
        return real(path, digest, **how)

    monkeypatch.setattr(part_check, "_read_whole", replaced_first)
    assert part_check.damaged_parts([part]) == []  # what was read is intact
    monkeypatch.setattr(part_check, "_read_whole", real)
    part.write_bytes(bytes(damaged))  # the damaged bytes back
    assert [p for p, _ in part_check.damaged_parts([part])] == [part]


def test_a_record_that_cannot_be_written_leaves_the_check_as_it_was(output, monkeypatch):
    """A read-only disk refuses the record's temporary file and even its removal."""

    def refused(*args, **kwargs):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(Path, "write_text", refused)
    monkeypatch.setattr(Path, "unlink", refused)
    assert part_check.damaged_parts(parts_of(output)) == []
    assert not (output / INTACT_RECORD).exists()


def test_a_check_asked_not_to_remember_writes_nothing(output):
    assert part_check.damaged_parts(parts_of(output), remember=False) == []
    assert sorted(p.name for p in (output / "parts").iterdir()) == [
        p.name for p in parts_of(output)
    ]  # `pipeline status` takes no lock: it writes nothing


def test_a_remembered_part_replaced_while_it_is_checked_is_read_whole(output, monkeypatch):
    """Hashed and known intact, then replaced by a damaged copy before its columns are
    read: the file now there is read whole, and named."""
    part = written_by_a_run(output)[0]
    damaged = bytearray(part.read_bytes())
    damaged[in_a_page(part, 0, 1)] ^= 0xFF
    real = part_check._resume_columns

    def replaced_first(path: Path, digest: str, summary):
        spare = path.with_name("spare")
        spare.write_bytes(bytes(damaged))
        os.replace(spare, path)  # another writer's copy, renamed over it after the hash
        return real(path, digest, summary)

    monkeypatch.setattr(part_check, "_resume_columns", replaced_first)
    assert [p for p, _ in part_check.damaged_parts([part])] == [part]


def test_the_parts_directory_stays_one_parquet_dataset(output):
    """The record lives beside parts/, not in it: a reader taking parts/ whole as one
    dataset (polars refuses a directory of mixed files) still can."""
    import polars as pl

    parts = written_by_a_run(output)
    assert part_check.damaged_parts(parts) == []
    assert (output / INTACT_RECORD).exists()
    assert pl.read_parquet(output / "parts").height == 9000
