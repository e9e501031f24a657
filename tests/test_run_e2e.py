"""The real CLI against the simulator on loopback: rows, order, answers, usage and cost."""

from __future__ import annotations

import hashlib
import random
from decimal import Decimal
from pathlib import Path

import polars as pl
import pytest

from tests.e2e import MODEL, label_job
from tests.simulator_helpers import simulated_label

WORDS = ["great", "broke", "fine", "love", "refund", "okay", "sturdy", "awful", "average"]


def reviews(path: Path, n: int, seed: int = 7) -> list[dict[str, str]]:
    """n rows with shuffled string ids, so input order differs from any id order."""
    rng = random.Random(seed)
    ids = [f"id-{k:05d}" for k in range(n)]
    rng.shuffle(ids)
    rows = [
        {"id": i, "text": f"{' '.join(rng.choices(WORDS, k=8))} ({i}, {{braces}} kept)"}
        for i in ids
    ]
    pl.DataFrame(rows).write_csv(path)
    return rows


def prompt_of(text: str) -> str:
    return f"Review: {text}\nAnswer with one word: positive, negative or neutral."


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


QUICK = {"latency_ms": 2}  # this module's simulator: what a reset mid-test keeps


@pytest.fixture
def sim(session_sim):
    """The session's simulator, started over with QUICK for the test."""
    with session_sim.started_over(**QUICK) as simulator:
        yield simulator


def test_rows_in_order_each_with_its_own_answer_usage_and_exact_cost(tmp_path, sim, cli):
    rows = reviews(tmp_path / "in.csv", 240)
    job = label_job(tmp_path, tmp_path / "in.csv")
    done = cli("run", str(job), "--base-url", sim.base_url)
    assert done.returncode == 0, done.stderr
    out = pl.read_parquet(tmp_path / "out" / "results.parquet")
    assert out["id"].to_list() == [r["id"] for r in rows]  # input order, once each
    assert out["status"].unique().to_list() == ["ok"]
    assert out["text"].to_list() == [r["text"] for r in rows]

    ledger = {entry["request_id"]: entry for entry in sim.ledger()}
    assert len(ledger) == len(rows)  # billed once per row, nothing more
    for row in out.iter_rows(named=True):
        billed = ledger[row["request_id"]]
        assert billed["prompt_sha256"] == sha(prompt_of(row["text"]))  # its own answer
        for column, key in [
            ("input_tokens", "input_tokens"),
            ("output_tokens", "output_tokens"),
            ("cache_read_input_tokens", "cache_read_input_tokens"),
            ("cache_creation_input_tokens", "cache_creation_input_tokens"),
        ]:
            assert row[column] == billed[key]
        exact = (Decimal(row["input_tokens"]) * 1 + Decimal(row["output_tokens"]) * 5) / 10**6
        assert row["cost_usd"] == float(exact)
        assert row["input_cost_usd"] == float(Decimal(row["input_tokens"]) / 10**6)
        assert row["model"] == MODEL and row["label"] in ("positive", "negative", "neutral")
        assert row["label"] == row["response_text"]
        assert row["price_table_version"]


def test_prompt_cache_tokens_are_priced_at_cache_rates(tmp_path, sim, cli):
    reviews(tmp_path / "in.csv", 30)
    system = [
        {
            "type": "text",
            "text": "You label reviews. " * 900,  # above the 4,096 tokens Haiku 4.5 caches
            "cache_control": {"type": "ephemeral", "ttl": "1h"},
        }
    ]
    job = label_job(
        tmp_path, tmp_path / "in.csv", request={"system": system}, limits={"concurrency": 1}
    )
    done = cli("run", str(job), "--base-url", sim.base_url)
    assert done.returncode == 0, done.stderr
    out = pl.read_parquet(tmp_path / "out" / "results.parquet")
    writes = out.filter(pl.col("cache_creation_1h_tokens") > 0)
    reads = out.filter(pl.col("cache_read_input_tokens") > 0)
    assert writes.height >= 1 and reads.height >= 1
    for row in out.iter_rows(named=True):
        expected = (
            Decimal(row["cache_creation_1h_tokens"]) * 2  # 2x the $1 input price
            + Decimal(row["cache_read_input_tokens"]) * Decimal("0.1")
        ) / 10**6
        assert row["cache_write_cost_usd"] + row["cache_read_cost_usd"] == pytest.approx(
            float(expected), rel=1e-12
        )


