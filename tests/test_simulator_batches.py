"""The simulator's Message Batches API over real HTTP, against a SimulatorProcess child."""

from __future__ import annotations

import asyncio
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest

from pipeline.simulator.batch_faults import BatchFaults
from pipeline.simulator.config import SimConfig
from pipeline.simulator.process import SimulatorProcess
from tests.simulator_helpers import NO_PROXY, Reply, message, post

LATENCY_S = 0.2
BATCHES = "/v1/messages/batches"


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Any:
    # Its own process, not the session's started over: a ledger file (fixed at the start),
    # and its exit code checked once it has served the module's batches.
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
    assert {e["batch_id"] for e in billed} == {batch["id"]}
    assert sorted(e["custom_id"] for e in billed) == sorted(ids)
    for entry in billed:  # the ledger's tokens are the row's usage: its cost can be checked
        usage = by_id[entry["custom_id"]]["message"]["usage"]
        assert (entry["input_tokens"], entry["output_tokens"]) == (
            usage["input_tokens"],
            usage["output_tokens"],
        )


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


def test_cancel_ends_the_batch_with_unprocessed_requests_canceled(
    session_sim: SimulatorProcess,
) -> None:
    with session_sim.started_over(batch_latency_s=30.0) as slow:
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


def requests_for(texts: dict[str, str]) -> list[dict[str, Any]]:
    return [{"custom_id": cid, "params": message(text)} for cid, text in texts.items()]


def test_a_row_sent_in_two_batches_shows_billed_twice(sim: SimulatorProcess) -> None:
    """How a test counts money paid twice: the same custom_id and prompt in two batch_ids."""
    first = create(sim, requests_for({"row-7": "Say seven."})).json["id"]
    second = create(sim, requests_for({"row-7": "Say seven.", "row-8": "Say eight."})).json["id"]
    wait_ended(sim, first), wait_ended(sim, second)
    online = post(sim.base_url, message("Say seven.")).headers["request-id"]
    entries = [e for e in sim.ledger() if e["batch_id"] in (first, second)]
    batches_per_row = Counter((e["custom_id"], e["prompt_sha256"]) for e in entries)
    assert [key[0] for key, n in batches_per_row.items() if n > 1] == ["row-7"]
    [online_entry] = [e for e in sim.ledger() if e["request_id"] == online]
    assert online_entry["batch_id"] is None and online_entry["custom_id"] is None


def outcomes_of(sim: SimulatorProcess, texts: dict[str, str]) -> list[str]:
    """The result type of each request of a new batch of `texts`, in input order."""
    batch = create(sim, requests_for(texts)).json
    wait_ended(sim, batch["id"])
    by_id = {line["custom_id"]: line["result"]["type"] for line in results(sim, batch["id"])}
    return [by_id[cid] for cid in texts]


def test_errored_rate_one_ends_every_request_overloaded_and_unbilled(
    session_sim: SimulatorProcess,
) -> None:
    with session_sim.started_over(batch_errored_rate=1.0, batch_latency_s=0.0) as faulty:
        texts = {f"r{i}": f"Say {i}." for i in range(5)} | {"bad": "Hi. [[sim:status=400]]"}
        batch = create(faulty, requests_for(texts)).json
        ended = wait_ended(faulty, batch["id"])
        assert ended["request_counts"]["errored"] == 6
        by_id = {line["custom_id"]: line["result"] for line in results(faulty, batch["id"])}
        overloaded = {"type": "overloaded_error", "message": "Overloaded"}  # transient
        for cid in (f"r{i}" for i in range(5)):
            assert by_id[cid]["error"] == {"type": "error", "error": overloaded}
            assert by_id[cid]["type"] == "errored"
        # A scripted status keeps its own (here non-transient) error type.
        assert by_id["bad"]["error"]["error"]["type"] == "invalid_request_error"
        assert faulty.ledger() == [] and faulty.stats()["billed"] == 0


def test_expired_rate_one_ends_every_request_expired_and_unbilled(
    session_sim: SimulatorProcess,
) -> None:
    with session_sim.started_over(batch_expired_rate=1.0, batch_latency_s=0.0) as faulty:
        assert outcomes_of(faulty, {f"r{i}": f"Say {i}." for i in range(4)}) == ["expired"] * 4
        assert faulty.ledger() == []


def test_fault_draws_repeat_for_a_seed_and_are_fresh_in_a_later_batch(
    session_sim: SimulatorProcess,
) -> None:
    texts = {f"r{i}": f"Say {i}." for i in range(40)}
    faults: dict[str, Any] = {"seed": 5, "batch_errored_rate": 0.3, "batch_expired_rate": 0.3}
    config = SimConfig(**faults)
    with session_sim.started_over(**faults, batch_latency_s=0.0) as faulty:
        first = outcomes_of(faulty, texts)
        later = outcomes_of(faulty, texts)  # the same requests, resubmitted
        faulty.reset(**faults, batch_latency_s=0.0)  # started over with the same settings
        again = outcomes_of(faulty, texts)
        billed = faulty.ledger()
    assert set(first) == {"succeeded", "errored", "expired"}
    assert later != first  # a retry in a later batch gets a draw of its own...
    assert again == first  # ...and the same creates in the same order, the same draws
    assert len(billed) == again.count("succeeded")  # only succeeded requests are billed
    drawn = BatchFaults(config).outcomes(40)  # the draws do not depend on timing
    assert [fault or "succeeded" for fault in drawn] == first


