"""What is on disk before what is deleted: a sealed journal, the only other copy of its
rows, goes only after its part file and the parts directory are fsync'd; job.json and
run.json are fsync'd too. And a write that fails part-way leaves no torn record."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pyarrow as pa
import pytest

from pipeline.store import checkpoint
from pipeline.store.journal import Journal, read_records
from pipeline.store.sink import ResultSink


def schema() -> pa.Schema:
    return pa.schema([pa.field("id", pa.string()), pa.field("status", pa.string())])


@pytest.fixture
def events(monkeypatch):
    """Every fsync (by the path of its descriptor) and every unlink, in order."""
    log: list[tuple[str, str]] = []
    real_fsync, real_unlink = os.fsync, os.unlink

    def fsync(fd: int) -> None:
        log.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def unlink(path, *args, **kwargs) -> None:
        log.append(("unlink", str(Path(path).resolve())))
        real_unlink(path, *args, **kwargs)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "unlink", unlink)
    return log


def test_a_part_and_its_directory_are_on_disk_before_the_journal_goes(tmp_path, events):
    sink = ResultSink(tmp_path, schema(), rows_per_part=1000)
    for i in range(3):
        sink.journal.append({"_row": i, "id": f"r{i}", "status": "ok"})
    sealed = sink.journal.seal(sink.next_part_number())
    events.clear()
    sink.fold(sealed)
    part = str((tmp_path / "parts" / "part-000001.parquet").resolve())
    order = [event for event in events if event[0] in ("fsync", "unlink")]
    unlink_at = order.index(("unlink", str(sealed.resolve())))
    synced_before = [path for kind, path in order[:unlink_at] if kind == "fsync"]
    assert any(p.endswith(".part-000001.parquet.tmp") for p in synced_before)  # the data
    assert str((tmp_path / "parts").resolve()) in synced_before  # the rename
    assert Path(part).exists()
    assert ("fsync", str(tmp_path.resolve())) in order[unlink_at:]  # the unlink itself


def test_job_json_is_fsyncd_with_its_directory(tmp_path, events):
    checkpoint.check_same_job(tmp_path / "out", {"a": 1}, {})
    synced = [path for kind, path in events if kind == "fsync"]
    assert any(p.endswith(".job.json.tmp") for p in synced)
    assert str((tmp_path / "out").resolve()) in synced


def test_a_failed_append_is_cut_back_and_leaves_no_torn_record(tmp_path, monkeypatch):
    journal = Journal(tmp_path)
    journal.append({"row": 1})
    real_write = os.write

    def half_then_full(fd: int, data) -> int:
        monkeypatch.setattr(os, "write", full)
        return real_write(fd, bytes(data[: len(data) // 2]))  # a short write, then ENOSPC

    def full(fd: int, data) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", half_then_full)
    with pytest.raises(OSError):
        journal.append({"row": 2, "text": "x" * 100})
    monkeypatch.setattr(os, "write", real_write)
    journal.append({"row": 3})
    journal.close()
    assert list(read_records(tmp_path / "journal.jsonl")) == [{"row": 1}, {"row": 3}]
