"""Answers whose label is invalid are `ok` rows (answered and paid for), never silently:
the run's summary line, `pipeline status` and the report's header each say how many."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl

from pipeline.simulator.process import SimulatorProcess
from tests.e2e import label_job, run_in_process


def test_invalid_labels_are_counted_wherever_ok_rows_are(
    tmp_path: Path, sim: SimulatorProcess, capsys: Any
) -> None:
    texts = [("great, I love it" if i % 3 else "awful, it broke") for i in range(40)]
    pl.DataFrame({"id": [f"r{i}" for i in range(40)], "text": texts}).write_csv(tmp_path / "in.csv")
    # the prompt asks for positive / negative / neutral; only "positive" is a valid label
    extract = {"kind": "choice", "choices": ["positive", "glowing"]}
    job = label_job(tmp_path, tmp_path / "in.csv", extract=extract)
    run = run_in_process(capsys, "run", str(job), "--base-url", sim.base_url, "--no-progress")
    assert run.returncode == 0, run.stderr
    out = pl.read_parquet(tmp_path / "out" / "results.parquet")
    invalid = out.filter(pl.col("label_status") == "invalid").height
    assert 0 < invalid < 40 and set(out["status"]) == {"ok"}

    said = f"40 ok ({invalid:,} with an invalid label), 0 error"
    assert said in run.stderr.splitlines()[0]
    status = run_in_process(capsys, "status", str(tmp_path / "out"))
    assert f"40 total, {said}, 0 remaining" in status.stdout
    report = run_in_process(capsys, "report", str(tmp_path / "out"))
    header = report.stdout.splitlines()[0]
    assert f"40 rows, {invalid:,} ok with an invalid label;" in header


def test_no_word_of_invalid_labels_when_there_are_none(
    tmp_path: Path, sim: SimulatorProcess, capsys: Any
) -> None:
    pl.DataFrame({"id": ["a", "b"], "text": ["great", "awful"]}).write_csv(tmp_path / "in.csv")
    job = label_job(tmp_path, tmp_path / "in.csv")
    run = run_in_process(capsys, "run", str(job), "--base-url", sim.base_url, "--no-progress")
    assert run.returncode == 0 and "t: 2 ok, 0 error" in run.stderr
    assert "invalid" not in run_in_process(capsys, "status", str(tmp_path / "out")).stdout
