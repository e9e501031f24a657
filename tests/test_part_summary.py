"""A part's summary (store.part_summary): what a resume needs of a part, kept beside its
sha256 in the record of parts known intact, so a resume of parts known intact reads none of
their columns. Tested against a resume computed here, row by row, from the parts' rows
(the latest part's outcome of each row wins): random parts with gaps, errors, null costs,
rows repeated within a part and parts overlapping, each resumed with the record's
summaries, without them, and with the record gone."""

from __future__ import annotations

import hashlib
import json
import math
import random
from pathlib import Path

import pyarrow as pa
import pytest

from pipeline import ahead
from pipeline.store import checkpoint, part_check
from pipeline.store.checkpoint import resume_state
from pipeline.store.layout import INTACT_RECORD
from pipeline.store.part_summary import MAX_RUNS, Summary, overlapping, summarize
from pipeline.store.parts import write_parquet, write_part
from pipeline.store.sink import PART_ROW_GROUP
from tests.ahead_helpers import threads_calling, wait_for_ahead

Outcome = tuple[str | None, float | None]  # status, cost_usd


def random_part(rng: random.Random, start: int) -> dict[int, Outcome]:
    """Outcomes of rows after `start`, with gaps."""
    outcomes: dict[int, Outcome] = {}
    position = start
    for _ in range(rng.randint(0, 400)):
        position += rng.choice([1, 1, 1, 1, 2, 3, 17])
        status = rng.choice(["ok", "ok", "ok", "error", None, "cancelled"])
        cost = rng.choice([None, 0.0, rng.random() / 1000, rng.randint(1, 9) * 1e-7])
        outcomes[position] = (status, cost)
    return outcomes


def repeated(position: int) -> bool:
    return position % 11 == 0


def part_rows(outcomes: dict[int, Outcome], repeats: bool) -> list[tuple[int, Outcome]]:
    """The rows a part file holds, in position order; with `repeats`, some row twice, an
    outcome the part's later one supersedes first."""
    written: list[tuple[int, Outcome]] = []
    for position in sorted(outcomes):
        if repeats and repeated(position):
            written.append((position, ("error", 0.5)))
        written.append((position, outcomes[position]))
    return written


