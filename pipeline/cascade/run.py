"""A cascade's run: the calibration rows answered by every stage, the thresholds set on
them (and printed before anything more is spent), then the other rows stage by stage, a
stage's label standing where its confidence reaches the stage's threshold. Each phase is an
ordinary run (cascade.phases), given by the caller as `run_phase`; the output's
results.parquet is assembled from them (cascade.assemble) at the end, and at a stop.

The budget: a phase may spend what the others have not, and each of its requests reserves
the worst case of every request its row may still need (Limits.later_requests).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field, replace
from decimal import Decimal
from typing import IO

import polars as pl

from pipeline.cascade import assemble
from pipeline.cascade.account import cascade_account
from pipeline.cascade.phases import (
    Phase,
    later_requests,
    phase_answers,
    phase_job,
    write_phase_input,
)
from pipeline.cascade.routing import (
    calibrate,
    describe_plan,
    in_reach,
    load_plan,
    save_plan,
    stage_votes,
    standing,
)
from pipeline.cascade.thresholds import NEVER, Plan, first_round
from pipeline.errors import BudgetReached, JobStopped, PhaseUnfinished, UsageError
from pipeline.input.sample import Sample, sample_positions, sampled_rows
from pipeline.input.source import Source, open_source
from pipeline.job.model import CascadeSettings, Job
from pipeline.run.plan import refuse_while_batches_run, set_aside
from pipeline.run.progress import RunSummary
from pipeline.schema import ROW_INDEX
from pipeline.store.layout import CASCADE_DIR, CASCADE_PLAN, CASCADE_RECORD
from pipeline.store.lock import lock_output
from pipeline.store.manifest import identity_now, write_json
from pipeline.store.output_dir import check_output_dir

PhaseRunner = Callable[[Job], Awaitable[RunSummary]]


@dataclass
class Scope:
    """What a cascade run covers: --limit, --sample (fixed at the output's first run)."""

    limit: int | None = None
    sample: int | None = None
    seed: int = 0


@dataclass
class Cascade:
    job: Job
    settings: CascadeSettings
    source: Source
    rows: pl.Series  # input positions the cascade answers
    calibration: pl.Series  # of them, those every stage answers
    run_phase: PhaseRunner
    summaries: list[RunSummary] = field(default_factory=list)
    phases: list[Phase] = field(default_factory=list)  # run so far, in order

    @property
    def last(self) -> int:
        return len(self.settings.models) - 1

    def phase(self, kind: str, stage: int, rows: pl.Series) -> Phase:
        settings = self.settings
        stated = settings.signal == "stated" and stage < self.last
        model = settings.models[stage]
        return Phase(f"{kind}-{stage}", stage, model, settings.samples_at(stage), rows, stated)

    async def votes(self, phase: Phase) -> pl.DataFrame:
        """The phase run to its end; its rows' votes (ROW_INDEX, label, confidence)."""
        answers = await self.run(phase)
        return stage_votes(answers, self.job.extract.column, phase.samples, phase.stated)

    async def stage(self, k: int, rows: pl.Series, threshold: float) -> pl.DataFrame:
        """Stage k's votes on `rows`: in one phase, or in two rounds when a row can miss
        `threshold` before all its samples are in (phases.py); an earlier run's stage-K
        (one phase) goes on as one."""
        whole = self.phase("stage", k, rows)
        first = first_round(whole.samples, threshold)
        if first is None or whole.paths(self.job.output)[0].exists():
            return await self.votes(whole)
        answers = await self.run(replace(whole, name=f"first-{k}", asks=range(first)))
        label = self.job.extract.column
        reach = in_reach(answers, label, first, whole.samples, threshold)
        if not reach.is_empty():
            rest = replace(whole, name=f"rest-{k}", rows=reach, asks=range(first, whole.samples))
            answers = pl.concat([answers, await self.run(rest)], how="diagonal_relaxed")
        return stage_votes(answers, label, whole.samples, whole.stated)

    async def run(self, phase: Phase) -> pl.DataFrame:
        """The phase run to its end; its answers (phases.phase_answers)."""
        self.phases.append(phase)
        write_phase_input(self.source, self.job, phase)
        job = phase_job(self.job, phase, later_requests(self.settings, phase))
        cap = self.job.limits.max_cost_usd
        if cap is not None:
            job = replace(job, limits=replace(job.limits, max_cost_usd=self._left(cap, phase)))
        try:
            self.summaries.append(await self.run_phase(job))
        except JobStopped as e:  # what the phase did before it stopped counts too
            if isinstance(e.summary, RunSummary):
                self.summaries.append(e.summary)
            if isinstance(e, BudgetReached):  # in the cascade's figures, not the phase's
                raise BudgetReached(self._budget_text(cap, e)) from None
            raise
        answers = phase_answers(self.job, phase)
        asked = pl.scan_parquet(phase.paths(self.job.output)[0]).select(pl.len()).collect()
        unsent = asked.item() - answers.height  # its input as written when it first ran
        if unsent > 0:  # (--retry-errors sends only what failed): the next phases follow from it
            raise PhaseUnfinished(
                f"cascade phase {phase.name}: {unsent:,} of its requests not sent yet "
                "(--retry-errors sends only those that failed); run again without "
                "--retry-errors to finish it"
            )
        return answers

    def _left(self, cap: float, phase: Phase) -> float:
        """What the budget leaves this phase: the cap less what the others spent."""
        _, own = phase.paths(self.job.output)
        spent = sum(
            (assemble.spent_in(d) for d in assemble.phase_dirs(self.job) if d != own), Decimal(0)
        )
        left = Decimal(str(cap)) - spent
        if left <= 0:
            raise BudgetReached(self._budget_text(cap, None))
        return float(left)

    def _budget_text(self, cap: float | None, error: BudgetReached | None) -> str:
        spent = sum((assemble.spent_in(d) for d in assemble.phase_dirs(self.job)), Decimal(0))
        why = str(error).split(", and ", 1)[-1] if error is not None else "nothing is left"
        return (
            f"stopped at the budget: the cascade's phases spent ${spent:.4f} of ${cap or 0:.4f}, "
            f"and {why}"
        )


async def run_cascade(
    job: Job, scope: Scope, run_phase: PhaseRunner, *, fresh: bool = False
) -> RunSummary:
    """Run `job` (which has a [cascade]) to its end; JobStopped at a stop, after the
    output's results hold every row decided so far."""
    assert job.cascade is not None
    started = time.monotonic()
    source = open_source(job.input, job.id_column, limit=scope.limit)
    check_columns(job, source)
    lock = open_output(job, fresh)
    try:
        check_record(job, scope)
        rows = scope_rows(job, source, scope)
        calibration = calibration_rows(job, source, rows, scope.seed)
        cascade = Cascade(job, job.cascade, source, rows, calibration, run_phase)
        stopped: JobStopped | None = None
        try:
            await stages(cascade)
        except JobStopped as e:
            stopped = e
        summary = assemble.finish(cascade, time.monotonic() - started, stopped)
        account = cascade_account(job.output)
        if account:
            print(account, end="", file=sys.stderr)
        if stopped is not None:
            stopped.summary = summary
            raise stopped
        return summary
    finally:
        lock.close()


async def stages(cascade: Cascade) -> None:
    """Calibration, the plan, then the other rows stage by stage."""
    calibrated = [
        await cascade.votes(cascade.phase("calibration", k, cascade.calibration))
        for k in range(cascade.last + 1)
    ]
    plan = thresholds(cascade, calibrated)
    remaining = cascade.rows.filter(~cascade.rows.is_in(cascade.calibration.implode()))
    for k in range(cascade.last + 1):
        if remaining.is_empty():
            return
        if k < cascade.last and plan.thresholds[k] == NEVER:
            continue  # it accepts nothing: its answers would be paid for nothing
        votes = await cascade.stage(k, remaining, plan.thresholds[k] if k < cascade.last else NEVER)
        if k < cascade.last:
            decided = standing(votes, plan.thresholds[k])[ROW_INDEX]
            remaining = remaining.filter(~remaining.is_in(decided.implode()))


def thresholds(cascade: Cascade, calibrated: list[pl.DataFrame]) -> Plan:
    """The plan.json of an earlier run, else the thresholds set now, printed and kept."""
    path = cascade.job.output / CASCADE_DIR / CASCADE_PLAN
    plan = load_plan(path)
    if plan is None:
        plan = calibrate(calibrated, cascade.calibration, cascade.settings)
        if not plan.worth_it:  # cost matters more than the feature
            plan = replace(plan, thresholds=(NEVER,) * cascade.last)
        save_plan(path, plan)
        print(describe_plan(plan, cascade.settings), file=sys.stderr)
    return plan


def check_columns(job: Job, source: Source) -> None:
    """What the phases do not read, the output carries: its columns must be there."""
    source.require_columns(sorted(job.template_columns()), "the prompt/system template")
    source.require_columns(list(job.keep_columns), "[job] keep_columns")
    if job.gold_column:
        source.require_columns([job.gold_column], "[job] gold_column")
    clash = {job.extract.column} & {source.id_column, *job.keep_columns, *(job.gold_column or "",)}
    if clash:
        raise UsageError(
            f"[extract]: label column {job.extract.column!r} is already a column of the "
            "output; name it differently"
        )


def open_output(job: Job, fresh: bool) -> IO[bytes]:
    check_output_dir(job, fresh=fresh)
    if fresh:
        for phase_dir in sorted((job.output / CASCADE_DIR).glob("*-*/")):
            refuse_while_batches_run(phase_dir, "--fresh would send their rows again")
        set_aside(job.output)
    return lock_output(job.output)


def check_record(job: Job, scope: Scope) -> None:
    """cascade.json: the input, the scope and the [cascade] the output's phases were made
    of; a later run that differs is refused (its phases would mix two cascades)."""
    assert job.cascade is not None
    path = job.output / CASCADE_DIR / CASCADE_RECORD
    record = {
        "the input": identity_now(job.input),
        "[job] id_column": job.id_column,
        "--limit": scope.limit,
        "--sample": scope.sample,
        "--seed": scope.seed,
        **{f"[cascade] {k}": v for k, v in asdict(job.cascade).items()},
    }
    record = {k: list(v) if isinstance(v, tuple) else v for k, v in record.items()}
    if path.exists():
        earlier = json.loads(path.read_text(encoding="utf-8"))
        for key, value in record.items():
            if earlier.get(key) != value:
                raise UsageError(
                    f"{job.output}: {key} changed since the cascade's earlier run "
                    f"({earlier.get(key)!r} -> {value!r}): its phases would mix two cascades; "
                    "use another --output, or --fresh to set the earlier results aside"
                )
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, record)


def scope_rows(job: Job, source: Source, scope: Scope) -> pl.Series:
    if scope.sample is not None:
        return sampled_rows(source, Sample(scope.sample, scope.seed), job.gold_column).sort()
    return pl.Series(ROW_INDEX, range(source.rows_in_scope), pl.Int64)


def calibration_rows(job: Job, source: Source, rows: pl.Series, seed: int) -> pl.Series:
    """`calibration_rows` of the cascade's rows, by the sample rule (stratified by the gold
    labels when the job has them), the run's seed."""
    assert job.cascade is not None
    ids = source.id_positions().join(pl.DataFrame({ROW_INDEX: rows}), on=ROW_INDEX).sort(ROW_INDEX)
    strata = None
    if job.gold_column:
        gold = source.column(job.gold_column)
        strata = gold.gather(ids[ROW_INDEX])
    chosen = sample_positions(ids[source.id_column], job.cascade.calibration_rows, seed, strata)
    return ids[ROW_INDEX].gather(chosen).sort().rename(ROW_INDEX)


__all__ = ["PhaseRunner", "Scope", "run_cascade"]
