"""The cascade's output: results.parquet from its phases' answers, one row an input row
decided so far, and run.json. A row's label, answer and `model` are the deciding stage's
(its first sample giving the voted label); its tokens and costs are the sums over every
request the row took, at every stage and in the calibration, each priced at its own model
and tier when it was answered; `cascade_requests` counts them. A calibration row is
decided by the last stage: every stage answered it, and the last is the reference.
"""

from __future__ import annotations

from collections import Counter
from decimal import Decimal
from pathlib import Path
from typing import Protocol

import polars as pl
import pyarrow as pa

from pipeline.cascade.phases import SAMPLE, Phase, phase_answers
from pipeline.cascade.routing import CONFIDENCE, LABEL, load_plan, stage_votes, standing
from pipeline.cascade.thresholds import NEVER
from pipeline.errors import JobStopped
from pipeline.exact import decimal_column
from pipeline.input.source import Source
from pipeline.job.model import Job
from pipeline.run.progress import RunSummary
from pipeline.schema import COST_COLUMNS, LABEL_FIELDS, RESULT_FIELDS, ROW_INDEX, TOKEN_COLUMNS
from pipeline.store import checkpoint, durable, parts
from pipeline.store.layout import CASCADE_DIR, CASCADE_PLAN, RESULTS_FILE
from pipeline.store.run_record import unknown_cost_usd, write_run_record


class Cascade(Protocol):
    """What a cascade's run has done so far (cascade.run.Cascade)."""

    job: Job
    source: Source
    rows: pl.Series  # input positions the cascade answers
    phases: list[Phase]  # run so far, in order
    summaries: list[RunSummary]  # of this run's phases

    @property
    def last(self) -> int: ...


STAGE, REQUESTS = "cascade_stage", "cascade_requests"


def phase_dirs(job: Job) -> list[Path]:
    base = job.output / CASCADE_DIR
    return sorted(p for p in base.glob("*-*") if p.is_dir()) if base.is_dir() else []


def spent_in(phase_dir: Path) -> Decimal:
    """What a phase's finished requests cost, with those of unknown cost at their worst."""
    state = checkpoint.resume_state(phase_dir)
    return Decimal(repr(state.spent_usd)) + Decimal(repr(state.unknown_cost_usd))


def finish(cascade: Cascade, wall_s: float, stopped: JobStopped | None) -> RunSummary:
    """results.parquet and run.json of the rows decided so far; the run's summary."""
    job = cascade.job
    results = job.output / RESULTS_FILE
    before = pl.scan_parquet(results).select(pl.len()).collect().item() if results.exists() else 0
    table = decided_table(cascade)
    if table is not None:
        durable.write_with(results, lambda path: parts.write_parquet(table, path))
    summary = _summary(cascade, table, wall_s, stopped, before)
    write_run_record(
        job.output, summary.to_dict(), stopped, job.gold_column, job.extract.column,
        sum(unknown_cost_usd(d) for d in phase_dirs(job)),
    )  # fmt: skip
    return summary


def decided_table(cascade: Cascade) -> pa.Table | None:
    """Every decided row, in input order, with the output's columns; None before any."""
    answers = [phase_answers(cascade.job, phase, columns=None) for phase in cascade.phases]
    voting = _voting(cascade.phases, answers)
    decisions = _decisions(cascade, voting)
    if decisions.is_empty():
        return None
    every = pl.concat([a for a in answers if not a.is_empty()], how="diagonal_relaxed")
    # each cost exact (the Decimal of its float), so a row's sum is its requests' exact sum
    every = every.with_columns(decimal_column(c, every[c]) for c in COST_COLUMNS)
    totals = every.group_by(ROW_INDEX).agg(
        *(_total(c) for c in (*TOKEN_COLUMNS, *COST_COLUMNS)),
        # a request sent: a row that could not be rendered (an error row) never was
        (pl.col("attempts").fill_null(1) > 0).sum().cast(pl.Int64).alias(REQUESTS),
    )
    chosen = _representatives(decisions, voting, cascade)
    label = cascade.job.extract.column
    rows = (
        chosen.drop(*TOKEN_COLUMNS, *COST_COLUMNS)
        .join(totals, on=ROW_INDEX)
        .join(_carried(cascade, chosen[ROW_INDEX]), on=ROW_INDEX)
        .sort(ROW_INDEX)
    )
    names = [
        *_carried_names(cascade),
        *(f.name for f in RESULT_FIELDS),
        label,
        *(f.name for f in LABEL_FIELDS),
        STAGE,
        CONFIDENCE,
        REQUESTS,
    ]
    return rows.select(names).to_arrow()


def _total(column: str) -> pl.Expr:
    """A row's sum over its requests (a cost as the float nearest its exact sum); null when
    none of them was priced (no price)."""
    total = pl.col(column).sum()
    if column in COST_COLUMNS:
        total = total.cast(pl.Float64)
    return pl.when(pl.col(column).is_null().all()).then(None).otherwise(total).alias(column)