@pytest.mark.parametrize("suffix", ["parquet", "jsonl"])
def test_parquet_and_jsonl_inputs_give_the_same_rows(tmp_path, sim, suffix, cli):
    rows = reviews(tmp_path / "in.csv", 40)
    frame = pl.read_csv(tmp_path / "in.csv")
    path = tmp_path / f"in.{suffix}"
    frame.write_parquet(path) if suffix == "parquet" else frame.write_ndjson(path)
    job = label_job(tmp_path, path)
    done = cli("run", str(job), "--base-url", sim.base_url)
    assert done.returncode == 0, done.stderr
    out = pl.read_parquet(tmp_path / "out" / "results.parquet")
    assert out["id"].to_list() == [r["id"] for r in rows]


def test_null_template_cell_is_an_error_row_never_sent(tmp_path, sim, cli):
    pl.DataFrame({"id": ["a", "b", "c"], "text": ["good", None, "bad"]}).write_csv(
        tmp_path / "in.csv"
    )
    job = label_job(tmp_path, tmp_path / "in.csv")
    done = cli("run", str(job), "--base-url", sim.base_url)
    assert done.returncode == 0, done.stderr
    out = pl.read_parquet(tmp_path / "out" / "results.parquet")
    assert out["status"].to_list() == ["ok", "error", "ok"]
    missing = out.row(1, named=True)
    assert missing["error_type"] == "missing_value" and "text" in missing["error_message"]
    assert missing["input_tokens"] is None and missing["cost_usd"] == 0.0
    assert missing["attempts"] == 0
    assert sim.stats()["requests"] == 2


def test_unknown_model_gets_null_costs_and_one_warning(tmp_path, sim, cli):
    reviews(tmp_path / "in.csv", 12)
    job = label_job(tmp_path, tmp_path / "in.csv", request={"model": "claude-future-9"})
    done = cli("run", str(job), "--base-url", sim.base_url)
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("no price for model 'claude-future-9'") == 1
    out = pl.read_parquet(tmp_path / "out" / "results.parquet")
    assert out["cost_usd"].null_count() == 12
    assert out["input_tokens"].null_count() == 0


def test_pricing_override_from_the_job(tmp_path, sim, cli):
    reviews(tmp_path / "in.csv", 10)
    job = label_job(tmp_path, tmp_path / "in.csv", pricing={MODEL: {"input": 2.5, "output": 10}})
    assert cli("run", str(job), "--base-url", sim.base_url).returncode == 0
    out = pl.read_parquet(tmp_path / "out" / "results.parquet")
    for row in out.iter_rows(named=True):
        exact = (
            Decimal(row["input_tokens"]) * Decimal("2.5") + Decimal(row["output_tokens"]) * 10
        ) / 10**6
        assert row["cost_usd"] == float(exact)
    assert "+job-" in out["price_table_version"][0]


def test_rerun_resumes_without_sending_again(tmp_path, sim, cli):
    reviews(tmp_path / "in.csv", 30)
    job = label_job(tmp_path, tmp_path / "in.csv")
    assert cli("run", str(job), "--base-url", sim.base_url, "--limit", "12").returncode == 0
    sim.reset(**QUICK)
    again = cli("run", str(job), "--base-url", sim.base_url)
    assert again.returncode == 0, again.stderr
    assert sim.stats()["requests"] == 18  # only the rows the first run did not do
    out = pl.read_parquet(tmp_path / "out" / "results.parquet")
    assert out.height == 30 and out["id"].is_unique().all()


def test_simulate_flag_runs_the_sample_job(tmp_path, cli):
    done = cli(
        "run",
        "jobs/label_reviews.toml",
        "--simulate",
        "--limit",
        "25",
        "--output",
        str(tmp_path / "out"),
        "--rpm",
        "6000",
        env={"AISA_API_KEY": "", "ANTHROPIC_API_KEY": ""},
    )
    assert done.returncode == 0, done.stderr
    assert "25 ok, 0 error" in done.stderr and "cost $" in done.stderr
    out = pl.read_parquet(tmp_path / "out" / "results.parquet")
    assert out.height == 25
    # Each row's label is the simulator's verdict as the job's model (Haiku 4.5) degrades
    # it; the verdict is a plausible classifier, this model a weaker one.
    prompt = "Review of {product}: {text}\nAnswer with one word: positive, negative or neutral."
    expected = [simulated_label(MODEL, prompt.format(**row)) for row in out.iter_rows(named=True)]
    assert out["label"].to_list() == expected
    assert (out["label"] == out["gold_label"]).mean() > 0.5
    report = cli("report", str(tmp_path / "out"))
    assert report.returncode == 0 and MODEL in report.stdout and "TOTAL" in report.stdout


