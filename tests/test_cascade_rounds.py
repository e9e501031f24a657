"""A stage in two rounds (cascade/phases.py): the first samples of every row, then the
rest only for rows they could still lift to the threshold. The rule's tables and what a
first round's requests reserve; then end to end against the simulator: the same decisions
as one round for fewer requests, an output whose stage began in one round going on in
one, and --retry-errors on an unfinished round."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from pipeline.cascade.phases import KEY, Phase, later_requests, write_phase_input
from pipeline.cascade.routing import in_reach
from pipeline.cascade.thresholds import NEVER, first_round
from pipeline.input.source import open_source
from pipeline.job.load import load_job
from pipeline.schema import ROW_INDEX
from pipeline.simulator.process import SimulatorProcess
from tests.test_cascade_e2e import (
    CONFIDENCE,
    REQUESTS,
    SAMPLES,
    STAGE,
    Cli,
    assert_complete,
    assert_stages,
    billed_beyond_need,
    cascade_job,
    ledger_cost,
    output_cost,
    results,
    run,
)


@pytest.mark.parametrize(
    ("samples", "threshold", "first"),
    [
        (3, 1.0, 2),  # two that differ: a third cannot make three agree
        (3, 2 / 3, None),  # two that differ: a third can make two of three
        (3, 0.5, None),
        (5, 1.0, 2),
        (5, 0.8, 3),  # three that differ leave two: at most 3 of 5
        (5, 0.6, 4),
        (2, 1.0, None),  # no round smaller than all but one
        (1, 1.0, None),
        (3, NEVER, None),
    ],
)
def test_the_first_round_is_the_fewest_samples_that_can_rule_a_row_out(
    samples: int, threshold: float, first: int | None
) -> None:
    assert first_round(samples, threshold) == first


def first_answers(rows: dict[int, list[str | None]]) -> pl.DataFrame:
    return pl.DataFrame(
        {
            ROW_INDEX: [row for row, labels in rows.items() for _ in labels],
            "label": [label for labels in rows.values() for label in labels],
        },
        schema={ROW_INDEX: pl.Int64, "label": pl.String},
    )


def test_a_row_goes_on_to_the_rest_only_if_it_could_still_stand() -> None:
    rows: dict[int, list[str | None]] = {
        0: ["pos", "pos"],  # in reach: a third "pos" makes 3 of 3
        1: ["pos", "neg"],  # out
        2: ["pos", None],  # an invalid answer counts against: out
        3: [None, None],  # out
        4: ["neg"],  # an answer missing: never stands, as stage_votes
        5: ["neg", "neg"],
    }
    reach = in_reach(first_answers(rows), "label", 2, 3, 1.0)
    assert reach.to_list() == [0, 5]
    five: dict[int, list[str | None]] = {0: ["a", "b", "a"], 1: ["a", "b", "c"], 2: ["a"] * 3}
    assert in_reach(first_answers(five), "label", 3, 5, 0.8).to_list() == [0, 2]  # 4 of 5
    short: dict[int, list[str | None]] = {0: ["a", "a"], 1: ["a", "a", "a"]}  # 0: one missing
    assert in_reach(first_answers(short), "label", 3, 5, 0.8).to_list() == [1]
    assert in_reach(first_answers({}), "label", 2, 3, 1.0).is_empty()


def test_a_second_round_asks_the_later_sample_numbers(tmp_path: Path) -> None:
    job = load_job(cascade_job(tmp_path))
    source = open_source(job.input, job.id_column)
    rows = pl.Series(ROW_INDEX, [1, 4])
    rest = Phase("rest-0", 0, "claude-3-haiku-20240307", 3, rows, asks=range(2, 3))
    write_phase_input(source, job, rest)
    assert pl.read_parquet(rest.paths(job.output)[0])[KEY].to_list() == ["1:2", "4:2"]
    assert not rest.first_round and Phase("first-0", 0, "m", 3, rows, asks=range(2)).first_round


def test_a_first_rounds_requests_hold_the_rest_of_their_stage_and_the_later_stages(
    tmp_path: Path,
) -> None:
    settings = load_job(cascade_job(tmp_path)).cascade
    assert settings is not None
    rows = pl.Series(ROW_INDEX, [0])
    haiku, opus = settings.models
    cases = [
        (Phase("first-0", 0, haiku, 3, rows, asks=range(2)), ((haiku, 1), (opus, 1))),
        (Phase("rest-0", 0, haiku, 3, rows, asks=range(2, 3)), ((opus, 1),)),
        (Phase("stage-0", 0, haiku, 3, rows), ((opus, 1),)),
        (Phase("calibration-1", 1, opus, 1, rows), ()),
    ]
    for phase, later in cases:
        assert later_requests(settings, phase) == later, phase.name


def test_two_rounds_decide_as_one_round_would_for_fewer_requests(
    tmp_path: Path, sim: SimulatorProcess, cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The simulator answers a request by its content and the identical requests before
    it, so the two runs (each on a simulator started over) get the same answers."""
    decided = ["review_id", "label", STAGE, CONFIDENCE]
    (tmp_path / "two").mkdir()
    done = run(cli, cascade_job(tmp_path / "two"), sim)
    assert done.returncode == 0, done.stderr
    in_two = assert_complete(tmp_path / "two")
    assert_stages(tmp_path / "two", in_two)
    ledger = sim.ledger()
    assert len(ledger) == int(in_two[REQUESTS].sum())
    assert abs(output_cost(in_two) - ledger_cost(ledger)) <= Decimal("1e-9")
    assert billed_beyond_need(tmp_path / "two", ledger) == 0

    sim.reset()
    monkeypatch.setattr("pipeline.cascade.run.first_round", lambda samples, threshold: None)
    (tmp_path / "one").mkdir()
    done = run(cli, cascade_job(tmp_path / "one"), sim)
    assert done.returncode == 0, done.stderr
    in_one = results(tmp_path / "one")
    assert (tmp_path / "one/out/cascade/stage-0").is_dir()
    assert_frame_equal(in_two.select(decided), in_one.select(decided))
    saved = in_one[REQUESTS] - in_two[REQUESTS]
    assert set(saved.to_list()) == {0, 1} and saved.sum() > 0  # a third sample, or none
    ruled_out = in_two.filter(saved == 1)
    assert (ruled_out[STAGE] == 1).all() and (ruled_out[REQUESTS] == SAMPLES).all()


