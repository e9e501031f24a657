"""Cascade pieces without a server: votes and stated confidences, the routing rule, a
phase's input rows and job, the plan kept on disk, and a row's worst case over its path."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import polars as pl
import pytest

from pipeline.cascade.phases import KEY, Phase, phase_job, stated_confidence, write_phase_input
from pipeline.cascade.routing import (
    CONFIDENCE,
    LABEL,
    load_plan,
    save_plan,
    stage_votes,
    standing,
)
from pipeline.cascade.thresholds import NEVER, Plan
from pipeline.input.source import open_source
from pipeline.job.load import job_from_dict
from pipeline.job.model import Job
from pipeline.pricing import load_price_table
from pipeline.schema import ROW_INDEX
from pipeline.send.budget import path_worst_usd, worst_case_usd


def answers(rows: list[tuple[int, int, str | None, str]]) -> pl.DataFrame:
    """(row, sample, label, response) -> a phase's answers as phases.phase_answers gives."""
    return pl.DataFrame(
        {
            ROW_INDEX: [r[0] for r in rows],
            "cascade_sample": [r[1] for r in rows],
            "label": [r[2] for r in rows],
            "stated": [stated_confidence(r[3]) for r in rows],
            "cost_usd": [0.5] * len(rows),
        },
        schema_overrides={"label": pl.String},
    )


@pytest.mark.parametrize(
    ("labels", "expected"),
    [
        (["a", "a", "a"], ("a", 1.0)),
        (["a", "b", "a"], ("a", 2 / 3)),
        (["a", None, "b"], ("a", 1 / 3)),  # a tie goes to the first; invalid counts against
        ([None, None, None], (None, 0.0)),
    ],
)
def test_a_rows_votes(labels: list[str | None], expected: tuple[str | None, float]) -> None:
    frame = answers([(7, i, label, "x") for i, label in reversed(list(enumerate(labels)))])
    votes = stage_votes(frame, "label", samples=3, stated=False)
    assert votes.select(ROW_INDEX, LABEL, CONFIDENCE, "cost_usd").row(0) == (7, *expected, 1.5)


def test_a_row_without_every_sample_has_no_vote_yet() -> None:
    frame = answers([(1, 0, "a", "x"), (1, 1, "a", "x"), (2, 0, "b", "x")])
    assert stage_votes(frame, "label", samples=2, stated=False)[ROW_INDEX].to_list() == [1]


def test_a_stated_confidence_is_the_answers_own() -> None:
    frame = answers([(0, 0, "a", "a\nConfidence: 87"), (1, 0, "b", "b"), (2, 0, None, "?")])
    votes = stage_votes(frame, "label", samples=1, stated=True)
    assert votes[CONFIDENCE].to_list() == [0.87, 0.0, 0.0]  # none said: never confident


@pytest.mark.parametrize(
    ("text", "share"),
    [
        ("positive\nConfidence: 90", 0.9),
        ("negative\nconfidence = 100%", 1.0),
        ("x\nConfidence: 20\nConfidence: 75", 0.75),  # restated: the last counts
        ("Confidence: 250", 1.0),  # above 100: at most certain
        ("positive", None),
        (None, None),
    ],
)
def test_stated_confidence_is_read_from_the_answer(text: str | None, share: float | None) -> None:
    assert stated_confidence(text) == share


def test_a_label_stands_from_its_threshold_up_never_without_a_label() -> None:
    votes = pl.DataFrame(
        {ROW_INDEX: [0, 1, 2, 3], LABEL: ["a", "a", None, "b"], CONFIDENCE: [1.0, 2 / 3, 1.0, 0.9]}
    )
    assert standing(votes, 2 / 3)[ROW_INDEX].to_list() == [0, 1, 3]
    assert standing(votes, 1.0)[ROW_INDEX].to_list() == [0]
    assert standing(votes, NEVER)[ROW_INDEX].to_list() == []


def test_the_plan_reads_back_as_it_was_kept(tmp_path: Path) -> None:
    plan = Plan((NEVER, 2 / 3), (0.0, 0.4, 0.6), 3, 200, 0.071, 0.0012, 0.004, 12)
    save_plan(tmp_path / "plan.json", plan)
    assert load_plan(tmp_path / "plan.json") == plan
    assert load_plan(tmp_path / "none.json") is None


