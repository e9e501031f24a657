"""The store's pieces on their own (no subprocess): journal lines, folds interrupted at
each step, the latest outcome of a row, the lock."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.errors import UsageError
from pipeline.store import checkpoint
from pipeline.store.journal import Journal, read_records, sealed_name
from pipeline.store.layout import part_files, part_name
from pipeline.store.sink import ResultSink, merge_in_order


def schema() -> pa.Schema:
    return pa.schema(
        [
            pa.field("id", pa.string()),
            pa.field("status", pa.string()),
            pa.field("cost_usd", pa.float64()),
        ]
    )


def record(row: int, status: str = "ok", cost: float = 0.5) -> dict:
    return {"_row": row, "id": f"r{row}", "status": status, "cost_usd": cost}


def test_a_torn_last_line_and_a_garbled_one_are_skipped_with_a_warning(tmp_path, capsys):
    journal = Journal(tmp_path)
    for row in range(3):
        journal.append(record(row))
    journal.close()
    path = tmp_path / "journal.jsonl"
    lines = path.read_bytes().split(b"\n")
    lines[1] = b'{"_row": 1, "id": "r1", "sta'  # garbled in the middle
    path.write_bytes(b"\n".join(lines[:3]) + b'\n{"_row": 3, "id"')  # and a torn tail
    rows = [r["_row"] for r in read_records(path)]
    assert rows == [0, 2]
    err = capsys.readouterr().err
    assert "bad line at line 2" in err and "torn last record" in err


def sink_with_sealed(tmp_path, rows: list[dict]) -> tuple[ResultSink, object]:
    sink = ResultSink(tmp_path, schema())
    for r in rows:
        sink.journal.append(r)
    sealed = sink.journal.seal(sink.next_part_number())
    return sink, sealed


def test_a_sealed_journal_beside_its_part_is_removed_not_folded_twice(tmp_path):
    sink, sealed = sink_with_sealed(tmp_path, [record(0), record(1)])
    sink.fold(sealed)  # the part is written...
    (tmp_path / sealed_name(1)).write_bytes(b'{"_row": 0}\n')  # ...a crash left the journal
    ResultSink(tmp_path, schema())  # the next start
    assert not (tmp_path / sealed_name(1)).exists()
    assert [pq.read_table(p).num_rows for p in part_files(tmp_path)] == [2]


def test_a_sealed_journal_without_its_part_is_folded_at_the_next_start(tmp_path):
    sink, sealed = sink_with_sealed(tmp_path, [record(0), record(1), record(2)])
    del sink  # a crash before the fold
    ResultSink(tmp_path, schema())
    assert not sealed.exists()
    assert pq.read_table(part_files(tmp_path)[0]).column("_row").to_pylist() == [0, 1, 2]


def test_a_half_written_part_is_ignored_and_its_journal_folded(tmp_path):
    sink_with_sealed(tmp_path, [record(0)])
    (tmp_path / "parts" / f".{part_name(1)}.tmp").write_bytes(b"PAR1 half")  # killed mid-write
    ResultSink(tmp_path, schema())
    assert [p.name for p in part_files(tmp_path)] == [part_name(1)]
    assert pq.read_table(part_files(tmp_path)[0]).num_rows == 1


def test_a_live_journal_left_by_a_crash_is_folded(tmp_path):
    sink = ResultSink(tmp_path, schema())
    sink.journal.append(record(7))
    sink.journal.sync()  # then the process dies: no close, no fold
    ResultSink(tmp_path, schema())
    assert pq.read_table(part_files(tmp_path)[0]).column("id").to_pylist() == ["r7"]


def write_part(tmp_path, number: int, rows: list[dict]) -> None:
    sink = ResultSink(tmp_path, schema())
    sink.write_part(tmp_path / "parts" / part_name(number), rows)


def test_the_latest_outcome_of_a_row_wins_everywhere(tmp_path):
    write_part(tmp_path, 1, [record(0, "error", 0.0), record(1), record(2, "error", 0.0)])
    write_part(tmp_path, 2, [record(0, "ok", 0.25)])  # --retry-errors answered row 0
    state = checkpoint.resume_state(tmp_path)
    assert state.done_rows.to_list() == [0, 1, 2]
    assert state.error_rows.to_list() == [2]
    assert state.spent_usd == pytest.approx(0.75)
    retry = checkpoint.resume_state(tmp_path, retry_errors=True)
    assert retry.done_rows.to_list() == [0, 1]  # row 2 is to be sent again
    target = tmp_path / "merged.parquet"
    merge_in_order(part_files(tmp_path), target, schema())
    merged = pq.read_table(target)
    assert merged.column("status").to_pylist() == ["ok", "ok", "error"]
    assert merged.column("id").to_pylist() == ["r0", "r1", "r2"]


def test_one_run_at_a_time_holds_the_lock(tmp_path):
    first = checkpoint.lock_output(tmp_path / "out")
    with pytest.raises(UsageError, match="in use by another run"):
        checkpoint.lock_output(tmp_path / "out")
    first.close()
    checkpoint.lock_output(tmp_path / "out").close()  # free again once the first ends


def test_a_part_of_answers_in_any_order_is_sorted_in_narrow_row_groups(tmp_path):
    """A batch's answers come in any order: its parts are sorted by input position, in row
    groups of a narrow range each (so a merge window reads only what it meets), and a row
    with two outcomes in one journal keeps the later one."""
    order = [(row * 7919) % 5000 for row in range(5000)]  # every row once, shuffled
    rows = [record(row) for row in order] + [record(42, "error", 0.0)]
    sink, sealed = sink_with_sealed(tmp_path, rows)
    sink.fold(sealed)
    (part,) = part_files(tmp_path)
    metadata = pq.ParquetFile(part).metadata
    assert metadata.num_row_groups == 6  # 5,001 rows, 1,000 a group
    positions = pq.read_table(part, columns=["_row"]).column(0).to_pylist()
    assert positions == sorted(positions)
    first = metadata.row_group(0).column(0).statistics
    assert first.min == 0 and first.max < 1000  # a narrow range, not the whole input
    merge_in_order([part], tmp_path / "out.parquet", sink.schema)
    merged = pq.read_table(tmp_path / "out.parquet").to_pylist()
    assert len(merged) == 5000 and merged[42]["status"] == "error"  # the later outcome


def test_a_part_number_is_never_handed_out_twice_while_a_fold_renames(tmp_path):
    """A fold in the background renames its part in, then removes its sealed journal: a
    listing between the two sees neither. The number must not come round again: a
    journal sealed under it would be removed, rows and all, by a fold that finds the part
    already there."""
    sink, first = sink_with_sealed(tmp_path, [record(0), record(1)])
    first.unlink()  # the window: the sealed journal gone, its part not yet renamed in
    for r in (record(2), record(3)):
        sink.journal.append(r)
    second = sink.journal.seal(sink.next_part_number())
    assert second != first  # another number: its own part
    sink.write_part(tmp_path / "parts" / part_name(1), [record(0), record(1)])  # renamed in
    sink.fold(second)
    rows = sorted(r for p in part_files(tmp_path) for r in pq.read_table(p)["_row"].to_pylist())
    assert rows == [0, 1, 2, 3]  # nothing folded away


def test_a_fold_asked_for_once_close_began_seals_nothing(tmp_path):
    """An output at a URL folds and pushes every fold_s beside the run, up to its very end:
    a fold asked for while the sink closes leaves its journal to close (sealing it then
    raced close's own fold: the journal renamed under it, the run failed at its end)."""
    import asyncio

    async def run() -> ResultSink:
        sink = ResultSink(tmp_path, schema())
        sink.add(record(0))
        await sink.close()
        await sink.fold_now()  # the push loop's turn, after close
        return sink

    sink = asyncio.run(run())
    assert sink.write_error is None
    rows = [r for p in part_files(tmp_path) for r in pq.read_table(p)["_row"].to_pylist()]
    assert rows == [0]
