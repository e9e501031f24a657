"""`pipeline status`: --format json (the fields the text shows), rows remaining split into
those in batches and those not yet sent, and --refresh asking the API for the batches'
current state instead of showing them as a run last saw them."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from pipeline.simulator.process import SimulatorProcess
from tests.e2e import label_job, wait_for


def reviews(path: Path, n: int) -> Path:
    texts = [f"great product number {i}" for i in range(n)]
    pl.DataFrame({"id": [f"r{i}" for i in range(n)], "text": texts}).write_csv(path)
    return path


def test_status_json_of_an_online_run(tmp_path: Path, sim: Any, cli: Any) -> None:
    job = label_job(tmp_path, reviews(tmp_path / "in.csv", 12))
    assert cli("run", str(job), "--base-url", sim.base_url, "--limit", "8").returncode == 0
    out = tmp_path / "out"
    done = cli("status", str(out), "--format", "json")
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout, parse_float=Decimal)
    assert data["job"] == "t" and data["cascade"] is False and data["complete"] is False
    assert data["rows"] == {
        "total": 12, "ok": 8, "invalid_labels": 0, "error": 0,
        "remaining": 4, "in_batches": 0, "not_sent": 4,
    }  # fmt: skip
    results = pl.read_parquet(out / "results.parquet")
    assert data["tokens"] == {
        "input": results["input_tokens"].sum(),
        "output": results["output_tokens"].sum(),
    }
    assert data["cost_usd"] == sum(Decimal(repr(c)) for c in results["cost_usd"])
    assert data["batches"] == [] and data["last_run"]["started_at"]
    text = cli("status", str(out)).stdout
    assert "12 total, 8 ok, 0 error, 4 remaining (0 in batches, 4 not yet sent)" in text


@pytest.fixture
def slow_batches(session_sim: SimulatorProcess) -> Any:
    """A simulator whose batches end 3 s after their create: a detached run leaves one."""
    with session_sim.started_over(batch_latency_s=3.0) as simulator:
        yield simulator


def test_status_refresh_asks_the_api_for_the_batches_state(
    tmp_path: Path, slow_batches: SimulatorProcess, cli: Any
) -> None:
    url = slow_batches.base_url
    job = label_job(tmp_path, reviews(tmp_path / "in.csv", 10), api={"mode": "batch"})
    assert cli("run", str(job), "--base-url", url, "--detach", "--limit", "6").returncode == 5
    out = tmp_path / "out"
    seen = json.loads(cli("status", str(out), "--format", "json").stdout)
    assert seen["rows"]["in_batches"] == 6 and seen["rows"]["not_sent"] == 4
    (batch,) = seen["batches"]
    assert batch["state"] == "in_progress" and batch["seen"] == "last run"
    wait_for(lambda: slow_batches.stats()["billed"] >= 6, "the batch ended on the server")

    refreshed = cli("status", str(out), "--refresh", "--base-url", url, "--format", "json")
    assert refreshed.returncode == 0, refreshed.stderr
    now = json.loads(refreshed.stdout)
    (batch,) = now["batches"]
    assert batch["state"] == "ended" and batch["seen"] == "now" and not batch["collected"]
    assert batch["counts"] == {"succeeded": 6} and now["not_refreshed"] == []
    text = cli("status", str(out), "--refresh", "--base-url", url)
    assert "as the API says now" in text.stdout and "ended  6 requests (succeeded 6)" in text.stdout
    assert "sk-test-key" not in text.stdout + text.stderr + refreshed.stdout  # the key

    # a host not named by --base-url (nor the default) is not sent the key: as last seen
    other = cli("status", str(out), "--refresh")
    assert "as last seen" in other.stdout and f"add --base-url {url}" in other.stderr
    assert (
        json.loads(cli("status", str(out), "--format", "json").stdout)["batches"][0]["state"]
        == "in_progress"
    )  # status wrote nothing: the run's book is the run's


def test_status_json_of_a_cascade_output(tmp_path: Path, sim: Any, cli: Any) -> None:
    """The cascade's own status (cascade_status) as json: rows decided, each phase."""
    cascade = {"models": ["claude-3-haiku-20240307", "claude-opus-4-6"], "calibration_rows": 4}
    # the first stage's model; above temperature 0: identical requests' votes say something
    request = {"temperature": 1, "model": "claude-3-haiku-20240307"}
    job = label_job(tmp_path, reviews(tmp_path / "in.csv", 8), cascade=cascade, request=request)
    ran = cli("run", str(job), "--base-url", sim.base_url)
    assert ran.returncode == 0, ran.stderr
    data = json.loads(cli("status", str(tmp_path / "out"), "--format", "json").stdout)
    assert data["cascade"] is True and data["complete"] is True
    assert data["rows"] == {"total": 8, "decided": 8, "error": 0, "remaining": 0}
    assert data["requests"] and all(p["answered"] == p["asked"] for p in data["requests"])
    text = cli("status", str(tmp_path / "out")).stdout
    assert "(a cascade)" in text and "8 decided (0 error), 0 remaining" in text