def _voting(phases: list[Phase], answers: list[pl.DataFrame]) -> list[pl.DataFrame]:
    """The answers each phase's votes are made of: a second round's (rest-K) with its
    first round's before it; a first round's none (its rows stand only with the rest)."""
    voting = []
    for phase, frame in zip(phases, answers, strict=True):
        if phase.first_round:
            frame = pl.DataFrame()
        elif phase.asked.start > 0:
            firsts = zip(phases, answers, strict=True)
            first = next(a for p, a in firsts if p.first_round and p.stage == phase.stage)
            frame = pl.concat([first, frame], how="diagonal_relaxed")
        voting.append(frame)
    return voting


def _decisions(cascade: Cascade, answers: list[pl.DataFrame]) -> pl.DataFrame:
    """ROW_INDEX, STAGE, CONFIDENCE, the deciding phase's index and its voted LABEL."""
    plan = load_plan(cascade.job.output / CASCADE_DIR / CASCADE_PLAN)
    label = cascade.job.extract.column
    found = []
    for index, (phase, frame) in enumerate(zip(cascade.phases, answers, strict=True)):
        last = phase.stage == cascade.last
        if frame.is_empty() or (phase.name.startswith("calibration") and not last):
            continue
        votes = stage_votes(frame, label, phase.samples, phase.stated)
        if not last:
            votes = standing(votes, plan.thresholds[phase.stage] if plan is not None else NEVER)
        found.append(
            votes.select(ROW_INDEX, LABEL, CONFIDENCE).with_columns(
                pl.lit(phase.stage, pl.Int64).alias(STAGE), pl.lit(index).alias("phase")
            )
        )
    if not found:
        return pl.DataFrame()
    return pl.concat(found).unique(ROW_INDEX, keep="first", maintain_order=True)


def _representatives(
    decisions: pl.DataFrame, answers: list[pl.DataFrame], cascade: Cascade
) -> pl.DataFrame:
    """Each decided row's answer from its deciding phase: the first sample giving the
    voted label (any sample's when none did)."""
    label = cascade.job.extract.column
    chosen = []
    for index, frame in enumerate(answers):
        mine = decisions.filter(pl.col("phase") == index)
        if mine.is_empty():
            continue
        picked = (
            frame.join(mine.select(ROW_INDEX, LABEL, STAGE, CONFIDENCE), on=ROW_INDEX)
            .sort([ROW_INDEX, (pl.col(label) != pl.col(LABEL)).fill_null(True), SAMPLE])
            .unique(ROW_INDEX, keep="first", maintain_order=True)
            .with_columns(pl.col(LABEL).alias(label))
        )
        chosen.append(picked)
    return pl.concat(chosen, how="diagonal_relaxed")


def _carried_names(cascade: Cascade) -> list[str]:
    job = cascade.job
    return list(
        dict.fromkeys(
            [
                cascade.source.id_column,
                *job.keep_columns,
                *([job.gold_column] if job.gold_column else []),
            ]
        )
    )


def _carried(cascade: Cascade, rows: pl.Series) -> pl.DataFrame:
    frame = cascade.source.frame_of(_carried_names(cascade), rows.sort())
    return frame.select(ROW_INDEX, *_carried_names(cascade))


def _summary(
    cascade: Cascade, table: pa.Table | None, wall_s: float, stopped: JobStopped | None, before: int
) -> RunSummary:
    job, runs = cascade.job, cascade.summaries
    decided = pl.from_arrow(table) if table is not None else None
    assert decided is None or isinstance(decided, pl.DataFrame)
    status = Counter(decided["status"].to_list()) if decided is not None else Counter()
    invalid = 0 if decided is None else int((decided["label_status"] == "invalid").sum())
    retries: Counter[str] = Counter()
    for run in runs:
        retries.update(run.retries)
    return RunSummary(
        job=job.name,
        output_dir=str(job.output),
        results=str(job.output / RESULTS_FILE) if table is not None else None,
        rows_total=cascade.rows.len(),
        rows_ok=status["ok"],
        rows_error=sum(status.values()) - status["ok"],
        rows_before=before,
        rows_remaining=cascade.rows.len() - sum(status.values()),
        requests=sum(r.requests for r in runs),
        input_tokens=sum(r.input_tokens for r in runs),
        output_tokens=sum(r.output_tokens for r in runs),
        cache_creation_input_tokens=sum(r.cache_creation_input_tokens for r in runs),
        cache_read_input_tokens=sum(r.cache_read_input_tokens for r in runs),
        cost_usd=sum(r.cost_usd for r in runs),
        unpriced_rows=sum(r.unpriced_rows for r in runs),
        wall_s=wall_s,
        retries=dict(retries),
        cooldowns=sum(r.cooldowns for r in runs),
        adjustments=[a for r in runs for a in r.adjustments],
        stopped=str(stopped) if stopped else None,
        rows_invalid=invalid,
        unseen_requests=sum(r.unseen_requests for r in runs),
        unseen_worst_usd=sum(r.unseen_worst_usd for r in runs),
        unrecorded_requests=sum(r.unrecorded_requests for r in runs),
        unrecorded_worst_usd=sum(r.unrecorded_worst_usd for r in runs),
    )
