"""The replica of an output at a URL, on a `file://` URL (pyarrow's local filesystem behind
the same FileSystem seam as S3): what is put and what stays local, what is removed from the
URL and what never is, and the lease."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pipeline.errors import UsageError
from pipeline.store.remote import Replica


def replica(tmp_path: Path, name: str = "mirror", fold_s: float = 60.0) -> Replica:
    (tmp_path / "bucket").mkdir(exist_ok=True)
    return Replica(f"file://{tmp_path}/bucket/out", tmp_path / name, fold_s)


def write(path: Path, text: str = "x") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def remote(tmp_path: Path) -> set[str]:
    base = tmp_path / "bucket" / "out"
    return {p.relative_to(base).as_posix() for p in base.rglob("*") if p.is_file()}


def test_parts_and_records_are_put_the_journal_and_lock_stay_local(tmp_path: Path) -> None:
    one = replica(tmp_path)
    local_only = (
        "journal.jsonl", ".lock", "journal-000002.sealed", "parts/.part-000002.parquet.tmp",
        ".intact.json",  # which parts this machine found intact: its own cache
        "ray/shard-0000/job.json",  # a --ray shard is its worker's to put
    )  # fmt: skip
    for name in ("job.json", "parts/part-000001.parquet", *local_only):
        write(one.mirror / name)
    assert one.push() == 2
    assert remote(tmp_path) == {"job.json", "parts/part-000001.parquet"}
    assert one.push() == 0  # nothing changed: nothing put again


def test_another_machine_pulls_and_a_merged_part_replaces_its_sources(tmp_path: Path) -> None:
    one = replica(tmp_path)
    write(one.mirror / "parts/part-000001.parquet", "a")
    write(one.mirror / "parts/part-000002.parquet", "b")
    one.push()
    other = replica(tmp_path, "elsewhere")
    assert other.pull() == 2 and (other.mirror / "parts/part-000002.parquet").read_text() == "b"
    (other.mirror / "parts/part-000001.parquet").unlink()  # consolidated into part 3
    (other.mirror / "parts/part-000002.parquet").unlink()
    write(other.mirror / "parts/part-000003.parquet", "ab")
    other.push()
    assert remote(tmp_path) == {"parts/part-000003.parquet"}


def test_a_record_the_mirror_changed_after_its_last_put_is_kept_at_the_next_pull(
    tmp_path: Path,
) -> None:
    first = replica(tmp_path)
    write(first.mirror / "run.json", '{"runs": 1}')
    first.push()
    write(first.mirror / "run.json", '{"runs": 1, "maybe_billed": ["r7"]}')  # last put refused
    again = replica(tmp_path)  # the same mirror, a later run
    assert again.pull() == 0
    assert "r7" in (again.mirror / "run.json").read_text()  # not the URL's older one
    assert again.push() == 1 and "r7" in (tmp_path / "bucket/out/run.json").read_text()


def test_a_part_that_differs_from_the_urls_is_damaged_and_fetched_again(tmp_path: Path) -> None:
    first = replica(tmp_path)
    write(first.mirror / "parts/part-000001.parquet", "rows")
    first.push()
    write(first.mirror / "parts/part-000001.parquet", "ro")  # torn on this disk since
    again = replica(tmp_path)
    assert again.pull() == 1
    assert (again.mirror / "parts/part-000001.parquet").read_text() == "rows"


def test_a_record_another_machine_changed_at_the_url_is_fetched_over_the_mirrors(
    tmp_path: Path,
) -> None:
    first = replica(tmp_path)
    write(first.mirror / "run.json", '{"runs": 1}')
    first.push()
    other = replica(tmp_path, "elsewhere")  # took the output over, ran, put its record
    other.pull()
    write(other.mirror / "run.json", '{"runs": 2, "by": "elsewhere"}')
    other.push()
    write(first.mirror / "run.json", '{"runs": 1, "b": 0}')  # changed here too, unput
    again = replica(tmp_path)
    assert again.pull() == 1
    assert "elsewhere" in (again.mirror / "run.json").read_text()  # the URL's is the newer


def test_a_shard_is_dropped_from_the_url_only_once_taken_in(tmp_path: Path) -> None:
    driver = replica(tmp_path)
    worker = Replica(f"file://{tmp_path}/bucket/out/ray/shard-0000", tmp_path / "w")
    write(worker.mirror / "parts/part-000001.parquet")
    worker.push()
    driver.pull()  # fetched to be taken in
    write(worker.mirror / "parts/part-000002.parquet")
    worker.push()  # put after the driver's fetch: not taken in yet
    (driver.mirror / "ray/shard-0000/parts/part-000001.parquet").unlink()  # merged
    driver.drop_merged_shards()
    assert remote(tmp_path) == {"ray/shard-0000/parts/part-000002.parquet"}
    (tmp_path / "w" / "parts" / "part-000002.parquet").unlink()
    driver.drop_merged_shards()  # never fetched here: never dropped, whatever the mirror
    assert remote(tmp_path) == {"ray/shard-0000/parts/part-000002.parquet"}


def test_one_run_at_a_time_and_a_dead_runs_lease_runs_out(tmp_path: Path) -> None:
    first = replica(tmp_path, fold_s=60)
    first.take_lease()
    with pytest.raises(UsageError, match="another run holds it"):
        replica(tmp_path, "second").take_lease()
    lease = tmp_path / "bucket" / "out" / ".lease"
    held = json.loads(lease.read_text())
    lease.write_text(json.dumps({**held, "expires": time.time() - 1}))  # not renewed: dead
    second = replica(tmp_path, "second")
    second.take_lease()
    first.release_lease()  # not its own any more: left alone
    assert json.loads(lease.read_text())["holder"] == second.holder
    second.release_lease()
    assert not lease.exists()


def test_a_command_reading_an_output_url_pulls_unless_a_run_here_writes_its_mirror(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`status` / `report` / `cancel` of a URL pull into its mirror under the mirror's lock;
    while a run on this machine holds it, the mirror is read as that run has it: a pull
    there would bring back the parts it merged away and put over its records."""
    from pipeline.run.replicate import local_copy
    from pipeline.store.lock import lock_output

    monkeypatch.setenv("PIPELINE_MIRRORS", str(tmp_path / "mirrors"))
    (tmp_path / "bucket").mkdir()
    url = f"file://{tmp_path}/bucket/out"
    writer = Replica(url, tmp_path / "elsewhere")
    write(writer.mirror / "parts/part-000001.parquet", "a")
    write(writer.mirror / "run.json", "first")
    writer.push()
    mirror = local_copy(url)
    assert (mirror / "run.json").read_text() == "first"  # pulled
    (mirror / "parts/part-000001.parquet").unlink()  # the run here merged it away...
    write(mirror / "parts/part-000002.parquet", "a")  # ...into a newer part
    write(writer.mirror / "run.json", "second")
    writer.push()
    with contextlib.closing(lock_output(mirror)):  # a run here holds its mirror
        assert local_copy(url) == mirror
        assert "a run on this machine is writing its mirror" in capsys.readouterr().err
        assert sorted(p.name for p in (mirror / "parts").iterdir()) == ["part-000002.parquet"]
        assert (mirror / "run.json").read_text() == "first"  # as the run has it
    local_copy(url)  # the run ended: pulled again
    assert (mirror / "run.json").read_text() == "second"


