"""Cascades end to end against the simulator in its own process: the real CLI, phases on
disk, every request counted in the simulator's ledger.

A cascade's output is assembled from its phases (OUTPUT/cascade/calibration-K/, and
OUTPUT/cascade/stage-K/ or its two rounds first-K/ and rest-K/, each an ordinary output);
these tests hold the assembled results.parquet to the phases and both to the ledger: what
was paid is what the output says, and a resume, a kill -9 or a budget stop never pays for
a request twice.
"""

from __future__ import annotations

import hashlib
import json
import signal
from collections import Counter
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from subprocess import CompletedProcess
from typing import Any

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from pipeline.simulator.process import SimulatorProcess
from tests.e2e import REPO, start_cli, wait_for, write_job

Cli = Callable[..., CompletedProcess[str]]

HAIKU, OPUS = "claude-3-haiku-20240307", "claude-opus-4-6"
# USD per million tokens (input, output), written out again here on purpose (prices.toml)
PRICES = {HAIKU: (Decimal("0.25"), Decimal("1.25")), OPUS: (Decimal(5), Decimal(25))}
PROMPT = "Review of {product}: {text}\nAnswer with one word: positive, negative or neutral."
CHOICES = ["positive", "negative", "neutral"]
# The simulator draws each answer above temperature 0 by its request and the identical
# requests before it, so a run is repeatable in any order: on these rows, Haiku's unanimous
# answers disagree with Opus on 0 of the 24 calibration rows, its 2-of-3 majorities on 5,
# and the plan is "stage 0 stands at 1.00" with margin both ways (a bound of 0.14 against
# the 0.25 allowed; 0.42 for 2-of-3). One request at a time: a kill leaves one in flight.
ROWS, CALIBRATION, SAMPLES, CONCURRENCY = 80, 24, 3, 1
STAGE, CONFIDENCE, REQUESTS = "cascade_stage", "cascade_confidence", "cascade_requests"
CARRIED = ["review_id", "product", "text", "gold_label"]  # id, keep_columns, gold_column


@pytest.fixture
def batch_sim(session_sim: SimulatorProcess) -> Iterator[SimulatorProcess]:
    """The session's simulator, started over with batches that end soon."""
    with session_sim.started_over(batch_latency_s=0.2) as simulator:
        yield simulator


# --- the job and its output ----------------------------------------------------------


def reviews(tmp: Path, n: int = ROWS) -> pl.DataFrame:
    """The first `n` sample reviews, as the job's input (tmp/in.csv)."""
    frame = pl.read_csv(REPO / "sample_data" / "reviews.csv").head(n).select(CARRIED)
    frame.write_csv(tmp / "in.csv")
    return frame


def cascade_job(
    tmp: Path,
    *,
    models: tuple[str, ...] = (HAIKU, OPUS),
    n: int = ROWS,
    cascade: dict[str, Any] | None = None,
    **sections: dict[str, Any],
) -> Path:
    reviews(tmp, n)
    tables: dict[str, dict[str, Any]] = {
        "job": {
            "name": "cascade",
            "input": str(tmp / "in.csv"),
            "id_column": "review_id",
            "output": str(tmp / "out"),
            "keep_columns": ["product", "text"],
            "gold_column": "gold_label",
        },
        "request": {"max_tokens": 16, "temperature": 1.0, "prompt": PROMPT},
        "cascade": {
            "models": list(models),
            "samples": SAMPLES,
            "target": 0.75,
            "confidence": 0.9,
            "calibration_rows": CALIBRATION,
            **(cascade or {}),
        },
        "limits": {"concurrency": CONCURRENCY, "max_retries": 8},
        "extract": {"kind": "choice", "column": "label", "choices": CHOICES},
    }
    for name, values in sections.items():
        tables.setdefault(name, {}).update(values)
    return write_job(tmp, tables)


def results(tmp: Path) -> pl.DataFrame:
    return pl.read_parquet(tmp / "out" / "results.parquet")


def phase_results(tmp: Path) -> dict[str, pl.DataFrame]:
    """Each finished phase's results.parquet, with the input row of each request."""
    found = {}
    for directory in sorted((tmp / "out" / "cascade").glob("*-*/")):
        path = directory / "results.parquet"
        if path.exists():
            frame = pl.read_parquet(path)
            row = pl.col("cascade_key").str.split(":").list.first().cast(pl.Int64)
            found[directory.name] = frame.with_columns(row.alias("row"))
    return found


