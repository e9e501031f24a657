"""`pipeline estimate` against the simulator, whose answers here have a known length."""

from __future__ import annotations

import re

import polars as pl
import pytest

from pipeline.input.tokens import estimate_tokens
from tests.e2e import label_job

REPLY = "one two three four five six seven eight nine ten"


def money(text: str, label: str) -> list[float]:
    line = next(x for x in text.splitlines() if x.startswith(label))
    return [float(v.replace(",", "")) for v in re.findall(r"\$([\d,.]+\d)", line)]


def job_with_known_answers(tmp_path):
    texts = [f"review {i}: " + "words " * (i % 17) for i in range(60)]
    pl.DataFrame({"id": [f"e{i}" for i in range(60)], "text": texts}).write_csv(tmp_path / "in.csv")
    return label_job(
        tmp_path,
        tmp_path / "in.csv",
        request={"prompt": f"Summarize: {{text}} [[sim:reply={REPLY}]]", "max_tokens": 64},
        extract={"kind": "text", "choices": []},
        limits={"requests_per_minute": 3600},  # 60 rows: one second
    )


def test_estimate_without_pilot_brackets_the_real_cost_and_sends_nothing(tmp_path, sim, cli):
    job = job_with_known_answers(tmp_path)
    sim.reset()
    estimate = cli("estimate", str(job))
    assert estimate.returncode == 0, estimate.stderr
    assert sim.stats()["requests"] == 0
    low, high = money(estimate.stdout, "cost online")
    batch_low, batch_high = money(estimate.stdout, "cost batch")
    assert (batch_low, batch_high) == pytest.approx((low / 2, high / 2), abs=1e-4)
    assert "output tokens  0 .. 3,840" in estimate.stdout  # 60 rows x max_tokens 64
    assert "at least 0m 01s at the job's limits (requests_per_minute binds)" in estimate.stdout
    assert cli("run", str(job), "--base-url", sim.base_url).returncode == 0
    out = pl.read_parquet(tmp_path / "out" / "results.parquet")
    estimated_input = int(
        re.search(r"input tokens\s+([\d,]+)", estimate.stdout)[1].replace(",", "")
    )
    assert estimated_input == out["input_tokens"].sum()  # the local estimate, exact here
    assert low <= out["cost_usd"].sum() <= high


def test_pilot_extrapolates_to_the_real_cost_and_is_not_paid_twice(tmp_path, sim, cli):
    job = job_with_known_answers(tmp_path)
    sim.reset()
    estimate = cli("estimate", str(job), "--pilot", "12", "--base-url", sim.base_url)
    assert estimate.returncode == 0, estimate.stderr
    assert sim.stats()["requests"] == 12
    pilot_cost = money(estimate.stdout, "pilot")[0]
    low, mid, high = money(estimate.stdout, "projected cost")[:3]
    per_row = estimate_tokens(REPLY)
    assert f"mean {per_row:.1f}, p50 {per_row}, p95 {per_row}" in estimate.stdout
    assert f"output tokens {48 * per_row:,} for the rest" in estimate.stdout
    run = cli("run", str(job), "--base-url", sim.base_url)
    assert run.returncode == 0, run.stderr
    assert "12 from earlier runs" in run.stderr
    assert len(sim.ledger()) == 60  # the pilot's rows were not sent again
    out = pl.read_parquet(tmp_path / "out" / "results.parquet")
    assert out.height == 60
    assert mid == pytest.approx(out["cost_usd"].sum(), abs=6e-5)  # printed to 4 decimals
    assert low <= mid <= high and pilot_cost > 0


def test_count_tokens_when_the_job_asks_for_it(tmp_path, sim, cli):
    job = job_with_known_answers(tmp_path)
    job.write_text(job.read_text() + "\n[estimate]\ncount_tokens = true\n")
    sim.reset()
    estimate = cli("estimate", str(job), "--base-url", sim.base_url)
    assert estimate.returncode == 0, estimate.stderr
    assert "counted by the API's count_tokens" in estimate.stdout
    assert sim.stats()["requests"] == 60 and sim.ledger() == []  # counted, never billed
    counted = int(re.search(r"input tokens\s+([\d,]+)", estimate.stdout)[1].replace(",", ""))
    assert cli("run", str(job), "--base-url", sim.base_url).returncode == 0
    out = pl.read_parquet(tmp_path / "out" / "results.parquet")
    assert counted == out["input_tokens"].sum()
