"""Reading journals and parts without Python objects a row: Arrow's JSON reader for a fold,
row groups by window for the merge. Each is checked against the careful, record-at-a-time
path it stands in for, and the cases it must hand back to that path."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.store.journal import read_records
from pipeline.store.parts import PartWindows, table_of_journal, table_of_records
from pipeline.store.sink import ResultSink, merge_in_order

SCHEMA = pa.schema(
    [
        pa.field("_row", pa.int64()),
        pa.field("id", pa.large_string()),
        pa.field("status", pa.string()),
        pa.field("cost_usd", pa.float64()),
        pa.field("attempts", pa.int64()),
        pa.field("finished_at", pa.timestamp("us", tz="UTC")),
        pa.field("label", pa.string()),
        pa.field("tags", pa.list_(pa.string())),
    ]
)


def record(row: int, **values: object) -> dict[str, object]:
    base = {
        "_row": row, "id": f"r{row}", "status": "ok", "cost_usd": 0.25 * row,
        "attempts": 1, "finished_at": 1_765_000_000_000_000 + row, "label": "positive",
        "tags": ["a", "b"], "not_a_column": {"x": 1},
    }  # fmt: skip
    return {**base, **values}


def journal(tmp_path, lines: list[bytes]):
    path = tmp_path / "journal-000001.jsonl"
    path.write_bytes(b"".join(lines))
    return path


def careful(path) -> pa.Table:
    return table_of_records(list(read_records(path)), SCHEMA)


def test_arrows_reading_of_a_journal_equals_the_record_at_a_time_reading(tmp_path):
    records = [
        record(0),
        record(1, label=None, tags=None, cost_usd=None),  # nulls
        record(2, cost_usd=3),  # an integer where a float goes
        {"_row": 3, "status": "error"},  # columns missing from the record
        record(4, id='ünï "quoted"\n'),
    ]
    path = journal(tmp_path, [orjson.dumps(r) + b"\n" for r in records])
    fast = table_of_journal(path, SCHEMA)
    assert fast is not None
    assert fast.schema == SCHEMA
    assert fast.to_pylist() == careful(path).to_pylist()
    assert fast.column("finished_at")[0].as_py() == dt.datetime(
        2025, 12, 6, 5, 46, 40, tzinfo=dt.UTC
    )


@pytest.mark.parametrize(
    "bad",
    [
        b'{"_row": 1, "id": "r1", "sta',  # torn by a kill mid-write
        b"not json at all",  # garbled
        b'{"_row": 1, "attempts": 123456789012345678901234567890}',  # beyond 64 bits
        b'{"_row": 1, "label": 7}',  # a number where text goes
    ],
)
def test_a_line_arrow_refuses_goes_to_the_careful_path(tmp_path, bad):
    path = journal(tmp_path, [orjson.dumps(record(0)) + b"\n", bad + b"\n"])
    assert table_of_journal(path, SCHEMA) is None


def test_a_fold_through_the_careful_path_keeps_every_good_row(tmp_path, capsys):
    sink = ResultSink(tmp_path, SCHEMA.remove(0))
    for row in (2, 0):
        sink.journal.append(record(row))
    sealed = sink.journal.seal(sink.next_part_number())
    with sealed.open("ab") as file:
        file.write(b'{"_row": 1, "attempts": 123456789012345678901234567890}\n{"_row": 5')
    sink.fold(sealed)
    (part,) = sink.part_files()
    table = pq.read_table(part)
    assert table.column("_row").to_pylist() == [0, 1, 2]  # sorted; the torn line skipped
    assert table.column("attempts").to_pylist() == [1, None, 1]  # the misfit set to null
    assert "torn last record" in capsys.readouterr().err


def test_an_empty_journal_makes_no_part(tmp_path):
    sink = ResultSink(tmp_path, SCHEMA.remove(0))
    sealed = sink.journal.seal(sink.next_part_number())
    sink.fold(sealed)
    assert sink.part_files() == []


def write_part(path, rows: list[int], row_group: int) -> None:
    table = table_of_records([record(r, label=f"v{r}") for r in rows], SCHEMA)
    pq.write_table(table, path, row_group_size=row_group)


def test_a_window_reads_only_the_row_groups_that_meet_it(tmp_path):
    path = tmp_path / "p.parquet"
    write_part(path, list(range(0, 100)), row_group=10)
    reader = PartWindows(path)
    try:
        assert reader.row_range() == (0, 99)
        assert reader.read(200, 300) is None
        window = reader.read(15, 37)
        assert window is not None
        assert window.column("_row").to_pylist() == list(range(15, 37))
    finally:
        reader.close()


def test_a_part_without_statistics_is_read_whole_and_cut_to_the_window(tmp_path):
    path = tmp_path / "p.parquet"
    table = table_of_records([record(r) for r in (7, 3, 11)], SCHEMA)
    pq.write_table(table, path, write_statistics=False)
    reader = PartWindows(path)
    try:
        assert reader.row_range() == (3, 11)
        window = reader.read(5, 12)
        assert window is not None and window.column("_row").to_pylist() == [7, 11]
    finally:
        reader.close()


@pytest.mark.parametrize("statistics", [True, False])
def test_a_row_without_a_position_is_dropped_even_from_a_group_inside_the_window(
    tmp_path, statistics
):
    """A group wholly inside the window is taken as it is read, unless it may hold a row
    with no position (`_row` null), which no window holds."""
    path = tmp_path / "p.parquet"
    table = table_of_records([record(r) for r in (1, 2, 3)], SCHEMA)
    table = table.set_column(0, "_row", pa.array([1, None, 3], pa.int64()))
    pq.write_table(table, path, write_statistics=statistics)
    reader = PartWindows(path)
    try:
        window = reader.read(0, 10)
        assert window is not None and window.column("_row").to_pylist() == [1, 3]
        assert window.column("id").to_pylist() == ["r1", "r3"]
    finally:
        reader.close()


def test_the_merge_keeps_each_rows_latest_outcome_across_windows(tmp_path, monkeypatch):
    from pipeline.store import sink as sink_module

    monkeypatch.setattr(sink_module, "MERGE_WINDOW", 7)
    old, new = tmp_path / "part-000001.parquet", tmp_path / "part-000002.parquet"
    write_part(old, list(range(0, 30)), row_group=4)
    later = [(3, "first3"), (29, "again29"), (3, "again3"), (14, "again14")]  # unsorted:
    table = table_of_records([record(r, label=label) for r, label in later], SCHEMA)
    pq.write_table(table, new, row_group_size=2)  # an older version's part, row 3 twice
    target = tmp_path / "results.parquet"
    merge_in_order([old, new], target, SCHEMA.remove(0))
    out = pq.read_table(target)
    assert out.column("id").to_pylist() == [f"r{r}" for r in range(30)]
    labels = dict(zip(out.column("id").to_pylist(), out.column("label").to_pylist(), strict=True))
    assert (labels["r3"], labels["r14"], labels["r29"], labels["r4"]) == (
        "again3", "again14", "again29", "v4",
    )  # fmt: skip


@pytest.mark.parametrize("seed", range(12))
def test_the_merge_equals_a_dictionary_of_last_writes(tmp_path, monkeypatch, seed):
    """Parts of rows of their own, in order or not, overlapping or not, a row twice in one:
    the merged rows are each row's last outcome (oldest part first), in input order, over
    windows small enough to cut through every part (a window in order, each row once, is
    taken as it is; any other is sorted)."""
    import random

    from pipeline.store import sink as sink_module

    monkeypatch.setattr(sink_module, "MERGE_WINDOW", random.Random(seed).choice([5, 13, 100]))
    rng, parts, expected = random.Random(seed), [], {}
    for number in range(rng.randrange(1, 6)):
        start = rng.choice([number * 40, rng.randrange(0, 160)])
        rows = sorted(rng.sample(range(start, start + 40), rng.randrange(1, 30)))
        if rng.random() < 0.3:
            rows.insert(rng.randrange(len(rows)), rng.choice(rows))  # a row twice
        if rng.random() < 0.3:
            rng.shuffle(rows)  # an older version's part, unsorted
        labels = [f"p{number}-{i}" for i in range(len(rows))]
        path = tmp_path / f"part-{number + 1:06d}.parquet"
        table = table_of_records(
            [record(r, label=x) for r, x in zip(rows, labels, strict=True)], SCHEMA
        )
        pq.write_table(table, path, row_group_size=rng.choice([3, 7, 50]))
        parts.append(path)
        expected.update(zip(rows, labels, strict=True))
    target = tmp_path / "results.parquet"
    merge_in_order(parts, target, SCHEMA.remove(0))
    out = pq.read_table(target)
    assert out.column("id").to_pylist() == [f"r{r}" for r in sorted(expected)]
    assert out.column("label").to_pylist() == [expected[r] for r in sorted(expected)]


@pytest.mark.process  # a fresh interpreter: this one may have imported pandas already
def test_a_fold_and_a_merge_never_import_pandas(tmp_path):
    """pyarrow imports pandas (50 MB) at its first conversion of Python values; a run's
    folds and merges make none. (In a child: this process may have pandas already.)"""
    code = f"""