def test_lose_create_draws_first_n_then_the_seeded_rate() -> None:
    assert [BatchFaults(SimConfig()).lose_create() for _ in range(3)] == [False] * 3
    first_two = BatchFaults(SimConfig(batch_lose_first_creates=2))
    assert [first_two.lose_create() for _ in range(4)] == [True, True, False, False]
    always = BatchFaults(SimConfig(batch_lose_create_rate=1.0))
    assert all(always.lose_create() for _ in range(5))
    half = BatchFaults(SimConfig(seed=9, batch_lose_create_rate=0.5))
    drawn = [half.lose_create() for _ in range(20)]
    half.reset()
    assert [half.lose_create() for _ in range(20)] == drawn and True in drawn and False in drawn


async def post_raw(url: str, data: bytes | AsyncIterator[bytes]) -> tuple[int, Any]:
    """POST with aiohttp (an async iterator goes chunked, with no Content-Length)."""
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, data=data, headers={"content-type": "application/json"}) as response,
    ):
        return response.status, orjson.loads(await response.read())


def test_a_lost_create_drops_the_connection_yet_the_batch_is_made_and_listed(
    session_sim: SimulatorProcess,
) -> None:
    with session_sim.started_over(batch_lose_first_creates=1, batch_latency_s=0.0) as lossy:
        body = orjson.dumps({"requests": requests_for({"lost": "Hi."})})
        with pytest.raises(aiohttp.ClientConnectionError):
            asyncio.run(post_raw(lossy.base_url + BATCHES, body))
        [listed] = get(lossy.base_url, BATCHES).json["data"]  # found again only by listing
        assert wait_ended(lossy, listed["id"])["request_counts"]["succeeded"] == 1
        assert [e["custom_id"] for e in lossy.ledger()] == ["lost"]
        assert create(lossy, requests_for({"next": "Hi."})).status == 200  # only the first
        assert lossy.stats()["dropped"] == 1


def too_large(limit: int) -> dict[str, str]:
    message = f"Request exceeds the maximum allowed size of {limit} bytes"
    return {"type": "request_too_large", "message": message}


def test_a_create_over_batch_max_bytes_is_413_and_messages_keep_their_own_limit(
    session_sim: SimulatorProcess,
) -> None:
    with session_sim.started_over(batch_max_bytes=4096) as small:
        fits = {"requests": requests_for({"a": "x " * 1000})}
        over = {"requests": requests_for({f"r{i}": "x " * 1000 for i in range(3)})}
        assert len(orjson.dumps(fits)) < 4096 < len(orjson.dumps(over))
        assert create(small, fits["requests"]).status == 200
        reply = create(small, over["requests"])
        assert reply.status == 413 and reply.json["error"] == too_large(4096)

        async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: bytes are counted
            data = orjson.dumps(over)
            for start in range(0, len(data), 1000):
                yield data[start : start + 1000]

        status, body = asyncio.run(post_raw(small.base_url + BATCHES, chunks()))
        assert status == 413 and body["error"] == too_large(4096)
        assert post(small.base_url, message("y " * 5000)).status == 200  # not the batch limit


def test_messages_stop_at_32_mb_while_a_batch_may_be_larger(sim: SimulatorProcess) -> None:
    big = message("word " * (7 * 1024 * 1024))  # about 35 MB
    reply = post(sim.base_url, big)
    assert reply.status == 413 and reply.json["error"] == too_large(32 * 1024 * 1024)
    batch = create(sim, [{"custom_id": "big", "params": big}])
    assert batch.status == 200, batch.text[:300]
    post(sim.base_url, {}, path=f"{BATCHES}/{batch.json['id']}/cancel")  # spare the answering
    assert wait_ended(sim, batch.json["id"])["request_counts"]["canceled"] == 1


def test_reset_forgets_the_batches_and_stops_their_processing(
    session_sim: SimulatorProcess,
) -> None:
    with session_sim.started_over(batch_latency_s=0.3) as resettable:
        batch_id = create(resettable, requests_for({"a": "Hi.", "b": "Hey."})).json["id"]
        resettable.reset()
        assert get(resettable.base_url, BATCHES).json["data"] == []
        assert get(resettable.base_url, f"{BATCHES}/{batch_id}").status == 404
        time.sleep(0.45)  # past the batch's latency: had it kept going, it would have billed
        assert resettable.ledger() == [] and resettable.stats()["billed"] == 0
