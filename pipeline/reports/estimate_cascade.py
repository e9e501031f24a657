"""`pipeline estimate` of a [cascade] job: the calibration priced as every stage will answer
it, and the range for the other rows, from all of them decided at the first stage that
answers (its samples only) to all of them reaching the last (every stage's requests). Once
the calibration has run, its plan (cascade/plan.json) says which stages answer, and what
it expects a row to cost. Input tokens are the local estimate; output 0 .. max_tokens."""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal

import polars as pl

from pipeline.cascade.phases import STATED_INSTRUCTION
from pipeline.cascade.routing import load_plan
from pipeline.cascade.run import Scope, calibration_rows, scope_rows
from pipeline.cascade.thresholds import NEVER
from pipeline.input.render import RequestRenderer
from pipeline.input.source import Source, open_source
from pipeline.job.model import Job
from pipeline.job.template import Unsendable
from pipeline.pricing import BATCH_DISCOUNT, PriceTable, load_price_table
from pipeline.reports.estimate_totals import Totals
from pipeline.schema import ROW_INDEX
from pipeline.store.layout import CASCADE_DIR, CASCADE_PLAN, RESULTS_FILE


@dataclass
class StageCosts:
    """Each stage's Totals over some rows, every sample counted."""

    stages: list[Totals] = field(default_factory=list)

    def low(self, stages: list[int]) -> Decimal:
        return sum((self.stages[k].cost_min for k in stages), Decimal(0))

    def high(self, stages: list[int]) -> Decimal:
        return sum((self.stages[k].cost_max for k in stages), Decimal(0))


def cascade_estimate(job: Job, scope: Scope) -> str:
    assert job.cascade is not None
    settings, prices = job.cascade, load_price_table().with_overrides(job.pricing)
    source = open_source(job.input, job.id_column, limit=scope.limit)
    rows = scope_rows(job, source, scope)
    calibration = calibration_rows(job, source, rows, scope.seed)
    plan = load_plan(job.output / CASCADE_DIR / CASCADE_PLAN)
    done = _decided(job, source)
    rest = rows.filter(~rows.is_in(calibration.implode()) & ~rows.is_in(done.implode()))
    answering = list(range(len(settings.models)))
    if plan is not None:  # a stage that accepts nothing is not asked
        answering = [k for k in answering[:-1] if plan.thresholds[k] != NEVER] + answering[-1:]
    batch = job.api.mode == "batch"
    factor = BATCH_DISCOUNT if batch else Decimal(1)
    last = settings.models[-1]
    lines = [
        f"{job.name}: a cascade of {len(settings.models)} models ({', '.join(settings.models)});"
        f" {rows.len():,} rows, {done.len():,} decided; costs at the "
        + ("batch tier, 50% off" if batch else "online prices")
    ]
    calib = _costs(job, source, calibration, prices)
    if plan is None:
        every = list(range(len(settings.models)))
        lines.append(
            f"calibration    {calibration.len():,} rows answered by every stage: "
            f"{_range(calib.low(every), calib.high(every), factor)}"
        )
    else:
        lines.append("calibration    done (cascade/plan.json): its thresholds route the rest")
    costs = _costs(job, source, rest, prices)
    spread = _range(costs.low(answering[:1]), costs.high(answering), factor)
    lines.append(
        f"the rest       {rest.len():,} rows: {spread} (all decided at stage {answering[0]} "
        f".. all reaching {last})"
    )
    if plan is not None:
        expected = Decimal(repr(plan.expected_cost_per_row)) * rest.len()
        lines.append(f"expected       {_money(expected)} for the rest, at the plan's shares")
    alone = _range(costs.low([-1]), costs.high([-1]), factor)
    lines.append(f"{last} alone: {alone} for the same {rest.len():,} rows")
    unpriced = sorted({m for t in costs.stages + calib.stages for m in t.unpriced})
    if unpriced:
        lines.append(f"unpriced       {', '.join(unpriced)}: not in the costs above")
    return "\n".join(lines) + "\n"


def _range(low: Decimal, high: Decimal, factor: Decimal) -> str:
    return f"{_money(low * factor)} .. {_money(high * factor)}"


def _money(usd: Decimal) -> str:
    """Dollars to the cent's hundredth, or to 6 places below a cent: a pilot-sized cascade
    costs fractions of a cent, which 4 places would show as $0.0000."""
    return f"${usd:,.4f}" if usd >= Decimal("0.01") or usd == 0 else f"${usd:.6f}"


def _decided(job: Job, source: Source) -> pl.Series:
    """Input positions the output's results.parquet holds (decided by an earlier run)."""
    results = job.output / RESULTS_FILE
    if not results.exists():
        return pl.Series(ROW_INDEX, [], pl.Int64)
    ids = pl.read_parquet(results, columns=[source.id_column])
    return source.id_positions().join(ids, on=source.id_column)[ROW_INDEX]


def _costs(job: Job, source: Source, rows: pl.Series, prices: PriceTable) -> StageCosts:
    """Every stage's requests for `rows` (its samples each), rendered and priced once."""
    assert job.cascade is not None
    cascade = job.cascade
    plain = RequestRenderer(job.request, job.prompt, job.system, job.overrides)
    asking = cascade.signal == "stated"  # the stages but the last ask for a confidence
    stated = RequestRenderer(job.request, job.prompt, job.system, job.overrides, STATED_INSTRUCTION)
    columns = [*job.template_columns(), *job.overrides.values()]
    costs = StageCosts([Totals() for _ in job.cascade.models])
    for batch in source.batches(columns, only=rows):
        for row in batch:
            try:
                body = plain.render(row)
                asked = stated.render(row) if asking else body  # rendered only when sent
            except Unsendable:
                continue
            for k, model in enumerate(cascade.models):
                sent = asked if asking and k < len(cascade.models) - 1 else body
                for _ in range(cascade.samples_at(k)):
                    costs.stages[k].add({**sent, "model": model}, prices)
    return costs