def cascade_job(tmp_path: Path, **cascade: object) -> Job:
    data = tmp_path / "in.csv"
    data.write_text("id,text\na,good\nb,bad\nc,meh\n")
    return job_from_dict(
        {
            "job": {"input": str(data), "output": str(tmp_path / "out"), "id_column": "id"},
            "request": {"prompt": "Say: {text}", "max_tokens": 8, "temperature": 1.0},
            "extract": {"kind": "choice", "choices": ["good", "bad"]},
            "cascade": {"models": ["claude-3-haiku-20240307", "claude-opus-4-6"], **cascade},
        }
    )


def test_a_phase_sends_each_row_samples_times_as_written(tmp_path: Path) -> None:
    job = cascade_job(tmp_path)
    source = open_source(job.input, job.id_column)
    phase = Phase("stage-0", 0, "claude-3-haiku-20240307", 3, pl.Series(ROW_INDEX, [0, 2]))
    write_phase_input(source, job, phase)
    path, output = phase.paths(tmp_path / "out")
    rows = pl.read_parquet(path)
    assert rows[KEY].to_list() == ["0:0", "0:1", "0:2", "2:0", "2:1", "2:2"]
    assert rows["text"].to_list() == ["good"] * 3 + ["meh"] * 3
    sub = phase_job(job, phase, (("claude-opus-4-6", 1),))
    assert (sub.input, sub.output, sub.id_column, sub.model) == (path, output, KEY, phase.model)
    assert sub.cascade is None and sub.limits.later_requests == (("claude-opus-4-6", 1),)
    assert sub.prompt_after is None


def test_a_stated_phase_asks_after_the_prompt(tmp_path: Path) -> None:
    job = cascade_job(tmp_path, signal="stated")
    assert job.cascade is not None
    assert job.cascade.samples_at(0) == 1 and job.cascade.samples_at(1) == 1
    phase = Phase("stage-0", 0, "claude-3-haiku-20240307", 1, pl.Series([0]), stated=True)
    sub = phase_job(job, phase, ())
    assert sub.prompt.text == "Say: {text}"  # the prompt as written, the ask a block after it
    assert sub.prompt_after is not None and "Confidence: <0-100>" in sub.prompt_after


def test_a_requests_worst_case_includes_its_rows_later_stages() -> None:
    prices = load_price_table()
    body = {"model": "claude-3-haiku-20240307", "max_tokens": 16}
    payload = b"x" * 1000
    haiku, opus = prices.lookup("claude-3-haiku-20240307"), prices.lookup("claude-opus-4-6")
    assert haiku is not None and opus is not None
    alone = worst_case_usd(body, payload, haiku)
    path = path_worst_usd(body, payload, haiku, (("claude-opus-4-6", 2),), prices.lookup)
    assert path == alone + 2 * worst_case_usd(body, payload, opus)
    assert path_worst_usd(body, payload, haiku, (), prices.lookup) == alone
    with pytest.raises(Exception, match="no price for model 'mystery'"):
        path_worst_usd(body, payload, haiku, (("mystery", 1),), prices.lookup)
    assert isinstance(path, Decimal)


def test_the_estimate_prices_the_calibration_and_ranges_the_rest(tmp_path: Path) -> None:
    """3 rows, 2 calibration rows: those are priced at every stage (3 Haiku + 1 Opus
    requests each); the one other row from 3 Haiku requests (decided at stage 0) up to 3
    Haiku and 1 Opus (reaching the last); Opus alone for it lies inside that range."""
    from pipeline.reports.estimate import estimate

    job = cascade_job(tmp_path, calibration_rows=2)
    text = estimate(job)
    lines = {line.split()[0]: line for line in text.splitlines()[1:]}
    assert "2 rows answered by every stage" in lines["calibration"]
    assert "1 rows" in lines["the"] and "all reaching claude-opus-4-6" in lines["the"]
    low, high = [
        Decimal(v.strip("$,")) for v in lines["the"].split(": ")[1].split(" (")[0].split(" .. ")
    ]
    alone = [
        Decimal(v.strip("$,"))
        for v in lines["claude-opus-4-6"].split(": ")[1].split(" for")[0].split(" .. ")
    ]
    assert low < alone[0] and alone[1] < high
    with pytest.raises(Exception, match="--pilot: not for a \\[cascade\\] job"):
        estimate(job, pilot=5)
