"""Work started ahead (pipeline.ahead): a run's input opened and its digest taken on the
ahead thread, beside the command's imports, and the answer taken by the plan only for the
input's file as it was then; a file changed since is read again, an error found ahead is the
plan's own, and work not begun when asked for is done by the asker, once. A module imported
beside is imported on a thread of its own, and a failure there is left for the command's
own import."""

from __future__ import annotations

import os
import sys
import threading
from concurrent import futures
from pathlib import Path

import polars as pl
import pytest

from pipeline import ahead
from pipeline.commands.checks import start_ahead
from pipeline.errors import InputError
from pipeline.input import source
from pipeline.job.load import load_job
from pipeline.job.options import RunOptions
from pipeline.store import manifest
from tests.ahead_helpers import threads_calling, wait_for_ahead
from tests.e2e import label_job


@pytest.fixture
def reviews(tmp_path: Path) -> Path:
    path = tmp_path / "in.csv"
    pl.DataFrame({"id": [f"r{i:03d}" for i in range(300)], "text": ["t"] * 300}).write_csv(path)
    return path


def openings(monkeypatch) -> list[str]:
    """The thread each real opening of the input ran on."""
    return threads_calling(monkeypatch, source, "_open_now")


def later(path: Path) -> None:
    """A modification time no clock's resolution can take for the earlier one."""
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))


def test_the_input_opened_ahead_is_taken_not_read_again(reviews, monkeypatch):
    threads = openings(monkeypatch)
    source.open_ahead(reviews, "id", limit=None)
    wait_for_ahead()
    opened = source.open_source(reviews, "id")
    assert threads == ["ahead"]  # read once, on the ahead thread
    inline = source._open_now(reviews, "id", None)
    assert (opened.total_rows, opened.rows_in_scope, opened.schema) == (
        inline.total_rows,
        inline.rows_in_scope,
        inline.schema,
    )
    assert source.open_source(reviews, "id").total_rows == 300  # taken once: read again


def test_another_question_of_the_same_file_is_not_given_the_answer(reviews, monkeypatch):
    threads = openings(monkeypatch)
    source.open_ahead(reviews, "id", limit=None)
    wait_for_ahead()
    assert source.open_source(reviews, "id", limit=10).rows_in_scope == 10  # read here
    assert source.open_source(reviews, "id").total_rows == 300  # the answer, still kept
    assert threads == ["ahead", "MainThread"]


def test_an_input_changed_since_is_read_again_as_it_is_now(reviews, monkeypatch):
    threads = openings(monkeypatch)
    source.open_ahead(reviews, "id", limit=None)
    wait_for_ahead()
    with reviews.open("a") as file:
        file.write("r000,a duplicate id\n")
    later(reviews)
    with pytest.raises(InputError, match="duplicate values"):
        source.open_source(reviews, "id")
    assert threads == ["ahead", "MainThread"]


def test_what_the_input_opened_ahead_refuses_the_plan_refuses_alike(reviews):
    reviews.write_text("id,text\nr1,a\nr1,b\n")
    with pytest.raises(InputError) as inline:
        source.open_source(reviews, "id")
    source.open_ahead(reviews, "id", limit=None)
    wait_for_ahead()
    with pytest.raises(InputError) as taken:
        source.open_source(reviews, "id")
    assert str(taken.value) == str(inline.value)


def test_a_directory_or_glob_is_not_opened_ahead(reviews):
    named_like_a_glob = reviews.with_name("in[1].csv")  # a file: read as a glob, in1.csv
    named_like_a_glob.write_bytes(reviews.read_bytes())
    for where in (reviews.parent, named_like_a_glob):
        source.open_ahead(where, "id", limit=None)
        manifest.identity_ahead(where)
    assert not ahead._started


def test_an_input_path_the_system_refuses_to_look_at_starts_nothing(tmp_path):
    """Work ahead is never a reason to refuse: the run refuses in its own order."""
    job = load_job(label_job(tmp_path, tmp_path / ("x" * 300 + ".csv")))  # ENAMETOOLONG
    start_ahead(job, RunOptions())
    assert not ahead._started