import sys
from pathlib import Path
import pyarrow as pa
from pipeline.store.sink import ResultSink
schema = pa.schema([("id", pa.string()), ("finished_at", pa.timestamp("us", tz="UTC"))])
sink = ResultSink(Path({str(tmp_path)!r}), schema)
for row in (1, 0, 1):
    sink.journal.append({{"_row": row, "id": f"r{{row}}", "finished_at": 5}})
sink.fold(sink.journal.seal(sink.next_part_number()))
sink.finalize()
assert "pandas" not in sys.modules, "pandas was imported"
"""
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
    assert pq.read_table(tmp_path / "results.parquet").column("id").to_pylist() == ["r0", "r1"]


@pytest.mark.parametrize("missing", [AttributeError, OSError, TypeError])
def test_a_fold_works_where_the_c_library_has_no_malloc_trim(tmp_path, monkeypatch, missing):
    """musl or macOS have no malloc_trim, Windows no CDLL(None): the fold's handing back
    of freed memory is skipped there, and the part is written all the same."""
    import ctypes

    from pipeline.store import sink as sink_module

    def no_trim(name):
        raise missing("no malloc_trim here")

    sink_module._malloc_trim.cache_clear()
    monkeypatch.setattr(ctypes, "CDLL", no_trim)
    try:
        sink = ResultSink(tmp_path, SCHEMA.remove(0))
        sink.journal.append(record(0))
        sink.fold(sink.journal.seal(sink.next_part_number()))
        assert sink_module._malloc_trim() is None
        assert pq.read_table(sink.part_files()[0]).column("id").to_pylist() == ["r0"]
    finally:
        sink_module._malloc_trim.cache_clear()
