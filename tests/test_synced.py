"""What a mirror knows of its URL's copies (store.synced): the pull's and the push's
decisions as tables, and the record across versions."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.store.synced import (
    Matched,
    kept_at_pull,
    read_record,
    to_put,
    write_record,
)

T0, T1 = 1_700_000_000_120_000_000, 1_700_000_000_870_000_000  # two times at the URL (ns)
LAST = Matched((10, T0), (10, 5))  # the URL's copy and the mirror's when they last matched
SIZES = Matched((10, None), None)  # an earlier version's record: the URL's size alone


@pytest.mark.parametrize(
    ("relative", "url", "local", "last", "fetch", "put"),
    [
        ("run.json", (10, T0), None, LAST, True, False),  # the mirror has none
        ("run.json", (10, T0), (10, 5), LAST, False, False),  # neither changed
        ("run.json", (10, T0), (12, 9), LAST, False, True),  # the mirror's newer: put it
        ("run.json", (10, T0), (10, 9), LAST, False, True),  # the same, at the same size
        ("run.json", (10, T1), (10, 5), LAST, True, False),  # rewritten at the URL, same size
        ("run.json", (11, T1), (12, 9), LAST, True, False),  # both changed: the URL's newer
        ("run.json", (10, T0), (10, 5), None, False, False),  # no history: one size, the same
        ("run.json", (10, T0), (11, 5), None, True, False),  # no history: another size
        ("parts/part-000001.parquet", (10, T1), (10, 5), LAST, False, False),  # not rewritten
        ("parts/part-000001.parquet", (10, T0), (9, 5), LAST, True, False),  # torn: damaged
        ("ray/shard-0001/job.json", (10, T0), (12, 5), LAST, True, False),  # a shard's too
        ("run.json", (10, T1), (12, 9), SIZES, False, True),  # changed here since
        ("run.json", (10, T1), (10, 9), SIZES, False, False),  # one size: taken as the same
        ("run.json", (11, T1), (11, 9), SIZES, True, False),  # changed at the URL
    ],
)
def test_what_a_pull_fetches_and_the_next_push_puts(relative, url, local, last, fetch, put):
    kept = kept_at_pull(relative, url, local, last)
    assert (kept is None) == fetch
    if kept is not None and local is not None:
        assert to_put(local, kept) == put


@pytest.mark.parametrize(
    ("local", "known", "put"),
    [
        ((10, 5), None, True),  # never known to match
        ((10, 5), Matched((10, T0), None), True),
        ((10, 5), LAST, False),
        ((10, 9), LAST, True),  # rewritten at the same size
        ((11, 5), LAST, True),
    ],
)
def test_what_a_push_puts(local, known, put):
    assert to_put(local, known) == put


def test_the_record_round_trips_and_an_earlier_versions_reads_as_sizes(tmp_path: Path):
    path = tmp_path / ".synced.json"
    record = {"run.json": LAST, "job.json": Matched((7, None), None)}
    write_record(path, record)
    assert read_record(path) == record
    path.write_text('{"run.json": 10, "odd": "x", "short": [1, 2]}')  # sizes only
    assert read_record(path) == {"run.json": Matched((10, None), None)}
    path.write_text("[1, 2")  # torn
    assert read_record(path) == {}
