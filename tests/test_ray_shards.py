"""What a --ray run leaves in OUTPUT/ray/shard-* is seen by every command (issue 21, 1-3).

The half-finished state of a killed --ray driver is built on disk without Ray, as its
workers write it: each shard an output directory of its own, made by the store's own
writers (a run of the same job into the shard, its rows only); one worker killed before
its journal was folded; the driver's job.json in the output. Then the commands run in
process against the simulator, whose ledger says what was paid.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
from collections import Counter
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import polars as pl
import pytest

from pipeline.api import reparse_job, run_job
from pipeline.errors import UsageError
from pipeline.job.load import load_job
from pipeline.reports.estimate import estimate
from pipeline.reports.report import report
from pipeline.reports.status import status
from pipeline.schema import ROW_INDEX
from pipeline.simulator.process import SimulatorProcess
from pipeline.store import checkpoint, shards
from pipeline.store.durable import temporary_name
from pipeline.store.layout import INTACT_RECORD, part_files, shard_dir, shard_dirs
from pipeline.store.unrecorded import FILE, Unrecorded, nano_usd
from tests.e2e import REPO, label_job
from tests.test_integrity_e2e import flip_bytes
from tests.test_resume_e2e import inputs, journal_lines

ROWS = 30
SHARDS = [range(0, 10), range(10, 20)]  # answered by the killed run's two workers
KEY = "sk-test-key"
TEXT_LABELS = {"kind": "text", "column": "answer"}  # an [extract] other than label_job's


def options(sim: SimulatorProcess) -> dict[str, Any]:
    return {"base_url": sim.base_url, "api_key": KEY, "show_progress": False}


def killed_ray_run(tmp_path: Path, sim: SimulatorProcess, **extract: Any) -> Path:
    """The job file; its output as a --ray driver killed with two shards half done leaves
    it: shard 0 folded into parts, shard 1's rows only in its worker's journal."""
    inputs(tmp_path / "in.csv", ROWS)
    job = label_job(tmp_path, tmp_path / "in.csv", **({"extract": extract} if extract else {}))
    out = tmp_path / "out"
    for index, rows in enumerate(SHARDS):
        run_job(job, output=shard_dir(out, index), only_rows=list(rows), **options(sim))
    killed = shard_dir(out, 1)
    [part] = part_files(killed)
    (killed / "journal.jsonl").write_bytes(b"".join(journal_lines(part)))
    part.unlink()
    (killed / "results.parquet").unlink()
    shutil.copy(shard_dir(out, 0) / "job.json", out / "job.json")  # the driver's prepare
    sim.reset()
    return job


def billed(sim: SimulatorProcess) -> Counter[str]:
    return Counter(e["prompt_sha256"] for e in sim.ledger())


def results(tmp_path: Path) -> pl.DataFrame:
    return pl.read_parquet(tmp_path / "out" / "results.parquet")


def test_status_and_a_local_resume_see_the_shards_rows(
    tmp_path: Path, sim: SimulatorProcess
) -> None:
    job = killed_ray_run(tmp_path, sim)
    text = status(tmp_path / "out")
    assert "20 ok" in text and "ray:       2 shard(s)" in text and "complete:  no" in text
    with pytest.raises(UsageError, match="--ray") as refused:
        report(tmp_path / "out")  # results.parquet would leave the shards' rows out
    assert "\n" not in str(refused.value)
    record = shard_dir(tmp_path / "out", 1) / INTACT_RECORD
    temporary_name(record).write_text('{"sha256": [')  # a kill while it was replaced
    summary = run_job(job, **options(sim))
    assert (summary.rows_before, summary.rows_ok) == (20, 10)
    assert sim.stats()["requests"] == 10 and max(billed(sim).values()) == 1
    table = results(tmp_path)
    assert table["id"].to_list() == [f"k{i:05d}" for i in range(ROWS)]
    assert (table["status"] == "ok").all()
    assert shard_dirs(tmp_path / "out") == []  # taken in, nothing of them left behind
    assert f"{ROWS} ok" in status(tmp_path / "out")
    assert "ok" in report(tmp_path / "out")


def test_estimate_and_its_pilot_never_buy_a_shards_rows(
    tmp_path: Path, sim: SimulatorProcess
) -> None:
    job = killed_ray_run(tmp_path, sim)
    text = estimate(load_job(job), pilot=5, base_url=sim.base_url, api_key=KEY)
    assert f"{ROWS:,} rows, 20 done, 10 to send" in text
    assert sim.stats()["requests"] == 5
    run_job(job, **options(sim))
    assert sim.stats()["requests"] == 10 and max(billed(sim).values()) == 1
    assert (results(tmp_path)["status"] == "ok").all()


def test_reparse_relabels_the_answers_in_shards(tmp_path: Path, sim: SimulatorProcess) -> None:
    killed_ray_run(tmp_path, sim)
    changed = label_job(tmp_path, tmp_path / "in.csv", extract=TEXT_LABELS)
    line = reparse_job(changed)
    assert "relabelled 20 stored answers" in line
    table = results(tmp_path)
    assert table.height == 20 and table["answer"].is_not_null().all()
    assert sim.stats()["requests"] == 0


def test_shard_rows_labelled_by_another_extract_are_relabelled_when_merged(
    tmp_path: Path, sim: SimulatorProcess
) -> None:
    """The output follows the new [extract] (an earlier --reparse that never saw the
    shards), the shards the old one: their rows come in with the output's labels."""
    killed_ray_run(tmp_path, sim)
    (tmp_path / "out" / "job.json").unlink()
    changed = label_job(tmp_path, tmp_path / "in.csv", extract=TEXT_LABELS)
    run_job(changed, only_rows=list(range(20, ROWS)), **options(sim))
    sim.reset()
    run_job(changed, **options(sim))
    assert sim.stats()["requests"] == 0
    table = results(tmp_path)
    assert table.height == ROWS and table["answer"].is_not_null().all()
    assert "label" not in table.columns