@pytest.mark.parametrize("in_flight", [16, 64])
def test_budget_is_never_crossed_and_a_higher_one_resumes(tmp_path, in_flight, cli, session_sim):
    reviews(tmp_path / "in.csv", 120)
    job = label_job(tmp_path, tmp_path / "in.csv", limits={"concurrency": in_flight})
    with session_sim.started_over(latency_ms=30) as simulator:
        budget = 0.0015  # about 40 of these rows, each ~$0.00004 worst case ~$0.00012
        stopped = cli("run", str(job), "--base-url", simulator.base_url, "--max-cost", str(budget))
        billed = (
            sum(
                entry["input_tokens"] * 1 + entry["output_tokens"] * 5
                for entry in simulator.ledger()
            )
            / 1e6
        )
        assert stopped.returncode == 3, stopped.stderr
        assert "stopped at the budget" in stopped.stderr and "--max-cost" in stopped.stderr
        assert 0 < billed <= budget
        done_first = pl.read_parquet(tmp_path / "out" / "results.parquet").height
        assert 0 < done_first < 120
        resumed = cli("run", str(job), "--base-url", simulator.base_url, "--max-cost", "1")
        assert resumed.returncode == 0, resumed.stderr
        assert len(simulator.ledger()) == 120  # nothing paid twice


def test_report_formats_add_up(tmp_path, sim, cli):
    reviews(tmp_path / "in.csv", 30)
    job = label_job(tmp_path, tmp_path / "in.csv")
    assert cli("run", str(job), "--base-url", sim.base_url).returncode == 0
    out = pl.read_parquet(tmp_path / "out" / "results.parquet")
    csv = cli("report", str(tmp_path / "out"), "--by", "label", "--format", "csv")
    assert csv.returncode == 0, csv.stderr
    table = pl.read_csv(csv.stdout.encode())
    total = table.filter(pl.col("label") == "TOTAL")
    assert total["rows"].item() == 30
    assert total["cost_usd"].item() == pytest.approx(out["cost_usd"].sum(), rel=1e-12)
    assert total["mean_cost_usd"].item() == pytest.approx(out["cost_usd"].mean(), rel=1e-12)
    assert total["p95_cost_usd"].item() == pytest.approx(out["cost_usd"].quantile(0.95))
    assert total["rows_not_done"].item() == 0
    assert table.filter(pl.col("label") != "TOTAL")["rows"].sum() == 30
    as_json = cli("report", str(tmp_path / "out"), "--format", "json")
    assert '"model": "claude-haiku-4-5-20251001"' in as_json.stdout
    markdown = cli("report", str(tmp_path / "out"), "--format", "markdown")
    assert markdown.stdout.startswith("| model | rows |")
    bad = cli("report", str(tmp_path / "out"), "--by", "nope")
    assert bad.returncode == 2 and "--by nope: no such column" in bad.stderr


def test_requests_are_spread_evenly_not_burst(tmp_path, sim, cli):
    reviews(tmp_path / "in.csv", 50)
    job = label_job(
        tmp_path, tmp_path / "in.csv", limits={"concurrency": 32, "requests_per_minute": 1500}
    )  # 25 a second
    assert cli("run", str(job), "--base-url", sim.base_url).returncode == 0
    times = sorted(entry["ts"] for entry in sim.ledger())
    start = times[0]
    in_first_second = sum(1 for t in times if t - start < 1.0)
    assert in_first_second <= 25 + 3  # a minute's worth at the start would be all 50
    assert times[-1] - start >= 1.8  # 50 requests at 25/s take about two seconds


