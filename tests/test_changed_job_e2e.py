"""A job whose settings changed since its output was made, in process against the
simulator: `estimate` says what `run` says (refused, or starting over); an output whose
rows are all errors may change its settings; batches not yet collected are collected (or
canceled) before anything else, and the refusal says so."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import polars as pl

from pipeline.simulator.process import SimulatorProcess
from pipeline.store.checkpoint import nothing_answered
from pipeline.store.layout import part_files
from tests.e2e import label_job, run_in_process

CHANGED_PROMPT = {"prompt": "Sentiment of: {text}"}


def reviews(tmp: Path, n: int) -> Path:
    path = tmp / "in.csv"
    texts = [f"{'great' if i % 2 else 'awful'} thing {i}" for i in range(n)]
    pl.DataFrame({"id": [f"k{i:03d}" for i in range(n)], "text": texts}).write_csv(path)
    return path


def one_line(done: Any) -> str:
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    return str(lines[0])


def test_estimate_refuses_a_changed_job_with_the_run_s_own_words(
    tmp_path: Path, sim: SimulatorProcess, capsys: Any
) -> None:
    job = label_job(tmp_path, reviews(tmp_path, 12))
    first = run_in_process(capsys, "run", str(job), "--base-url", sim.base_url, "--no-progress")
    assert first.returncode == 0, first.stderr
    limits_only = label_job(tmp_path, tmp_path / "in.csv", limits={"concurrency": 3})
    same = run_in_process(capsys, "estimate", str(limits_only))
    assert same.returncode == 0 and "12 rows, 12 done, 0 to send" in same.stdout

    changed = label_job(tmp_path, tmp_path / "in.csv", request=CHANGED_PROMPT)
    sim.reset()
    run = run_in_process(capsys, "run", str(changed), "--base-url", sim.base_url, "--no-progress")
    estimate = run_in_process(capsys, "estimate", str(changed))
    assert (run.returncode, estimate.returncode) == (2, 2)
    assert one_line(estimate) == one_line(run)  # one check, one message
    assert "[request] prompt changed since" in estimate.stderr and "--fresh" in estimate.stderr
    assert estimate.stdout == ""  # no "12 done, 0 to send, $0.0000"
    assert sim.stats()["requests"] == 0


def test_settings_may_change_when_no_row_was_answered(
    tmp_path: Path, sim: SimulatorProcess, capsys: Any
) -> None:
    wrong = label_job(tmp_path, reviews(tmp_path, 30), request={"model": "not-a-model"})
    failed = run_in_process(capsys, "run", str(wrong), "--base-url", sim.base_url, "--no-progress")
    assert failed.returncode == 4, failed.stderr  # every answer a 404: stopped early
    errors = pl.read_parquet(tmp_path / "out" / "results.parquet")
    assert set(errors["status"]) == {"error"} and errors.height < 30

    fixed = label_job(tmp_path, tmp_path / "in.csv")
    estimate = run_in_process(capsys, "estimate", str(fixed))
    assert estimate.returncode == 0, estimate.stderr
    assert "30 rows, 0 done, 30 to send" in estimate.stdout
    assert "[request] model changed since, and it answered no row" in estimate.stdout
    sim.reset()
    run = run_in_process(capsys, "run", str(fixed), "--base-url", sim.base_url, "--no-progress")
    assert run.returncode == 0, run.stderr
    assert "[request] model changed since the earlier run, which answered no row" in run.stderr
    assert sim.stats()["requests"] == 30  # every row, with the setting as it is now
    out = pl.read_parquet(tmp_path / "out" / "results.parquet")
    assert out.height == 30 and set(out["status"]) == {"ok"}
    [old] = tmp_path.glob("out.old-*")  # the earlier error rows: kept aside, as --fresh does
    assert pl.read_parquet(old / "results.parquet").equals(errors)


def test_an_answer_journaled_by_a_crashed_run_counts_as_answered(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    assert nothing_answered(out)
    error = {"_row": 0, "status": "error", "response_text": 'said "status":"ok"'}
    (out / "journal.jsonl").write_bytes(orjson.dumps(error) + b"\n")
    assert nothing_answered(out)  # an answer's text that merely quotes the key is no answer
    answered = {"_row": 1, "status": "ok", "response_text": "positive"}
    with (out / "journal.jsonl").open("ab") as journal:
        journal.write(orjson.dumps(answered) + b"\n")  # not yet in a part: a killed run's
    assert not nothing_answered(out)


def test_a_changed_job_with_batches_out_says_to_collect_them_first(
    tmp_path: Path, sim: SimulatorProcess, capsys: Any
) -> None:
    batch = {"api": {"mode": "batch"}, "batch": {"poll_s": 0.2}}
    job = label_job(tmp_path, reviews(tmp_path, 6), **batch)
    detached = run_in_process(
        capsys, "run", str(job), "--base-url", sim.base_url, "--detach", "--no-progress"
    )
    assert detached.returncode == 5, detached.stderr
    changed = label_job(tmp_path, tmp_path / "in.csv", request=CHANGED_PROMPT, **batch)
    run = run_in_process(capsys, "run", str(changed), "--base-url", sim.base_url, "--no-progress")
    estimate = run_in_process(capsys, "estimate", str(changed))
    for refused in (run, estimate):
        assert refused.returncode == 2
        line = one_line(refused)
        assert "[request] prompt changed since" in line
        assert "1 batch(es) of the earlier job are not collected yet" in line
        assert "running the earlier job again" in line and "pipeline cancel" in line
        assert "run with --fresh to start over" not in line  # --fresh is refused while they run

    job = label_job(tmp_path, tmp_path / "in.csv", **batch)  # the advice, followed
    collected = run_in_process(capsys, "run", str(job), "--base-url", sim.base_url, "--no-progress")
    assert collected.returncode == 0, collected.stderr
    changed = label_job(tmp_path, tmp_path / "in.csv", request=CHANGED_PROMPT, **batch)
    fresh = run_in_process(
        capsys, "run", str(changed), "--base-url", sim.base_url, "--fresh", "--no-progress"
    )
    assert fresh.returncode == 0, fresh.stderr
    assert len(part_files(next(tmp_path.glob("out.old-*")))) >= 1  # the collected answers kept
