"""The real CLI when things go wrong: faults, rejected requests, bad input, the key."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import polars as pl
import pytest

from tests.e2e import label_job

SECRET = "sk-ant-SECRET-do-not-leak-4242"


def texts(path: Path, texts: list[str]) -> None:
    pl.DataFrame({"id": [f"r{i}" for i in range(len(texts))], "text": texts}).write_csv(path)


def test_injected_faults_every_row_still_ends_ok_and_is_billed_once(tmp_path, cli, session_sim):
    texts(tmp_path / "in.csv", [f"review number {i}: works great" for i in range(150)])
    job = label_job(tmp_path, tmp_path / "in.csv", limits={"concurrency": 16})
    # seeded faults; each 429 pauses every worker for its retry-after (1 s), so few of them
    with session_sim.started_over(
        fail_429=0.03, fail_500=0.08, fail_529=0.08, fail_drop=0.08, seed=3
    ) as faulty:
        done = cli("run", str(job), "--base-url", faulty.base_url)
        stats, ledger = faulty.stats(), faulty.ledger()
    assert done.returncode == 0, done.stderr
    out = pl.read_parquet(tmp_path / "out" / "results.parquet")
    assert out["status"].unique().to_list() == ["ok"] and out.height == 150
    assert out["attempts"].max() > 1
    assert {"429", "500", "529"} <= set(stats["by_status"]) and stats["dropped"] > 0
    billed = Counter(entry["prompt_sha256"] for entry in ledger)
    assert len(billed) == 150 and max(billed.values()) == 1  # no row paid twice
    assert "retried:" in done.stderr


def test_400_rows_are_errors_sent_once_and_the_rest_goes_on(tmp_path, sim, cli):
    rows = [f"fine product {i}" + (" [[sim:status=400]]" if i % 3 == 0 else "") for i in range(30)]
    texts(tmp_path / "in.csv", rows)
    sim.reset()
    job = label_job(tmp_path, tmp_path / "in.csv")
    done = cli("run", str(job), "--base-url", sim.base_url)
    assert done.returncode == 0, done.stderr
    out = pl.read_parquet(tmp_path / "out" / "results.parquet")
    errors = out.filter(pl.col("status") == "error")
    assert errors.height == 10
    assert errors["http_status"].unique().to_list() == [400]
    assert errors["error_type"].unique().to_list() == ["invalid_request_error"]
    assert errors["attempts"].unique().to_list() == [1]
    assert errors["cost_usd"].unique().to_list() == [0.0]
    assert sim.stats()["requests"] == 30  # each 400 sent exactly once


def test_authentication_failure_stops_at_once_without_the_key(tmp_path, cli, session_sim):
    texts(tmp_path / "in.csv", [f"text {i}" for i in range(200)])
    job = label_job(tmp_path, tmp_path / "in.csv")
    with session_sim.started_over(require_key="the-right-key") as guarded:
        done = cli("run", str(job), "--base-url", guarded.base_url, env={"AISA_API_KEY": SECRET})
        sent = guarded.stats()["requests"]
    assert done.returncode == 4
    last = done.stderr.strip().splitlines()[-1]
    assert "authentication" in last and "AISA_API_KEY" in last
    assert sent <= 8 + 1  # the first answer stops it: at most what was already in flight
    assert "Traceback" not in done.stderr
    assert_key_absent(tmp_path, done)


def test_the_same_error_for_the_first_20_answers_stops_the_job(tmp_path, sim, cli):
    texts(tmp_path / "in.csv", [f"text {i} [[sim:status=404]]" for i in range(300)])
    sim.reset()
    job = label_job(tmp_path, tmp_path / "in.csv", limits={"concurrency": 4})
    done = cli("run", str(job), "--base-url", sim.base_url)
    assert done.returncode == 4
    assert "first 20 answers were all HTTP 404 not_found_error" in done.stderr
    assert sim.stats()["requests"] < 30
    out = pl.read_parquet(tmp_path / "out" / "results.parquet")
    assert 20 <= out.height < 30  # what was answered is kept


def test_api_key_never_reaches_output_or_streams(tmp_path, sim, cli):
    rows = [f"text {i}" + (" [[sim:status=400]]" if i % 2 else "") for i in range(20)]
    rows += ["[[sim:status=500]] always failing"]
    texts(tmp_path / "in.csv", rows)
    job = label_job(tmp_path, tmp_path / "in.csv", limits={"max_retries": 1})
    done = cli("run", str(job), "--base-url", sim.base_url, env={"AISA_API_KEY": SECRET})
    assert done.returncode == 0, done.stderr
    report = cli("report", str(tmp_path / "out"), "--format", "json")
    status = cli("status", str(tmp_path / "out"))
    for result in (done, report, status):
        assert_key_absent(tmp_path, result)


def assert_key_absent(directory: Path, *results) -> None:
    for path in directory.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path
            assert SECRET[-12:].encode() not in path.read_bytes(), path
    for result in results:
        assert SECRET not in result.stdout and SECRET not in result.stderr


BAD_JOBS = [
    ("unknown key", {"limits": {"speed": 3}}, "[limits] speed: unknown key"),
    ("wrong type", {"request": {"max_tokens": "16"}}, "[request] max_tokens: must be an integer"),
    ("concurrency < 1", {"limits": {"concurrency": 0}}, "[limits] concurrency: must be >= 1"),
    ("temperature > 1", {"request": {"temperature": 1.5}}, "[request] temperature: must be <= 1"),
    ("temperature < 0", {"request": {"temperature": -0.1}}, "[request] temperature: must be >= 0"),
    (
        "thinking budget",
        {
            "request": {
                "max_tokens": 2000,
                "temperature": 1,
                "thinking": {"type": "enabled", "budget_tokens": 4000},
            }
        },
        "thinking.budget_tokens: must be < max_tokens",
    ),
    (
        "template column",
        {"request": {"prompt": "Rate {review_text}"}},
        "names column 'review_text'",
    ),
    ("keep column", {"job": {"keep_columns": ["nope"]}}, "[job] keep_columns names column 'nope'"),
    ("id column", {"job": {"id_column": "review_id"}}, "id column 'review_id' not found"),
    (
        "missing input",
        {"job": {"input": "/nonexistent/reviews.csv"}},
        "/nonexistent/reviews.csv: input file not found",
    ),
    ("input format", {"job": {"input": "reviews.xlsx"}}, "unknown input format '.xlsx'"),
]


@pytest.mark.parametrize("case,change,expected", BAD_JOBS, ids=[c[0] for c in BAD_JOBS])
def test_bad_input_exits_2_with_one_line_and_sends_nothing(
    tmp_path, sim, case, change, expected, cli
):
    texts(tmp_path / "in.csv", ["good", "bad"])
    (tmp_path / "reviews.xlsx").write_text("not really")
    if change.get("job", {}).get("input") == "reviews.xlsx":
        change = {"job": {"input": str(tmp_path / "reviews.xlsx")}}
    job = label_job(tmp_path, tmp_path / "in.csv", **change)
    sim.reset()
    done = cli("run", str(job), "--base-url", sim.base_url)
    assert_one_line_exit_2(done, expected)
    assert sim.stats()["requests"] == 0
    assert not (tmp_path / "out" / "results.parquet").exists()


def test_duplicate_ids_exit_2_naming_an_example(tmp_path, sim, cli):
    pl.DataFrame({"id": ["a", "b", "a"], "text": ["x", "y", "z"]}).write_csv(tmp_path / "in.csv")
    done = cli("run", str(label_job(tmp_path, tmp_path / "in.csv")), "--base-url", sim.base_url)
    assert_one_line_exit_2(done, "duplicate values, e.g. 'a' in rows 0 and 2")


@pytest.mark.parametrize(
    "content,expected",
    [
        (None, "job file not found"),
        ("[job\nname = 1", "invalid TOML"),
        ('[jobs]\nname = "x"', "[jobs]: unknown table"),
        (
            '[job]\nname = "x"\ninput = "a.csv"\n'
            '[request]\nmodel = "m"\nmax_tokens = 5\nprompt = "hi {x"',
            "unclosed '{'",
        ),
    ],
)
def test_bad_job_file_exits_2(tmp_path, content, expected, cli):
    path = tmp_path / "job.toml"
    if content is not None:
        path.write_text(content)
    assert_one_line_exit_2(cli("run", str(path)), expected)


def test_missing_key_and_bad_flags_exit_2(tmp_path, cli):
    texts(tmp_path / "in.csv", ["good"])
    job = label_job(tmp_path, tmp_path / "in.csv")
    no_key = cli("run", str(job), env={"AISA_API_KEY": "", "ANTHROPIC_API_KEY": ""})
    assert_one_line_exit_2(no_key, "no API key: set the environment variable AISA_API_KEY")
    assert_one_line_exit_2(cli("run", str(job), "--concurrency", "0"), "must be >= 1")
    assert_one_line_exit_2(cli("report", str(tmp_path / "nowhere")), "no results.parquet")


def assert_one_line_exit_2(done, expected: str) -> None:
    assert done.returncode == 2, (done.returncode, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert expected in lines[0], lines[0]
    assert "Traceback" not in done.stderr