def test_per_row_overrides_and_unknown_blocks(tmp_path, sim, cli):
    pl.DataFrame(
        {
            "id": ["a", "b", "c"],
            "text": ["great [[sim:unknown_block]]", "awful", "fine"],
            "which_model": ["claude-sonnet-4-5", None, "claude-opus-4-5"],
            "mt": [8, 4, None],
        }
    ).write_csv(tmp_path / "in.csv")
    job = label_job(
        tmp_path, tmp_path / "in.csv", overrides={"model": "which_model", "max_tokens": "mt"}
    )
    done = cli("run", str(job), "--base-url", sim.base_url)
    assert done.returncode == 0, done.stderr
    out = pl.read_parquet(tmp_path / "out" / "results.parquet")
    assert out["model"].to_list() == ["claude-sonnet-4-5", MODEL, "claude-opus-4-5"]
    assert out["status"].to_list() == ["ok"] * 3
    assert "future_block" in out["content_json"][0]  # kept, and it did not break the run
    sonnet = out.row(0, named=True)  # priced by its own model: 3 / 15
    assert sonnet["cost_usd"] == float(
        (Decimal(sonnet["input_tokens"]) * 3 + Decimal(sonnet["output_tokens"]) * 15) / 10**6
    )
    assert [e["model"] for e in sim.ledger()].count("claude-opus-4-5") == 1


def test_python_api_with_a_job_built_in_code(tmp_path, sim):
    from pipeline import job_from_dict, run_job

    reviews(tmp_path / "in.csv", 15)
    job = job_from_dict(
        {
            "job": {"input": str(tmp_path / "in.csv"), "output": str(tmp_path / "api-out")},
            "api": {"base_url": sim.base_url},
            "request": {"model": MODEL, "max_tokens": 8, "prompt": "Label: {text}"},
        }
    )
    summary = run_job(job, api_key="sk-test", show_progress=False)
    assert (summary.rows_ok, summary.rows_error, summary.complete) == (15, 0, True)
    assert summary.cost_usd == pytest.approx(
        pl.read_parquet(tmp_path / "api-out" / "results.parquet")["cost_usd"].sum()
    )
    out = pl.read_parquet(summary.results)
    assert out["row_id"].to_list() == list(range(15))  # the default id: the row number


def test_server_limit_lower_than_the_jobs_is_learned_with_few_429s(tmp_path, cli, session_sim):
    reviews(tmp_path / "in.csv", 100)
    job = label_job(
        tmp_path, tmp_path / "in.csv", limits={"concurrency": 16, "requests_per_minute": 6000}
    )
    with session_sim.started_over(rpm=1200, latency_ms=20) as limited:  # 20 a second, 2 s of burst
        done = cli("run", str(job), "--base-url", limited.base_url)
        stats = limited.stats()
    assert done.returncode == 0, done.stderr
    assert "requests limit 1,200/min lowered by the server" in done.stderr
    assert stats["by_status"].get("429", 0) <= 2
    out = pl.read_parquet(tmp_path / "out" / "results.parquet")
    assert out.height == 100 and out["status"].unique().to_list() == ["ok"]


def test_per_row_temperature_and_system_reach_the_api(tmp_path, sim, cli):
    from pipeline.input.render import RequestRenderer
    from pipeline.job.load import load_job
    from pipeline.providers.anthropic import estimate_input_tokens

    rows = [
        {"id": "a", "text": "great", "temp": 0.3, "sys": "You are terse. " * 40},
        {"id": "b", "text": "awful", "temp": None, "sys": None},
    ]
    pl.DataFrame(rows).write_csv(tmp_path / "in.csv")
    job = label_job(
        tmp_path,
        tmp_path / "in.csv",
        request={"system": "Default system."},
        overrides={"temperature": "temp", "system": "sys"},
    )
    done = cli("run", str(job), "--base-url", sim.base_url)
    assert done.returncode == 0, done.stderr
    loaded = load_job(job)
    renderer = RequestRenderer(loaded.request, loaded.prompt, loaded.system, loaded.overrides)
    bodies = [renderer.render(row) for row in rows]
    assert (bodies[0]["temperature"], bodies[0]["system"]) == (0.3, rows[0]["sys"])
    assert (bodies[1]["temperature"], bodies[1]["system"]) == (0, "Default system.")
    out = pl.read_parquet(tmp_path / "out" / "results.parquet")
    # the simulator counts the system it was sent: each row's own
    assert out["input_tokens"].to_list() == [estimate_input_tokens(b) for b in bodies]
