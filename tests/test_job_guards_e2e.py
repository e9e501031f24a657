"""Job-file checks a user relies on, through the real CLI: absurd limits, bad fields under
[request.extra] and bad output directories exit 2 with one line before anything is sent,
created or moved; an empty prompt is an error row that is never sent."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from pipeline.simulator.process import SimulatorProcess
from tests.e2e import MODEL, write_job

OURS = (".lock", "job.json", "run.json", "parts", "results.parquet", "journal.jsonl")


def job_file(tmp: Path, *, drop: tuple[str, ...] = (), extra: str = "", **sections: Any) -> Path:
    """A job over tmp/in.csv writing to tmp/out; `drop` removes [request] keys and `extra`
    is appended as a [request.extra] table, written as a user would."""
    base: dict[str, dict[str, Any]] = {
        "job": {"input": str(tmp / "in.csv"), "id_column": "id", "output": str(tmp / "out")},
        "request": {"model": MODEL, "max_tokens": 16, "temperature": 0, "prompt": "{text}"},
        "limits": {"concurrency": 4},
    }
    for section, values in sections.items():
        base.setdefault(section, {}).update(values)
    for key in drop:
        base["request"].pop(key)
    path = write_job(tmp, base)
    if extra:
        path.write_text(path.read_text() + f"[request.extra]\n{extra}\n")
    return path


def reviews(tmp: Path, n: int = 5) -> Path:
    path = tmp / "in.csv"
    pl.DataFrame(
        {"id": [f"r{i}" for i in range(n)], "text": [f"t{i}" for i in range(n)]}
    ).write_csv(path)
    return path


def refused(done: Any, *parts: str) -> str:
    """Exit 2 with exactly one line on stderr holding `parts`."""
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr
    assert len(lines) == 1, done.stderr
    for part in parts:
        assert part in lines[0], lines[0]
    return str(lines[0])


BAD_JOBS = [
    # (id, job_file arguments, flags, parts of the one-line message)
    (
        "rpm 1e-300",
        {"limits": {"requests_per_minute": 1e-300}},
        (),
        ["[limits] requests_per_minute: must be >= 0.01", "accepted: 0.01 to 1000000"],
    ),
    (
        "concurrency 1e8",
        {"limits": {"concurrency": 100_000_000}},
        (),
        ["[limits] concurrency: must be <= 10000", "accepted: 1 to 10000"],
    ),
    ("--concurrency 1e8", {}, ("--concurrency", "100000000"), ["--concurrency: must be <= 10000"]),
    ("--rpm 1e-300", {}, ("--rpm", "1e-300"), ["--rpm: must be >= 0.01"]),
    ("--max-cost nan", {}, ("--max-cost", "nan"), ["--max-cost", "finite"]),
    (
        "extra temperature 5",
        {"drop": ("temperature",), "extra": "temperature = 5"},
        (),
        ["[request.extra] temperature: must be <= 1"],
    ),
    (
        "extra max_tokens 0",
        {"drop": ("max_tokens",), "extra": "max_tokens = 0"},
        (),
        ["[request.extra] max_tokens: must be >= 1"],
    ),
    (
        "extra max_tokens abc",
        {"drop": ("max_tokens",), "extra": 'max_tokens = "abc"'},
        (),
        ["[request.extra] max_tokens: must be an integer (got a string"],
    ),
    (
        "extra model 5",
        {"drop": ("model",), "extra": "model = 5"},
        (),
        ["[request.extra] model: must be a string (got an integer)"],
    ),
    (
        "extra prompt",
        {"extra": 'prompt = "{text}"'},
        (),
        ["[request.extra] prompt: is the prompt template"],
    ),
    (
        "extra thinking over max_tokens",
        {
            "drop": ("temperature",),
            "extra": 'thinking = { type = "enabled", budget_tokens = 2048 }',
        },
        (),
        ["thinking.budget_tokens: must be < max_tokens (2048 >= 16)"],
    ),
]


@pytest.mark.parametrize(
    ("arguments", "flags", "parts"), [c[1:] for c in BAD_JOBS], ids=[c[0] for c in BAD_JOBS]
)
def test_a_bad_job_exits_2_before_sending_or_creating_anything(
    tmp_path: Path, sim: SimulatorProcess, arguments: dict[str, Any], flags: tuple[str, ...],
    parts: list[str], cli: Any,
) -> None:  # fmt: skip
    reviews(tmp_path)
    job = job_file(tmp_path, **arguments)
    sim.reset()
    done = cli("run", str(job), "--base-url", sim.base_url, "--no-progress", *flags)
    refused(done, *parts)
    assert sim.stats()["requests"] == 0
    assert not (tmp_path / "out").exists()


def test_an_empty_prompt_is_an_error_row_and_the_rest_is_sent_as_written(
    tmp_path: Path, sim: SimulatorProcess, cli: Any
) -> None:
    texts = {"a": "fine", "b": "", "c": " \n\t ", "d": "  padded  \n", "e": "\u3000"}
    with (tmp_path / "in.jsonl").open("w") as f:
        for key, text in texts.items():
            f.write(json.dumps({"id": key, "text": text}) + "\n")
    job = job_file(tmp_path, job={"input": str(tmp_path / "in.jsonl")})
    sim.reset()
    done = cli("run", str(job), "--base-url", sim.base_url, "--no-progress")
    assert done.returncode == 0, done.stderr
    out = pl.read_parquet(tmp_path / "out" / "results.parquet")
    assert out["status"].to_list() == ["ok", "error", "error", "ok", "error"]
    errors = out.filter(pl.col("status") == "error")
    assert errors["error_type"].to_list() == ["empty_prompt"] * 3
    assert all("prompt is empty" in m and "'text'" in m for m in errors["error_message"])
    assert errors["cost_usd"].to_list() == [0.0] * 3 and errors["attempts"].to_list() == [0] * 3
    sent = {entry["prompt_sha256"] for entry in sim.ledger()}
    assert sent == {hashlib.sha256(t.encode()).hexdigest() for t in ("fine", "  padded  \n")}
    assert sim.stats()["requests"] == 2
    again = cli("run", str(job), "--base-url", sim.base_url, "--no-progress")
    assert again.returncode == 0 and sim.stats()["requests"] == 2  # error rows are final


def listing(directory: Path) -> list[str]:
    return sorted(os.listdir(directory))


def test_the_filesystem_root_is_refused_and_nothing_is_written_there(
    tmp_path: Path, sim: SimulatorProcess, cli: Any
) -> None:
    reviews(tmp_path)
    (tmp_path / "to_root").symlink_to("/")
    job = job_file(tmp_path)
    before = [n for n in listing(Path("/")) if n in OURS]
    sim.reset()
    for output in ("/", "/tmp/..", str(tmp_path / "to_root")):
        for command in (["run", str(job), "--base-url", sim.base_url], ["estimate", str(job)]):
            done = cli(*command, "--output", output)
            refused(done, f"output directory '{output}' is a filesystem root")
    assert [n for n in listing(Path("/")) if n in OURS] == before
    assert sim.stats()["requests"] == 0


@pytest.mark.parametrize(
    ("output", "part"),
    [
        ("notes.txt", "is an existing file, not a directory"),
        ("notes.txt/out", "notes.txt' is a file, not a directory"),
        ("notes.txt/../out", "notes.txt' is a file, not a directory"),
    ],
)
def test_an_output_that_is_or_runs_through_a_file_is_refused(
    tmp_path: Path, sim: SimulatorProcess, output: str, part: str, cli: Any
) -> None:
    reviews(tmp_path)
    (tmp_path / "notes.txt").write_text("mine")
    job = job_file(tmp_path, job={"output": str(tmp_path / output)})
    before = listing(tmp_path)
    sim.reset()
    done = cli("run", str(job), "--base-url", sim.base_url, "--fresh")
    refused(done, part)
    assert listing(tmp_path) == before and (tmp_path / "notes.txt").read_text() == "mine"
    assert sim.stats()["requests"] == 0


def test_fresh_with_the_input_inside_the_output_moves_nothing(
    tmp_path: Path, sim: SimulatorProcess, cli: Any
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    reviews(out)  # out/in.csv
    job = job_file(tmp_path, job={"input": str(out / "in.csv"), "output": str(tmp_path / "out")})
    sim.reset()
    for flags in ((), ("--fresh",)):
        done = cli("run", str(job), "--base-url", sim.base_url, *flags)
        refused(done, "holds the input file", "in.csv")
    assert listing(tmp_path) == ["job.toml", "out"] and listing(out) == ["in.csv"]
    assert sim.stats()["requests"] == 0