def calibration_rows(tmp: Path) -> set[int]:
    keys = pl.read_parquet(tmp / "out" / "cascade" / "calibration-0.parquet")["cascade_key"]
    return {int(key.split(":")[0]) for key in keys}


def plan(tmp: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((tmp / "out/cascade/plan.json").read_text("utf-8"))
    return loaded


def run(cli: Cli, job: Path, sim: SimulatorProcess, *extra: str) -> CompletedProcess[str]:
    return cli("run", str(job), "--base-url", sim.base_url, "--no-progress", *extra)


# --- the ledger ------------------------------------------------------------------------


def ledger_cost(entries: list[dict[str, Any]]) -> Decimal:
    """What the simulator billed, priced here from its token counts, exactly."""
    total = Decimal(0)
    for entry in entries:
        inp, out = PRICES[entry["model"]]
        cost = (entry["input_tokens"] * inp + entry["output_tokens"] * out) / 1_000_000
        assert entry["cache_read_input_tokens"] == entry["cache_creation_input_tokens"] == 0
        total += cost / 2 if entry["service_tier"] == "batch" else cost
    return total


def output_cost(frame: pl.DataFrame) -> Decimal:
    return sum((Decimal(repr(c)) for c in frame["cost_usd"].to_list()), Decimal(0))


def prompt_rows(tmp: Path) -> dict[str, int]:
    """The sha256 of each input row's prompt (as the ledger has it) -> its position."""
    frame = pl.read_csv(tmp / "in.csv")
    shas = {}
    for i, row in enumerate(frame.iter_rows(named=True)):
        text = PROMPT.format(product=row["product"], text=row["text"])
        shas[hashlib.sha256(text.encode()).hexdigest()] = i
    return shas


def billed_beyond_need(tmp: Path, ledger: list[dict[str, Any]]) -> int:
    """Requests the ledger holds beyond those in the phases' results (each request a
    phase's result row), counted by model and input row; none may be missing."""
    rows = prompt_rows(tmp)
    billed = Counter((entry["model"], rows[entry["prompt_sha256"]]) for entry in ledger)
    needed: Counter[tuple[str, int]] = Counter()
    for frame in phase_results(tmp).values():
        needed.update(zip(frame["model"].to_list(), frame["row"].to_list(), strict=True))
    assert not needed - billed, "a result that was never billed"
    return sum((billed - needed).values())


# --- what every finished cascade must show ------------------------------------------


def assert_complete(tmp: Path, models: tuple[str, ...] = (HAIKU, OPUS)) -> pl.DataFrame:
    """The output holds every input row once, decided, with the cascade's columns, and
    each row's requests, tokens and costs are those of its phases' results."""
    out = results(tmp)
    ids = pl.read_csv(tmp / "in.csv")["review_id"].to_list()
    assert out["review_id"].to_list() == ids  # every row, once, in input order
    assert out.columns[: len(CARRIED)] == CARRIED
    assert out.columns[-3:] == [STAGE, CONFIDENCE, REQUESTS]
    assert {"label", "label_status", "model", "cost_usd", "status"} <= set(out.columns)
    assert out.schema[STAGE] == pl.Int64 and out.schema[REQUESTS] == pl.Int64
    assert out.schema[CONFIDENCE] == pl.Float64
    assert (out["status"] == "ok").all() and out["label"].is_in(CHOICES).all()
    assert out[STAGE].is_between(0, len(models) - 1).all()
    assert out[CONFIDENCE].is_between(0.0, 1.0).all()
    assert (out["model"] == pl.Series([models[s] for s in out[STAGE]])).all()

    phases = pl.concat(phase_results(tmp).values(), how="diagonal_relaxed")
    per_row = phases.group_by("row").agg(
        pl.len().alias("requests"),
        pl.col("cost_usd").sum(),
        pl.col("input_tokens").sum(),
        pl.col("output_tokens").sum(),
    )
    joined = out.with_row_index("row").with_columns(pl.col("row").cast(pl.Int64))
    joined = joined.join(per_row, on="row", suffix="_phases", how="left")
    assert (joined[REQUESTS] == joined["requests"]).all()
    assert (joined["input_tokens"] == joined["input_tokens_phases"]).all()
    assert (joined["output_tokens"] == joined["output_tokens_phases"]).all()
    for mine, theirs in zip(joined["cost_usd"], joined["cost_usd_phases"], strict=True):
        assert mine == pytest.approx(theirs, rel=1e-12, abs=0)
    assert int(out[REQUESTS].sum()) == phases.height
    return out


def assert_stages(tmp: Path, out: pl.DataFrame, models: tuple[str, ...] = (HAIKU, OPUS)) -> None:
    """Calibration rows are the last stage's; a row decided at stage 0 took the first
    model's samples only and reached the plan's threshold; a row that went on took all
    of them, or (stage 0 in two rounds) only the first round's when the rest could not
    have lifted its most frequent answer to the threshold."""
    last = len(models) - 1
    calibration = calibration_rows(tmp)
    assert len(calibration) == CALIBRATION
    stages = out[STAGE].to_list()
    assert all(stages[row] == last for row in calibration)
    threshold = plan(tmp)["thresholds"][0]  # None: stage 0 accepts nothing
    first = first_round_labels(tmp)
    for row, record in enumerate(out.iter_rows(named=True)):
        if row in calibration:
            assert record[REQUESTS] == SAMPLES + 1  # every stage answered it
        elif record[STAGE] == 0:
            assert threshold is not None and record[CONFIDENCE] >= threshold
            assert record["model"] == models[0] and record[REQUESTS] == SAMPLES
        else:
            asked = 1 if threshold is None else SAMPLES + 1  # stage 0 skipped, or not
            if row in first and not could_stand(first[row], threshold):
                asked = len(first[row]) + 1
            assert record["model"] == models[last] and record[REQUESTS] == asked


def first_round_labels(tmp: Path) -> dict[int, list[str | None]]:
    """Each row's labels in stage 0's first round (none: stage 0 in one round)."""
    frame = phase_results(tmp).get("first-0")
    if frame is None:
        return {}
    valid = pl.when(pl.col("label_status") == "ok").then(pl.col("label"))
    grouped = frame.group_by("row").agg(valid.alias("labels"))
    return dict(zip(grouped["row"].to_list(), grouped["labels"].to_list(), strict=True))


def could_stand(labels: list[str | None], threshold: float) -> bool:
    """Whether the samples still to come could lift a row's most frequent valid label to
    `threshold`: all of them agreeing with it."""
    top = max(Counter(label for label in labels if label is not None).values(), default=0)
    return (top + SAMPLES - len(labels)) / SAMPLES >= threshold


# --- the tests -------------------------------------------------------------------------


def test_online_cascade_costs_what_the_ledger_billed_and_decides_every_row_once(
    tmp_path: Path, sim: SimulatorProcess, cli: Cli
) -> None:
    job = cascade_job(tmp_path)
    done = run(cli, job, sim)
    assert done.returncode == 0, done.stderr
    assert "cascade plan" in done.stderr and "guarantee:" in done.stderr
    assert "its label stands at confidence >=" in done.stderr  # a threshold for stage 0
    assert (tmp_path / "out" / "cascade" / "plan.json").exists()
    assert (tmp_path / "out" / "run.json").exists()
    assert len(plan(tmp_path)["thresholds"]) == 1
    out = assert_complete(tmp_path)
    assert_stages(tmp_path, out)
    others = out.filter(~pl.Series(range(ROWS)).is_in(list(calibration_rows(tmp_path))))
    assert set(others[STAGE]) == {0, 1}  # both stages decided rows beyond the calibration

    ledger = sim.ledger()
    assert len(ledger) == int(out[REQUESTS].sum())  # nothing paid that the output lacks
    assert abs(output_cost(out) - ledger_cost(ledger)) <= Decimal("1e-9")
    assert billed_beyond_need(tmp_path, ledger) == 0
    assert {e["model"] for e in ledger} == {HAIKU, OPUS}

    report = cli("report", str(tmp_path / "out"), "--by", STAGE, "--format", "json")
    assert report.returncode == 0, report.stderr
    groups = {g[STAGE]: g["rows"] for g in json.loads(report.stdout)}
    assert groups == {**Counter(out[STAGE].to_list()), None: ROWS}  # None: the total
    html = tmp_path / "report.html"
    table = cli("report", str(tmp_path / "out"), "--by", STAGE, "--html", str(html))
    assert table.returncode == 0 and f"by {STAGE}" in table.stdout
    for text in (table.stdout, html.read_text("utf-8")):  # the account, in both
        assert "rows decided at each stage" in text and "guarantee: with probability" in text


def test_a_second_run_sends_nothing_and_gives_the_same_results(
    tmp_path: Path, sim: SimulatorProcess, cli: Cli
) -> None:
    job = cascade_job(tmp_path)
    assert run(cli, job, sim).returncode == 0
    first, billed = results(tmp_path), len(sim.ledger())
    again = run(cli, job, sim)
    assert again.returncode == 0, again.stderr
    assert len(sim.ledger()) == billed
    assert_frame_equal(results(tmp_path), first)
    assert "cascade plan" not in again.stderr  # the plan.json of the first run stands


@pytest.mark.process
@pytest.mark.parametrize(  # rest-0: its rows follow from first-0's answers, final by then
    "phase", ["calibration-0", "calibration-1", "rest-0", "stage-1"]
)
def test_kill_9_inside_a_phase_then_resume_pays_only_what_was_in_flight(
    tmp_path: Path, sim: SimulatorProcess, cli: Cli, phase: str
) -> None:
    """Killed inside `phase` on a slow simulator; resumed on the fast one (the two ledgers
    together are what was paid). One server, one after the other: the session's, started
    over slow for the kill, then back to its own settings (an empty ledger) for the resume."""
    job = cascade_job(tmp_path)
    journal = tmp_path / "out" / "cascade" / phase / "journal.jsonl"

    def lines() -> int:
        try:
            return journal.read_bytes().count(b"\n")
        except FileNotFoundError:  # not started, or folded into a part at the phase's end
            return 0

    # answers that take a while, so that a kill lands inside a phase
    with sim.started_over(latency_ms=6.0) as slow_sim:
        child = start_cli(job, slow_sim.base_url)
        wait_for(lambda: lines() >= 2 or child.poll() is not None, f"{phase}'s journal")
        child.send_signal(signal.SIGKILL)
        child.communicate(timeout=30)
        assert child.returncode == -signal.SIGKILL, "the run ended before the kill"
        assert not (journal.parent / "results.parquet").exists()  # killed inside the phase
        killed = slow_sim.ledger()

    done = run(cli, job, sim)
    assert done.returncode == 0, done.stderr
    out = assert_complete(tmp_path)
    assert_stages(tmp_path, out)
    resumed = sim.ledger()
    assert killed and resumed
    assert billed_beyond_need(tmp_path, killed + resumed) <= CONCURRENCY  # in flight
    assert len(killed) + len(resumed) - int(out[REQUESTS].sum()) <= CONCURRENCY


def test_the_budget_stops_the_cascade_under_its_cap_and_a_resume_finishes(
    tmp_path: Path, sim: SimulatorProcess, cli: Cli
) -> None:
    job = cascade_job(tmp_path)
    # what the phases cost: calibration-0 $0.0011, calibration-1 $0.0075, stage 0's two
    # rounds (first-0, rest-0) $0.0024, stage-1 $0.0056 (in all $0.0166)
    cap = Decimal("0.005")
    stopped = run(cli, job, sim, "--max-cost", str(cap))
    assert stopped.returncode == 3, stopped.stderr
    budget = [line for line in stopped.stderr.splitlines() if "stopped at the budget" in line]
    assert len(budget) == 1 and budget[0].startswith("pipeline: stopped at the budget")
    spent = ledger_cost(sim.ledger())
    assert 0 < spent <= cap
    partial = results(tmp_path)
    assert 0 < partial.height < ROWS

    second = Decimal("0.014")  # past the calibration and stage 0, not to the end
    stopped = run(cli, job, sim, "--max-cost", str(second))
    assert stopped.returncode == 3, stopped.stderr
    assert ledger_cost(sim.ledger()) <= second
    assert partial.height < results(tmp_path).height < ROWS

    done = run(cli, job, sim, "--max-cost", "1.0")
    assert done.returncode == 0, done.stderr
    out = assert_complete(tmp_path)
    assert_stages(tmp_path, out)
    ledger = sim.ledger()
    assert billed_beyond_need(tmp_path, ledger) == 0  # never charged twice
    assert len(ledger) == int(out[REQUESTS].sum())
    assert abs(output_cost(out) - ledger_cost(ledger)) <= Decimal("1e-9")


def test_batch_mode_runs_every_phase_through_batches_at_half_price(
    tmp_path: Path, batch_sim: SimulatorProcess, cli: Cli
) -> None:
    job = cascade_job(tmp_path, batch={"poll_s": 0.2})
    done = run(cli, job, batch_sim, "--batch")
    assert done.returncode == 0, done.stderr
    out = assert_complete(tmp_path)
    assert_stages(tmp_path, out)
    phases = phase_results(tmp_path)
    assert set(phases) == {"calibration-0", "calibration-1", "first-0", "rest-0", "stage-1"}
    for name, frame in phases.items():
        assert frame["batch_id"].is_not_null().all(), name
    assert out["batch_id"].is_not_null().all()
    ledger = batch_sim.ledger()
    assert {(e["endpoint"], e["service_tier"]) for e in ledger} == {("batch", "batch")}
    assert len(ledger) == int(out[REQUESTS].sum())
    assert abs(output_cost(out) - ledger_cost(ledger)) <= Decimal("1e-9")


def test_a_cascade_that_cannot_pay_sends_the_rest_to_the_last_model_alone(
    tmp_path: Path, sim: SimulatorProcess, cli: Cli
) -> None:
    models = (OPUS, HAIKU)  # three Opus answers cost more than one Haiku answer
    job = cascade_job(tmp_path, models=models)
    done = run(cli, job, sim)
    assert done.returncode == 0, done.stderr
    assert f"would not cost less than {HAIKU} alone" in done.stderr
    assert plan(tmp_path)["thresholds"] == [None]
    cascade = tmp_path / "out" / "cascade"
    for phase in ("stage-0", "first-0", "rest-0"):
        assert not (cascade / phase).exists() and not (cascade / f"{phase}.parquet").exists()
    out = assert_complete(tmp_path, models)
    assert (out[STAGE] == 1).all() and (out["model"] == HAIKU).all()
    calibration = calibration_rows(tmp_path)
    expected = [SAMPLES + 1 if row in calibration else 1 for row in range(ROWS)]
    assert out[REQUESTS].to_list() == expected
    ledger = sim.ledger()
    assert abs(output_cost(out) - ledger_cost(ledger)) <= Decimal("1e-9")


def test_stated_confidence_asks_each_stage_once_a_row(
    tmp_path: Path, sim: SimulatorProcess, cli: Cli
) -> None:
    job = cascade_job(tmp_path, cascade={"signal": "stated"})
    done = run(cli, job, sim)
    assert done.returncode == 0, done.stderr
    phases = phase_results(tmp_path)
    for name in ("calibration-0", "stage-0"):
        frame = phases[name]
        assert frame["row"].is_unique().all(), name  # one request a row
        assert frame["cascade_key"].str.ends_with(":0").all()
        assert frame["response_text"].str.contains("Confidence:").all()
    out = assert_complete(tmp_path)
    assert out[CONFIDENCE].is_not_null().all()
    assert out[CONFIDENCE].is_between(0.0, 1.0).all()
    calibration = calibration_rows(tmp_path)
    for row, record in enumerate(out.iter_rows(named=True)):
        if row in calibration:
            assert record[STAGE] == 1 and record[REQUESTS] == 2
        else:
            assert record[REQUESTS] == (1 if record[STAGE] == 0 else 2)
    ledger = sim.ledger()
    assert len(ledger) == int(out[REQUESTS].sum())
    assert abs(output_cost(out) - ledger_cost(ledger)) <= Decimal("1e-9")


# --- faults found and fixed: each would fail again if it came back ---------------------


def test_a_budget_stop_counts_what_the_stopped_phase_spent(
    tmp_path: Path, sim: SimulatorProcess, cli: Cli
) -> None:
    job = cascade_job(tmp_path)
    stopped = run(cli, job, sim, "--max-cost", "0.005")  # inside calibration-1
    assert stopped.returncode == 3, stopped.stderr
    record = json.loads((tmp_path / "out" / "run.json").read_text("utf-8"))
    ledger = sim.ledger()
    assert record["requests"] == len(ledger)
    assert record["cost_usd"] == pytest.approx(float(ledger_cost(ledger)), rel=1e-9)


def test_a_rows_cost_is_the_exact_sum_of_its_requests_costs(
    tmp_path: Path, sim: SimulatorProcess, cli: Cli
) -> None:
    assert run(cli, cascade_job(tmp_path), sim).returncode == 0
    exact: dict[int, Decimal] = {}
    for frame in phase_results(tmp_path).values():
        for row, cost in zip(frame["row"], frame["cost_usd"], strict=True):
            exact[row] = exact.get(row, Decimal(0)) + Decimal(repr(cost))
    costs = results(tmp_path)["cost_usd"].to_list()
    assert [Decimal(repr(cost)) for cost in costs] == [exact[row] for row in range(ROWS)]