def test_a_damaged_shard_part_is_checked_before_it_is_merged(
    tmp_path: Path, sim: SimulatorProcess
) -> None:
    job = killed_ray_run(tmp_path, sim)
    [part] = part_files(shard_dir(tmp_path / "out", 0))
    flip_bytes(part)
    assert "damaged:" in status(tmp_path / "out")
    with pytest.raises(UsageError, match="--set-aside-damaged") as refused:
        run_job(job, **options(sim))
    assert str(part) in str(refused.value) and sim.stats()["requests"] == 0
    run_job(job, set_aside_damaged=True, **options(sim))
    # its rows come back from the shard's results.parquet: only the undone 10 are sent
    assert sim.stats()["requests"] == 10 and max(billed(sim).values()) == 1
    assert (tmp_path / "out" / "damaged" / part.name).exists()  # kept, not deleted
    assert (results(tmp_path)["status"] == "ok").all() and results(tmp_path).height == ROWS


def test_a_changed_job_is_refused_while_only_shards_hold_its_answers(
    tmp_path: Path, sim: SimulatorProcess
) -> None:
    killed_ray_run(tmp_path, sim)
    changed = label_job(tmp_path, tmp_path / "in.csv", request={"max_tokens": 20})
    with pytest.raises(UsageError, match="max_tokens changed"):
        run_job(changed, **options(sim))  # not "answered no row": not started over
    assert sim.stats()["requests"] == 0 and len(shard_dirs(tmp_path / "out")) == 2


def test_a_killed_workers_requests_in_flight_count_in_the_outputs_budget(
    tmp_path: Path, sim: SimulatorProcess
) -> None:
    """A worker killed with requests in flight leaves their worst case in its shard's
    counter file: taken in with its rows, never dropped (the budget and status see it)."""
    job = killed_ray_run(tmp_path, sim)
    out = tmp_path / "out"
    shard = shard_dir(out, 1)
    book = Unrecorded(shard)  # a worker killed with 7 requests in flight, $1.50 worst case
    for _ in range(7):
        book.sending(nano_usd(Decimal("1.5") / 7))
    book.close()
    run_job(job, **options(sim))
    record = json.loads((out / "run.json").read_text(encoding="utf-8"))
    assert record["unknown_cost_worst_usd"] >= 1.5
    assert record["maybe_billed"]["unrecorded_requests"] >= 7
    assert not (shard / FILE).exists()
    assert "7 requests were in flight and unrecorded" in status(out)


