"""The simulator's Message Batches API over real HTTP, against a SimulatorProcess child."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from typing import Any

import orjson
import pytest

from pipeline.simulator.process import SimulatorProcess
from tests.simulator_helpers import NO_PROXY, Reply, message, post

LATENCY_S = 0.2
BATCHES = "/v1/messages/batches"


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Any:
    ledger = tmp_path_factory.mktemp("sim") / "ledger.jsonl"
    with SimulatorProcess(seed=3, ledger_path=str(ledger), batch_latency_s=LATENCY_S) as process:
        yield process
    assert process.returncode == 0


def get(base_url: str, path: str) -> Reply:
    request = urllib.request.Request(base_url + path, method="GET")
    try:
        with NO_PROXY.open(request, timeout=10) as response:
            headers = {k.lower(): v for k, v in response.headers.items()}
            return Reply(response.status, headers, response.read().decode())
    except urllib.error.HTTPError as error:
        headers = {k.lower(): v for k, v in error.headers.items()}
        return Reply(error.code, headers, error.read().decode())


def create(sim: SimulatorProcess, requests: list[dict[str, Any]]) -> Reply:
    return post(sim.base_url, {"requests": requests}, path=BATCHES)


def wait_ended(sim: SimulatorProcess, batch_id: str, timeout_s: float = 5.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        batch: dict[str, Any] = get(sim.base_url, f"{BATCHES}/{batch_id}").json
        if batch["processing_status"] == "ended":
            return batch
        time.sleep(0.02)
    raise AssertionError(f"batch {batch_id} did not end within {timeout_s} s")


def results(sim: SimulatorProcess, batch_id: str) -> list[dict[str, Any]]:
    reply = get(sim.base_url, f"{BATCHES}/{batch_id}/results")
    assert reply.status == 200
    return [orjson.loads(line) for line in reply.text.splitlines()]


def ledger_for(sim: SimulatorProcess, batch_id: str) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = get(sim.base_url, "/_sim/ledger").json
    return [e for e in entries if e["request_id"].startswith(batch_id + ":")]


def test_a_batch_runs_to_the_end_and_bills_each_request_once(sim: SimulatorProcess) -> None:
    ids = [f"row-{i}" for i in range(12)]
    started = time.monotonic()
    reply = create(sim, [{"custom_id": cid, "params": message(f"Say {cid}.")} for cid in ids])
    assert reply.status == 200, reply.text
    batch = reply.json
    assert batch["id"].startswith("msgbatch_") and batch["type"] == "message_batch"
    assert batch["processing_status"] == "in_progress"
    assert batch["request_counts"] == {
        "processing": 12,
        "succeeded": 0,
        "errored": 0,
        "canceled": 0,
        "expired": 0,
    }
    assert batch["ended_at"] is None and batch["results_url"] is None
    assert batch["cancel_initiated_at"] is None and batch["archived_at"] is None
    assert get(sim.base_url, f"{BATCHES}/{batch['id']}/results").status == 400

    ended = wait_ended(sim, batch["id"])
    assert time.monotonic() - started < LATENCY_S + 2.0
    assert ended["request_counts"]["succeeded"] == 12
    assert ended["request_counts"]["processing"] == 0
    assert ended["ended_at"] is not None
    assert ended["results_url"] == f"{sim.base_url}{BATCHES}/{batch['id']}/results"
    lines = results(sim, batch["id"])
    assert sorted(line["custom_id"] for line in lines) == sorted(ids)
    assert [line["custom_id"] for line in lines] != ids  # any order: clients must join
    online = post(sim.base_url, message("Say row-3.")).json
    by_id = {line["custom_id"]: line["result"] for line in lines}
    assert by_id["row-3"]["type"] == "succeeded"
    assert by_id["row-3"]["message"]["content"] == online["content"]
    for result in by_id.values():
        assert result["message"]["usage"]["service_tier"] == "batch"
    billed = ledger_for(sim, batch["id"])
    assert len(billed) == 12
    assert {e["message_id"] for e in billed} == {r["message"]["id"] for r in by_id.values()}
    assert all(e["endpoint"] == "batch" and e["service_tier"] == "batch" for e in billed)


def test_a_scripted_status_makes_that_request_errored(sim: SimulatorProcess) -> None:
    requests = [
        {"custom_id": "good", "params": message("Hello.")},
        {"custom_id": "bad", "params": message("Hello. [[sim:status=529]]")},
    ]
    batch = create(sim, requests).json
    ended = wait_ended(sim, batch["id"])
    assert ended["request_counts"]["succeeded"] == 1
    assert ended["request_counts"]["errored"] == 1
    by_id = {line["custom_id"]: line["result"] for line in results(sim, batch["id"])}
    assert by_id["bad"] == {
        "type": "errored",
        "error": {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}},
    }
    assert len(ledger_for(sim, batch["id"])) == 1  # errored requests are not billed


def test_list_is_newest_first_and_pages(sim: SimulatorProcess) -> None:
    made = [
        create(sim, [{"custom_id": "a", "params": message("Hi.")}]).json["id"] for _ in range(3)
    ]
    page = get(sim.base_url, f"{BATCHES}?limit=2").json
    assert [b["id"] for b in page["data"]] == made[::-1][:2]
    assert page["has_more"] is True
    assert page["first_id"] == made[2] and page["last_id"] == made[1]
    older = get(sim.base_url, f"{BATCHES}?limit=1&after_id={page['last_id']}").json
    assert [b["id"] for b in older["data"]] == [made[0]]
    newer = get(sim.base_url, f"{BATCHES}?limit=5&before_id={made[0]}").json
    assert [b["id"] for b in newer["data"]] == [made[2], made[1]]
    assert newer["has_more"] is False
    for batch_id in made:
        wait_ended(sim, batch_id)


def test_cancel_ends_the_batch_with_unprocessed_requests_canceled() -> None:
    with SimulatorProcess(batch_latency_s=30.0) as slow:
        requests = [{"custom_id": f"r{i}", "params": message("Hi.")} for i in range(5)]
        batch = create(slow, requests).json
        canceled = post(slow.base_url, {}, path=f"{BATCHES}/{batch['id']}/cancel")
        assert canceled.status == 200
        assert canceled.json["processing_status"] in ("canceling", "ended")
        assert canceled.json["cancel_initiated_at"] is not None
        ended = wait_ended(slow, batch["id"], timeout_s=3.0)
        assert ended["request_counts"]["canceled"] == 5
        lines = results(slow, batch["id"])
        assert {line["result"]["type"] for line in lines} == {"canceled"}
        assert len(lines) == 5
        assert slow.ledger() == []


@pytest.mark.parametrize(
    "requests",
    [
        [{"custom_id": "has space", "params": message("Hi.")}],
        [{"custom_id": "x" * 65, "params": message("Hi.")}],
        [{"custom_id": "same", "params": message("Hi.")}] * 2,
        [{"custom_id": "ok", "params": {"model": "claude-haiku-4-5"}}],
        [],
    ],
    ids=["bad-chars", "too-long", "duplicate", "bad-params", "empty"],
)
def test_invalid_batches_are_rejected_whole(
    sim: SimulatorProcess, requests: list[dict[str, Any]]
) -> None:
    reply = create(sim, requests)
    assert reply.status == 400
    assert reply.json["error"]["type"] == "invalid_request_error"


def test_unknown_batch_is_404(sim: SimulatorProcess) -> None:
    for reply in (
        get(sim.base_url, f"{BATCHES}/msgbatch_nope"),
        get(sim.base_url, f"{BATCHES}/msgbatch_nope/results"),
        post(sim.base_url, {}, path=f"{BATCHES}/msgbatch_nope/cancel"),
    ):
        assert reply.status == 404
        assert reply.json["error"]["type"] == "not_found_error"