def write(parts_dir: Path, number: int, rows: list[tuple[int, Outcome]]) -> None:
    table = pa.table(
        {
            "_row": pa.array([p for p, _ in rows], pa.int64()),
            "id": [f"r{p:06d}" for p, _ in rows],
            "status": pa.array([o[0] for _, o in rows], pa.string()),
            "cost_usd": pa.array([o[1] for _, o in rows], pa.float64()),
        }
    )
    path = parts_dir / f"part-{number:06d}.parquet"
    write_part(path, lambda target: write_parquet(table, target, PART_ROW_GROUP // 10))


def expected(parts: list[dict[int, Outcome]]) -> tuple[list[int], float, list[int]]:
    """The resume, row by row: of a row in several parts, the newest part's outcome."""
    latest: dict[int, Outcome] = {}
    for outcomes in parts:
        latest.update(outcomes)
    done = sorted(latest)
    errors = [p for p in done if latest[p][0] == "error"]
    spent = math.fsum(c for _, c in latest.values() if c is not None)
    return done, spent, errors


def parts_dir_files(output: Path) -> list[Path]:
    return sorted((output / "parts").glob("part-*.parquet"))


def shared(output: Path, parts: list[dict[int, Outcome]]) -> list[Path]:
    """The parts whose span (first to last row) meets another's."""
    spans = [(min(o), max(o)) if o else None for o in parts]
    meets = [
        i
        for i, a in enumerate(spans)
        if a and any(b and j != i and a[0] <= b[1] and b[0] <= a[1] for j, b in enumerate(spans))
    ]
    return [parts_dir_files(output)[i] for i in meets]


def resumed(output: Path, *, worked_ahead: bool = False) -> tuple[list[int], float, list[int]]:
    """The resume as a run makes it: its parts checked ahead (and with `worked_ahead`,
    what they finished worked out there too), then damaged_parts, then resume_state."""
    parts = sorted((output / "parts").glob("part-*.parquet"))
    part_check.check_ahead(output / "parts")
    if worked_ahead:
        checkpoint.resume_ahead(output)
        wait_for_ahead()
    assert part_check.damaged_parts(parts) == []
    state = resume_state(output)
    return state.done_rows.to_list(), state.spent_usd, state.error_rows.to_list()


def working(monkeypatch) -> list[str]:
    """The threads the parts' resume is worked out on."""
    return threads_calling(monkeypatch, checkpoint, "_latest_of")


@pytest.mark.parametrize("seed", range(12))
def test_the_resume_from_summaries_is_the_resume_row_by_row(tmp_path, monkeypatch, seed):
    rng = random.Random(seed)
    overlapping, repeats = seed % 3 == 1, seed % 3 == 2
    output = tmp_path / "out"
    (output / "parts").mkdir(parents=True)
    parts, start = [], 0
    for number in range(1, rng.randint(2, 6) + 1):
        start = max(0, start - rng.randint(0, 60)) if overlapping else start
        outcomes = random_part(rng, start)
        parts.append(outcomes)
        write(output / "parts", number, part_rows(outcomes, repeats))
        start = max(outcomes, default=start) + rng.randint(1, 5)
    want = expected(parts)
    record = json.loads((output / INTACT_RECORD).read_text())
    assert len(record["sha256"]) == len(parts)
    twice = sum(repeats and any(repeated(p) for p in outcomes) for outcomes in parts)
    assert len(record["summaries"]) == len(parts) - twice  # none for a part with a row twice
    read: list[Path] = []
    real = checkpoint._outcomes
    monkeypatch.setattr(checkpoint, "_outcomes", lambda p, c: read.append(p) or real(p, c))
    threads = working(monkeypatch)
    worked_ahead = seed % 2 == 0
    for how in ("summaries", "none in the record", "no record"):
        if how == "none in the record":
            (output / INTACT_RECORD).write_text(json.dumps({"sha256": record["sha256"]}))
        elif how == "no record":
            (output / INTACT_RECORD).unlink()
        read.clear()
        threads.clear()
        done, spent, errors = resumed(output, worked_ahead=worked_ahead)
        assert threads == ["ahead" if worked_ahead else "MainThread"]  # the answer taken
        if how == "summaries":  # rows read only of parts a summary cannot stand for
            assert sorted(read) == (parts_dir_files(output) if twice else shared(output, parts))
        assert (done, errors) == (want[0], want[2]), how
        assert spent == pytest.approx(want[1], rel=1e-12, abs=1e-15), how


DIGEST = "ab" * 32  # a part's sha256


def sealed(value: dict) -> dict:
    """`value` with a seal made the way the record makes it, of whatever it holds: only
    the checks of its shape can refuse it then."""
    text = json.dumps([DIGEST, value["rows"], value["errors"], value["cost_usd"]])
    return {**value, "seal": hashlib.sha256(text.encode()).hexdigest()}


def test_a_summary_reads_back_as_written_and_nothing_malformed_is_taken():
    summary = Summary(((0, 3), (5, 7)), ((1, 2),), 0.25)
    good = json.loads(json.dumps(summary.to_json(DIGEST)))
    assert Summary.from_json(good, DIGEST) == summary
    malformed = [
        {**good, "rows": [[0, 3], [2, 7]]},  # runs overlapping
        {**good, "rows": [[5, 7], [0, 3]]},  # out of order
        {**good, "rows": [[3, 3]]},  # empty
        {**good, "rows": [[-1, 3]]},
        {**good, "rows": [[0, True]]},
        {**good, "rows": [[0, 1.0]]},
        {**good, "rows": [[0, 1, 2]]},
        {**good, "rows": [[2 * i, 2 * i + 1] for i in range(MAX_RUNS + 1)]},
        {**good, "errors": "1-2"},
        {**good, "cost_usd": 1},
        {**good, "cost_usd": float("nan")},
        {**good, "cost_usd": float("inf")},
    ]
    assert [Summary.from_json(sealed(m), DIGEST) for m in malformed] == [None] * len(malformed)
    changed = [
        {**good, "rows": [[0, 9], [5, 7]]},  # a digit changed: the seal no longer fits
        {**good, "errors": []},
        {**good, "cost_usd": 0.5},
        {k: v for k, v in good.items() if k != "seal"},
        {"rows": good["rows"], "errors": good["errors"]},
        [good],
    ]
    assert [Summary.from_json(m, DIGEST) for m in changed] == [None] * len(changed)
    assert Summary.from_json(good, "cd" * 32) is None  # another part's entry


def test_a_record_with_a_byte_changed_decides_nothing_and_is_made_good(tmp_path):
    """A flipped digit in a summary (rows 0-999 read as 0-9000) would skip rows never
    sent: its seal refuses it, the part's columns are read, and the record is rewritten."""
    output = tmp_path / "out"
    (output / "parts").mkdir(parents=True)
    write(output / "parts", 1, [(i, ("ok", 0.001)) for i in range(1000)])
    record = output / INTACT_RECORD
    text = record.read_text()
    assert '"rows": [[0, 1000]]' in text
    record.write_text(text.replace('"rows": [[0, 1000]]', '"rows": [[0, 9000]]'))
    done, spent, errors = resumed(output)
    assert done == list(range(1000)) and errors == [] and spent == pytest.approx(1.0)
    assert '"rows": [[0, 1000]]' in record.read_text()  # made good again


def test_a_part_with_too_many_runs_or_a_row_without_position_has_no_summary():
    scattered = pa.table(
        {
            "_row": pa.array(range(0, 2 * (MAX_RUNS + 1), 2), pa.int64()),
            "status": ["ok"] * (MAX_RUNS + 1),
            "cost_usd": [0.0] * (MAX_RUNS + 1),
        }
    )
    assert summarize(scattered) is None
    assert summarize(scattered.slice(0, MAX_RUNS)) is not None
    nulls = pa.table({"_row": pa.array([0, None], pa.int64()), "status": ["ok"] * 2,
                      "cost_usd": [0.0, 0.0]})  # fmt: skip
    assert summarize(nulls) is None


@pytest.mark.parametrize(
    ("spans", "clusters"),
    [
        ([], []),
        ([None, None], []),
        ([(0, 9), (10, 12)], [[0], [1]]),  # adjacent: apart
        ([(0, 9), (9, 12)], [[0, 1]]),  # one position shared
        ([(20, 30), (0, 9), None, (5, 6)], [[1, 3], [0]]),  # row order; each oldest first
        ([(0, 100), (50, 60), (70, 80), (200, 201)], [[0, 1, 2], [3]]),
        ([(5, 6), (0, 100)], [[0, 1]]),  # a later part's span holds an earlier one
    ],
)
def test_parts_are_clustered_by_their_spans(spans, clusters):
    assert overlapping(spans) == clusters


def test_a_summarys_rows_are_its_runs():
    summary = Summary(((0, 3), (5, 7)), ((6, 7),), 0.5)
    assert summary.done_rows().to_list() == [0, 1, 2, 5, 6]
    assert summary.error_rows().to_list() == [6]
    assert summary.span() == (0, 6) and Summary((), (), 0.0).span() is None


def test_a_summary_is_taken_only_for_a_sha256_the_record_lists(tmp_path):
    output = tmp_path / "out"
    (output / "parts").mkdir(parents=True)
    write(output / "parts", 1, [(0, ("ok", 0.1)), (1, ("error", 0.2))])
    record = json.loads((output / INTACT_RECORD).read_text())
    (digest,) = record["sha256"]
    record["summaries"] = {"0" * 64: record["summaries"][digest]}  # another part's
    (output / INTACT_RECORD).write_text(json.dumps(record))
    assert part_check.known(output / "parts").summaries == {}
    assert resumed(output) == ([0, 1], pytest.approx(0.3), [1])


def test_a_resume_worked_out_ahead_is_not_taken_for_parts_changed_since(tmp_path, monkeypatch):
    output = tmp_path / "out"
    (output / "parts").mkdir(parents=True)
    write(output / "parts", 1, [(0, ("ok", 0.1)), (1, ("error", 0.2))])
    part_check.check_ahead(output / "parts")
    checkpoint.resume_ahead(output)
    wait_for_ahead()
    write(output / "parts", 1, [(0, ("ok", 0.1)), (1, ("ok", 0.4)), (2, ("ok", 0.5))])
    threads = working(monkeypatch)  # ^ the part replaced since: another file there
    parts = sorted((output / "parts").glob("part-*.parquet"))
    assert part_check.damaged_parts(parts) == []
    state = resume_state(output)
    assert threads == ["MainThread"]
    assert state.done_rows.to_list() == [0, 1, 2] and state.error_rows.to_list() == []
    assert state.spent_usd == pytest.approx(1.0)


def test_a_resume_worked_out_ahead_of_a_damaged_part_is_none(tmp_path):
    output = tmp_path / "out"
    (output / "parts").mkdir(parents=True)
    write(output / "parts", 1, [(0, ("ok", 0.1))])
    part = output / "parts" / "part-000001.parquet"
    part.write_bytes(part.read_bytes()[:-20])  # cut: its check finds it damaged
    part_check.check_ahead(output / "parts")
    checkpoint.resume_ahead(output)
    wait_for_ahead()
    (started,) = [f for k, f in ahead._started.items() if k[0] == "resume"]
    assert started.result() is None  # the plan names the part, or sets it aside, first