def test_an_output_url_is_worked_in_a_mirror_named_after_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipeline.errors import JobFileError
    from pipeline.job.load import job_from_dict

    monkeypatch.setenv("PIPELINE_MIRRORS", str(tmp_path / "mirrors"))
    table = {
        "job": {"input": "s3://bucket/in/", "output": "s3://bucket/out/run-1/", "fold_s": 5},
        "request": {"model": "m", "max_tokens": 8, "prompt": "{text}"},
    }
    job = job_from_dict(table)
    assert job.input == "s3://bucket/in/" and job.output_url == "s3://bucket/out/run-1"
    assert job.output.parent == tmp_path / "mirrors" and "bucket_out_run-1" in job.output.name
    assert job.fold_s == 5 and job_from_dict({**table, "job": {"input": "x.csv"}}).fold_s == 60
    other = job_from_dict({**table, "job": {**table["job"], "output": "s3://bucket/out/run-2"}})
    assert other.output != job.output  # one mirror an output
    with pytest.raises(JobFileError, match=r"\[job\] fold_s"):
        job_from_dict({**table, "job": {**table["job"], "fold_s": 0}})


def test_a_part_merged_away_while_pushing_stays_at_the_url_until_its_merge_is_put(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A push runs beside the run: a part listed, then merged away (consolidate) before
    it is read, is skipped, not an error, and kept at the URL: the merged part holding its
    rows is not there yet."""
    one = replica(tmp_path)
    write(one.mirror / "parts/part-000001.parquet", "a")
    one.push()
    write(one.mirror / "parts/part-000002.parquet", "b")
    listed = list(one._local_files())
    (one.mirror / "parts/part-000002.parquet").unlink()  # merged with part 1 into part 3...
    (one.mirror / "parts/part-000001.parquet").unlink()
    monkeypatch.setattr(one, "_local_files", lambda: iter(listed))  # ...after the listing
    one.push()
    assert remote(tmp_path) == {"parts/part-000001.parquet"}  # kept: its rows' only copy
    write(one.mirror / "parts/part-000003.parquet", "ab")
    monkeypatch.undo()
    one.push()
    assert remote(tmp_path) == {"parts/part-000003.parquet"}


def test_a_store_that_refuses_a_push_is_said_once_and_tried_again_at_the_next_fold(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The push loop outlives a store that refuses for a while (it used to end on the
    first refusal: nothing was put, nor the lease renewed, for the rest of the run)."""
    import asyncio

    one = replica(tmp_path)
    write(one.mirror / "parts/part-000001.parquet", "a")
    answers = iter([OSError("503 Slow Down"), OSError("503 Slow Down"), None, None])
    tried: list[int] = []
    put_once = asyncio.Event()
    real_push = one.push

    def push() -> int:
        tried.append(1)
        error = next(answers)
        if error is not None:
            raise error
        put = real_push()
        put_once.set()
        return put

    async def fold_now() -> None:
        return None

    async def run() -> None:
        monkeypatch.setattr(one, "push", push)
        task = asyncio.create_task(one.keep_pushing(fold_now, 0.001))
        await asyncio.wait_for(put_once.wait(), timeout=10)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(run())
    assert len(tried) >= 3 and remote(tmp_path) >= {"parts/part-000001.parquet"}
    err = capsys.readouterr().err
    assert err.count("could not put to it (503 Slow Down)") == 1  # once, not every fold
    assert str(one.mirror) in err and "reached again" in err


def test_a_refused_last_put_is_one_line_naming_where_the_answers_wait(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import asyncio

    from pipeline.errors import OutputUnreachable
    from pipeline.run.replicate import _put_at_end

    one = replica(tmp_path)
    one.take_lease()

    def refuse() -> int:
        raise OSError("AccessDenied: no write")

    monkeypatch.setattr(one, "push", refuse)
    with pytest.raises(OutputUnreachable) as stopped:
        asyncio.run(_put_at_end(one, None))
    line = str(stopped.value)
    assert "\n" not in line and one.url in line and str(one.mirror) in line
    assert stopped.value.exit_code == 6 and "run again" in line
    assert ".lease" not in remote(tmp_path)  # let go all the same
    # a run already ending on its own error ends on it; this one is said beside it
    asyncio.run(_put_at_end(one, RuntimeError("the run's own")))
    assert "could not put to it (AccessDenied: no write)" in capsys.readouterr().err


def test_a_lease_that_could_run_out_before_the_next_try_stops_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Renewals refused until the lease could lapse: the run is stopped (exit 6, one line)
    before another run may take the output over, so two never send the same rows."""
    import asyncio

    from pipeline.errors import JobStopped, OutputUnreachable

    one = replica(tmp_path, fold_s=0.05)  # a lease of 0.15 s
    one.take_lease()

    def refuse() -> None:
        raise OSError("connection refused")

    async def fold_now() -> None:
        return None

    stops: list[JobStopped] = []
    monkeypatch.setattr(one, "renew_lease", refuse)
    asyncio.run(asyncio.wait_for(one.keep_pushing(fold_now, 0.05, stops.append), timeout=10))
    [stop] = stops  # once, and the loop ended with it
    assert isinstance(stop, OutputUnreachable) and stop.exit_code == 6
    line = str(stop)
    assert "lease could not be renewed (connection refused)" in line and "\n" not in line
    assert str(one.mirror) in line


def test_a_run_whose_output_was_taken_over_puts_nothing_over_the_other_runs(
    tmp_path: Path,
) -> None:
    import asyncio

    from pipeline.errors import OutputUnreachable
    from pipeline.run.replicate import _put_at_end

    one = replica(tmp_path)
    one.take_lease()
    write(one.mirror / "parts/part-000005.parquet", "this run's")
    other = replica(tmp_path, "elsewhere")
    other.renew_lease()  # one's lease ran out, and another run took the output over
    with pytest.raises(OutputUnreachable, match="another run took it over") as stopped:
        asyncio.run(_put_at_end(one, None))
    assert str(one.mirror) in str(stopped.value)
    assert remote(tmp_path) == {".lease"}  # nothing put over the other run's parts
    assert json.loads((tmp_path / "bucket/out/.lease").read_text())["holder"] == other.holder


def test_a_replica_without_a_lease_of_its_own_is_never_stopped_for_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A --ray worker's shard replica takes no lease (the driver holds the output's): none
    is renewed (no lease object is left at the shard's URL), and a store refusing its
    pushes is tried again, the worker not stopped for a lease."""
    import asyncio

    from pipeline.errors import JobStopped

    shard = Replica(f"file://{tmp_path}/bucket/out/ray/shard-0000", tmp_path / "w", 0.01)
    tries: list[int] = []
    third = asyncio.Event()

    def refuse() -> None:
        tries.append(1)
        if len(tries) >= 3:
            third.set()
        raise OSError("connection refused")

    async def fold_now() -> None:
        return None

    async def run() -> None:
        task = asyncio.create_task(shard.keep_pushing(fold_now, 0.01, stops.append))
        await asyncio.wait_for(third.wait(), timeout=10)
        assert not task.done()  # still trying
        task.cancel()

    stops: list[JobStopped] = []
    renewed: list[int] = []
    monkeypatch.setattr(shard, "push", refuse)
    monkeypatch.setattr(shard, "renew_lease", lambda: renewed.append(1))
    asyncio.run(run())
    assert renewed == []
    assert stops == []


def test_a_lease_keeper_renews_when_due_and_stops_the_run_before_the_lease_could_lapse(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """What a --ray driver calls at every turn of its loop (its event loop is held): the
    lease renewed once a fold_s after its last renewal, and keep_pushing's stop when
    renewals are refused."""
    from pipeline.errors import OutputUnreachable
    from pipeline.store.remote import LeaseKeeper

    one = replica(tmp_path, fold_s=0.1)  # a lease of 0.3 s
    one.take_lease()
    keeper = LeaseKeeper(one, 0.1)
    renewed: list[float] = []
    renew = one.renew_lease
    monkeypatch.setattr(one, "renew_lease", lambda: (renewed.append(time.time()), renew())[1])
    assert keeper() is None and renewed == []  # renewed just now (taken): not due
    taken_at = one.expires - one.lease_s
    wait_until(lambda: keeper() is None and bool(renewed))
    assert renewed[0] >= taken_at + 0.1  # a fold_s after the last renewal, not before
    assert keeper() is None and len(renewed) == 1  # once a fold_s, not at every turn

    def refuse() -> None:
        raise OSError("503 Slow Down")

    monkeypatch.setattr(one, "renew_lease", refuse)
    reasons: list[object] = []
    wait_until(lambda: bool(reasons.extend(r for r in [keeper()] if r is not None) or reasons))
    (reason,) = reasons
    assert isinstance(reason, OutputUnreachable) and reason.exit_code == 6
    assert "lease could not be renewed" in str(reason) and time.time() < one.expires
    assert capsys.readouterr().err.count("could not put to it (503 Slow Down)") == 1


def wait_until(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 10
    while not condition():
        assert time.monotonic() < deadline, "waited 10 s"
        time.sleep(0.005)


def test_a_lapsed_lease_another_run_took_is_never_taken_back(tmp_path: Path) -> None:
    """A run whose loop was held past its lease (a long merge) finds another run holding
    the output: it stops, and the other run's lease stays the other run's."""
    from pipeline.errors import OutputUnreachable
    from pipeline.store.remote import LeaseKeeper

    one = replica(tmp_path, fold_s=0.05)
    one.take_lease()
    wait_until(lambda: time.time() > one.expires)  # held past it
    other = replica(tmp_path, "elsewhere", fold_s=60)
    other.take_lease()
    with pytest.raises(OutputUnreachable, match="another run took the output over"):
        one.renew_held()
    stop = LeaseKeeper(one, 0.05)()
    assert isinstance(stop, OutputUnreachable)
    assert other.holds_lease() and not one.holds_lease()


class ResetOnTheSecondRead:
    """A filesystem whose second read fails (a connection reset part-way through a pull)."""

    def __init__(self, filesystem: Any) -> None:
        self.filesystem, self.reads = filesystem, 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.filesystem, name)

    def open_input_stream(self, path: str) -> Any:
        self.reads += 1
        if self.reads == 2:
            raise OSError("connection reset")
        return self.filesystem.open_input_stream(path)


def test_a_pull_that_fails_part_way_leaves_the_urls_parts_where_they_are(tmp_path: Path) -> None:
    first = replica(tmp_path)
    for n in (1, 2):
        write(first.mirror / f"parts/part-00000{n}.parquet", f"rows {n}")
    first.push()
    again = replica(tmp_path, "elsewhere")
    filesystem = again.filesystem
    again.filesystem = ResetOnTheSecondRead(filesystem)
    with pytest.raises(OSError, match="connection reset"):
        again.pull()
    again.filesystem = filesystem
    again.push()  # what a run's end would put: nothing the mirror lacks is removed
    assert {"parts/part-000001.parquet", "parts/part-000002.parquet"} <= remote(tmp_path)


def test_a_cascade_phases_part_that_differs_is_damaged_and_fetched_again(tmp_path: Path) -> None:
    first = replica(tmp_path)
    part = "cascade/stage-0/parts/part-000001.parquet"
    write(first.mirror / part, "phase rows")
    first.push()
    write(first.mirror / part, "phase")  # torn on this disk since
    again = replica(tmp_path)
    assert again.pull() == 1 and (again.mirror / part).read_text() == "phase rows"


@pytest.mark.parametrize("started", [False, True])
def test_a_ray_drivers_pull_of_its_shards_from_an_unreachable_store_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, started: bool
) -> None:
    """Before the workers start, as any run's start (exit 2: nothing sent); after, a stop
    saying where their answers wait (exit 6): never an internal error."""
    from types import SimpleNamespace

    from pipeline.errors import OutputUnreachable
    from pipeline.run.replicate import pull_shards

    def refused(self: Replica) -> int:
        raise OSError("When listing objects under key 'out/ray': connection refused")

    monkeypatch.setattr(Replica, "pull", refused)
    url = f"file://{tmp_path}/bucket/out"
    job = SimpleNamespace(output_url=url, output=tmp_path / "mirror", fold_s=60.0)
    expected = OutputUnreachable if started else UsageError
    with pytest.raises(expected) as stopped:
        pull_shards(job, started=started)  # type: ignore[arg-type]
    line = str(stopped.value)
    assert "\n" not in line and url in line and "connection refused" in line
    assert ("run again to take them in" in line) == started
    assert ("nothing was sent" in line) == (not started)


def test_a_record_rewritten_at_the_same_size_is_put(tmp_path: Path) -> None:
    """run.json's counts and times often keep their width from one run to the next."""
    one = replica(tmp_path)
    write(one.mirror / "run.json", '{"rows_ok": 1000, "at": "12:00:01"}')
    one.push()
    write(one.mirror / "run.json", '{"rows_ok": 2000, "at": "12:30:07"}')  # this run
    assert one.push() == 1
    again = replica(tmp_path)  # a later run here, after a pull
    again.pull()
    write(again.mirror / "run.json", '{"rows_ok": 3000, "at": "13:10:44"}')
    assert again.push() == 1
    assert "3000" in (tmp_path / "bucket/out/run.json").read_text()


def test_a_record_another_machine_rewrote_at_the_same_size_is_fetched(tmp_path: Path) -> None:
    first = replica(tmp_path)
    write(first.mirror / "run.json", '{"rows_ok": 1000, "at": "12:00:01"}')
    first.push()
    other = replica(tmp_path, "elsewhere")
    other.pull()  # took the output over, within the same second
    write(other.mirror / "run.json", '{"rows_ok": 2000, "at": "12:30:07"}')
    other.push()
    again = replica(tmp_path)
    assert again.pull() == 1
    assert "2000" in (again.mirror / "run.json").read_text()


def test_a_start_whose_lease_read_back_failed_lets_its_lease_go(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lease was put, reading it back failed: the run stops in one line, and a run
    started right after is not refused by the lease of the one that never ran."""
    import asyncio
    from types import SimpleNamespace

    from pipeline.run.replicate import replicated

    (tmp_path / "bucket").mkdir()
    url = f"file://{tmp_path}/bucket/out"
    job = SimpleNamespace(output_url=url, output=tmp_path / "mirror", fold_s=60.0)
    real, reads = Replica._read_lease, []

    def flaky(self: Replica) -> dict[str, Any] | None:
        reads.append(1)
        if len(reads) == 2:  # take_lease's read-back
            raise OSError("When reading information for key 'out/.lease': timed out")
        return real(self)

    async def start() -> None:
        async with replicated(job, SimpleNamespace(fresh=False)):  # type: ignore[arg-type]
            pass

    monkeypatch.setattr(Replica, "_read_lease", flaky)
    with pytest.raises(UsageError, match="cannot reach it"):
        asyncio.run(start())
    monkeypatch.setattr(Replica, "_read_lease", real)
    assert not (tmp_path / "bucket/out/.lease").exists()
    asyncio.run(start())  # the next run takes the output at once


def test_shard_files_a_failed_pull_fetched_are_still_taken_in_and_dropped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A driver's pull of its workers' shards fails after fetching some: the next pull
    keeps those (their size is the URL's) and still notes them as taken, so once merged
    they are dropped from the URL and never fetched and merged again."""
    one = replica(tmp_path)
    base = tmp_path / "bucket/out"
    for name in ("ray/shard-0001/job.json", "ray/shard-0001/parts/part-000001.parquet"):
        write(base / name, name)
    real, calls = one.filesystem.open_input_stream, []

    def cut(path: str) -> Any:
        calls.append(path)
        if len(calls) == 2:
            raise OSError("connection reset")
        return real(path)

    monkeypatch.setattr(one, "filesystem", _Wrapped(one.filesystem, open_input_stream=cut))
    with pytest.raises(OSError):
        one.pull()
    again = replica(tmp_path)
    again.pull()
    for path in (again.mirror / "ray/shard-0001").rglob("*"):  # merged into the parts
        if path.is_file():
            path.unlink()
    again.push()
    again.drop_merged_shards()
    assert not [name for name in remote(tmp_path) if name.startswith("ray/")]


class _Wrapped:
    """A filesystem with some of its methods replaced."""

    def __init__(self, inner: Any, **replaced: Any) -> None:
        self._inner, self._replaced = inner, replaced

    def __getattr__(self, name: str) -> Any:
        return self._replaced.get(name) or getattr(self._inner, name)


def test_a_damaged_copy_of_a_part_the_size_of_the_urls_is_fetched_again(tmp_path: Path) -> None:
    """Rot on the mirror's disk keeps a part's size: kept for it, the run would find it
    damaged, set it aside (--set-aside-damaged) and pay for its rows again, and the next
    push would remove the URL's good copy. The pull checks what it keeps."""
    import pyarrow as pa

    from pipeline.store.parts import write_parquet

    one = replica(tmp_path)
    part = one.mirror / "parts/part-000001.parquet"
    part.parent.mkdir(parents=True)
    table = pa.table({"_row": list(range(500)), "text": [f"answer {i}" for i in range(500)]})
    write_parquet(table, part)
    one.push()
    good = part.read_bytes()
    rotten = bytearray(good)
    rotten[len(good) // 3] ^= 0xFF  # in a page
    part.write_bytes(bytes(rotten))
    again = replica(tmp_path)
    assert again.pull() == 1
    assert part.read_bytes() == good
    assert again.push() == 0 and "parts/part-000001.parquet" in remote(tmp_path)


def test_a_store_that_lists_milliseconds_and_heads_seconds_keeps_the_mirrors_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Some S3-compatible stores list an object's time in milliseconds and answer a HEAD
    in whole seconds: the mirror must know its puts as the pull's listing will see them,
    or every record it put looks changed at the URL and is fetched over its own."""
    import pyarrow.fs as pafs

    def store(one: Replica) -> None:
        inner = one.filesystem

        def info(what: Any) -> Any:
            found = inner.get_file_info(what)
            listed = isinstance(what, pafs.FileSelector)
            return [
                pafs.FileInfo(
                    i.path,
                    i.type,
                    size=i.size,
                    mtime_ns=(i.mtime_ns // 10**9) * 10**9 + (911_000_000 if listed else 0),
                )
                if i.type == pafs.FileType.File
                else i
                for i in found
            ]

        monkeypatch.setattr(one, "filesystem", _Wrapped(inner, get_file_info=info))

    first = replica(tmp_path)
    store(first)
    (tmp_path / "bucket/out").mkdir(parents=True)  # (not a LocalFileSystem now: no dirs made)
    write(first.mirror / "run.json", '{"runs": 1}')
    assert first.push() == 1
    write(first.mirror / "run.json", '{"runs": 1, "maybe_billed": ["r7"]}')  # put refused
    again = replica(tmp_path)  # the same mirror, a later run
    store(again)
    assert again.pull() == 0
    assert "r7" in (again.mirror / "run.json").read_text()


def test_a_pull_that_outlasted_the_lease_never_renews_over_the_run_that_took_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncio
    from types import SimpleNamespace

    from pipeline.errors import OutputUnreachable
    from pipeline.run.replicate import replicated

    (tmp_path / "bucket").mkdir()
    url = f"file://{tmp_path}/bucket/out"
    job = SimpleNamespace(output_url=url, output=tmp_path / "mirror", fold_s=60.0)
    other = replica(tmp_path, "elsewhere")

    def long_pull(self: Replica) -> int:
        self.expires = time.time() - 1  # the pull outlasted the lease...
        other.take_lease()  # ...and another run took the output over meanwhile
        return 0

    async def start() -> None:
        async with replicated(job, SimpleNamespace(fresh=False)):  # type: ignore[arg-type]
            pass

    monkeypatch.setattr(Replica, "pull", long_pull)
    monkeypatch.setattr(Replica, "take_lease", lambda self: self.renew_lease())
    with pytest.raises(OutputUnreachable, match="another run took the output over"):
        asyncio.run(start())
    assert json.loads((tmp_path / "bucket/out/.lease").read_text())["holder"] == other.holder


def test_the_pulls_check_of_kept_parts_leaves_the_runs_check_nothing_to_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pull takes what the check started ahead found and remembers it: the run's own
    check of the same parts then hashes them, reading none whole a second time."""
    import pyarrow as pa

    from pipeline.store import part_check
    from pipeline.store.parts import write_parquet

    one = replica(tmp_path)
    for number in (1, 2):
        part = one.mirror / f"parts/part-00000{number}.parquet"
        part.parent.mkdir(parents=True, exist_ok=True)
        rows = number * 100
        table = {"_row": list(range(rows)), "status": ["ok"] * rows, "cost_usd": [0.5] * rows}
        write_parquet(pa.table(table), part)
    one.push()
    whole: list[Path] = []
    real = part_check._read_whole
    monkeypatch.setattr(
        part_check, "_read_whole", lambda p, *a, **k: whole.append(p) or real(p, *a, **k)
    )
    part_check.check_ahead(one.mirror / "parts")  # as the command line starts it
    again = replica(tmp_path)
    assert again.pull() == 0
    parts = sorted((one.mirror / "parts").glob("part-*.parquet"))
    assert sorted(whole) == parts  # read whole once: ahead
    assert part_check.damaged_parts(parts) == []  # the run's check
    assert sorted(whole) == parts  # not again