def test_the_digest_taken_ahead_is_the_inputs_and_a_change_is_digested_again(reviews):
    before = manifest.input_identity(reviews)
    manifest.identity_ahead(reviews)
    wait_for_ahead()
    (started,) = ahead._started.values()
    with futures.ThreadPoolExecutor(1) as pool:
        taken = manifest.identity_soon(reviews, pool)
        assert taken is started and taken.result() == before
        manifest.identity_ahead(reviews)
        wait_for_ahead()
        reviews.write_text(reviews.read_text().replace("r001", "r00X"))  # the same size
        later(reviews)
        now = manifest.identity_soon(reviews, pool).result()
    assert now != before and now == manifest.input_identity(reviews)
    ahead._started.clear()  # the answer about the file as it was, never taken
    manifest.identity_ahead(reviews)  # as a cascade's command line starts it
    wait_for_ahead()
    assert manifest.identity_now(reviews) == now and not ahead._started  # taken


def test_work_not_begun_when_asked_for_is_the_askers_and_never_runs(monkeypatch):
    began, gate, ran = threading.Event(), threading.Event(), []

    def hold() -> bool:
        began.set()
        return gate.wait()

    ahead.start("first", hold)  # holds the ahead thread
    assert began.wait(timeout=30)
    ahead.start("second", lambda: ran.append("second"))
    ahead.start("second", lambda: ran.append("started twice"))  # once a key
    assert ahead.take("second") is None  # not begun: cancelled, the asker's now
    gate.set()
    first = ahead.take("first")
    assert first is not None and first.result(timeout=30) is True
    ahead.start("third", lambda: "done")
    wait_for_ahead()
    third = ahead.take("third")
    assert third is not None and third.result(timeout=30) == "done"
    assert ran == []
    assert ahead.take("never started") is None


def test_an_error_in_work_ahead_is_the_askers_to_raise():
    def fails() -> None:
        raise InputError("in.csv: refused")

    ahead.start("fails", fails)
    wait_for_ahead()
    taken = ahead.take("fails")
    assert taken is not None
    with pytest.raises(InputError, match="refused"):
        taken.result(timeout=30)


@pytest.mark.parametrize("fresh", [False, True])
def test_a_run_starts_its_input_ahead(tmp_path, reviews, monkeypatch, fresh):
    threads = openings(monkeypatch)
    job = load_job(label_job(tmp_path, reviews))
    start_ahead(job, RunOptions(fresh=fresh, limit=50))
    wait_for_ahead()
    kinds = sorted(key[0] for key in ahead._started)
    assert kinds == ["input identity", "open input"]  # no parts yet: none to check
    assert source.open_source(job.input, job.id_column, limit=50).rows_in_scope == 50
    assert threads == ["ahead"]


def _join_import_threads() -> None:
    for thread in threading.enumerate():
        if thread.name.startswith("import "):
            thread.join(timeout=30)


def test_a_module_imported_beside_is_imported_on_a_thread_of_its_own(tmp_path, monkeypatch):
    (tmp_path / "beside_probe.py").write_text(
        "import threading\nloaded_on = threading.current_thread().name\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "beside_probe", raising=False)
    ahead.import_beside("beside_probe")
    _join_import_threads()
    assert sys.modules["beside_probe"].loaded_on == "import beside_probe"


def test_a_failing_import_beside_is_left_for_the_command_s_own_import(tmp_path, monkeypatch):
    (tmp_path / "beside_broken.py").write_text("raise ImportError('broken on purpose')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    hooked: list[object] = []
    monkeypatch.setattr(threading, "excepthook", hooked.append)  # a thread's traceback
    ahead.import_beside("beside_broken")
    _join_import_threads()
    assert hooked == [] and "beside_broken" not in sys.modules
    with pytest.raises(ImportError, match="broken on purpose"):
        __import__("beside_broken")