def test_the_drivers_last_merge_waits_for_a_killed_workers_lock(tmp_path: Path) -> None:
    """ray.kill returns before the worker's process has let its shard's lock go: the
    driver's last merge waits for it (the output's results and exit code depend on it)."""
    shard = shard_dir(tmp_path / "out", 0)
    shard.mkdir(parents=True)
    held = checkpoint.lock_output(shard)
    threading.Timer(0.3, held.close).start()
    with pytest.raises(UsageError, match="in use by a Ray worker"):
        shards._lock_shard(shard, 0.0)
    shards._lock_shard(shard, 10.0).close()


def test_a_resume_at_once_waits_for_a_killed_workers_lock(
    tmp_path: Path, sim: SimulatorProcess
) -> None:
    """Run again the moment a --ray driver was killed: a worker of it may still be exiting
    (its process's last thread lets its shard's lock go after its main thread is gone). The
    resume takes the shard in once it is let go, never refuses, never buys its rows."""
    job = killed_ray_run(tmp_path, sim)
    held = checkpoint.lock_output(shard_dir(tmp_path / "out", 1))
    threading.Timer(0.3, held.close).start()
    summary = run_job(job, **options(sim))
    assert (summary.rows_before, summary.rows_ok) == (20, 10)
    assert sim.stats()["requests"] == 10 and max(billed(sim).values()) == 1
    assert shard_dirs(tmp_path / "out") == []


def test_a_worker_imports_no_ray_data_nor_pandas() -> None:
    """A worker actor's module (and what it reads its shard with) leaves Ray Data and pandas
    out: seconds of every worker's start (the driver reads the input as a Dataset)."""
    pytest.importorskip("ray")
    code = (
        "import sys, pipeline.ray.worker, pipeline.ray.rows\n"
        "print(sorted(m for m in ('ray.data', 'pandas') if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=False,
        timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_a_shards_rows_come_from_its_blocks_in_order_in_whole_batches(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Blocks of any size (Ray Data splits a read in small ones), fetched one at a time:
    batches of batch_size rows across them, the last one fewer; skip and only as a local
    source's."""
    pytest.importorskip("ray")
    from pipeline.input.source import open_source
    from pipeline.ray import rows as shard_rows

    monkeypatch.setattr(shard_rows, "ray", SimpleNamespace(get=lambda block: block))
    inputs(tmp_path / "in.csv", ROWS)
    source = open_source(tmp_path / "in.csv", "id")
    frame = source.frame_of(["text"], pl.Series(range(ROWS)))
    sizes = [0, 7, 1, 0, 12, 3, 7]  # 30 rows
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    blocks = tuple(frame.slice(s, n).to_arrow() for s, n in zip(starts, sizes, strict=True))
    shard = shard_rows.ShardRows(
        source.path, source.id_column, source.schema, ROWS, pl.LazyFrame(), ROWS, blocks
    )
    batches = list(shard.batches(["text"], batch_size=8))
    assert [len(b) for b in batches] == [8, 8, 8, 6]
    assert [r for b in batches for r in b] == frame.to_dicts()
    skipped = list(shard.batches(["text"], batch_size=8, skip=pl.Series([0, 9]), only=None))
    assert [r[ROW_INDEX] for b in skipped for r in b] == [i for i in range(ROWS) if i not in (0, 9)]
    assert shard.frame_of(["text"], pl.Series([29, 3])).equals(frame[[3, 29]])
    assert shard.id_positions().equals(frame.select(ROW_INDEX, "id"))