def test_an_output_whose_stage_began_in_one_round_goes_on_in_one(
    tmp_path: Path, sim: SimulatorProcess, cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An output an earlier version left inside stage-0 (stopped by its budget there): its
    rows are never asked again in rounds, so nothing is bought twice."""
    job = cascade_job(tmp_path)
    with monkeypatch.context() as earlier:
        earlier.setattr("pipeline.cascade.run.first_round", lambda samples, threshold: None)
        # calibration-0 $0.0011 and calibration-1 $0.0075, then stage-0 ($0.0026 whole)
        # stops under the cap, each request holding its worst case through Opus (~$0.0008)
        stopped = run(cli, job, sim, "--max-cost", "0.0105")
    assert stopped.returncode == 3, stopped.stderr
    assert (tmp_path / "out" / "cascade" / "stage-0").is_dir()
    asked_before = len(sim.ledger())
    done = run(cli, job, sim)
    assert done.returncode == 0, done.stderr
    assert not (tmp_path / "out" / "cascade" / "first-0").exists()
    out = assert_complete(tmp_path)
    assert_stages(tmp_path, out)
    ledger = sim.ledger()
    assert billed_beyond_need(tmp_path, ledger) == 0
    assert len(ledger) == int(out[REQUESTS].sum()) > asked_before


def test_retry_errors_on_an_unfinished_round_stops_before_the_next_phase(
    tmp_path: Path, sim: SimulatorProcess, cli: Cli
) -> None:
    """--retry-errors sends only what failed: a phase left unfinished stays so, and the
    next phases, which follow from its answers, wait for a run that finishes it."""
    decided = ["review_id", "label", STAGE, CONFIDENCE]
    (tmp_path / "stopped").mkdir()
    job = cascade_job(tmp_path / "stopped")
    # the calibration ($0.0086), then stage 0's first round stops under the cap
    assert run(cli, job, sim, "--max-cost", "0.0112").returncode == 3
    cascade = tmp_path / "stopped" / "out" / "cascade"
    asked = pl.read_parquet(cascade / "first-0.parquet").height
    assert 0 < pl.read_parquet(cascade / "first-0/results.parquet").height < asked
    retried = run(cli, job, sim, "--retry-errors")
    assert retried.returncode == 2  # a usage stop, not an internal error
    assert "cascade phase first-0" in retried.stderr and "not sent yet" in retried.stderr
    assert not (cascade / "rest-0.parquet").exists()
    done = run(cli, job, sim)
    assert done.returncode == 0, done.stderr
    out = assert_complete(tmp_path / "stopped")
    assert billed_beyond_need(tmp_path / "stopped", sim.ledger()) == 0

    sim.reset()  # the same answers for a run that was never stopped
    (tmp_path / "clean").mkdir()
    assert run(cli, cascade_job(tmp_path / "clean"), sim).returncode == 0
    assert_frame_equal(out.select(decided), results(tmp_path / "clean").select(decided))
