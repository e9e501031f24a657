"""From a phase's answers to each row's stage label and confidence (votes or stated), and
from the calibration phases to the thresholds (`thresholds.plan_thresholds`), kept in
cascade/plan.json so that every later run of the output routes rows the same way."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import polars as pl

from pipeline.cascade.thresholds import (
    NEVER,
    Plan,
    StageAnswers,
    most_given,
    plan_thresholds,
    stands,
    vote,
)
from pipeline.job.model import CascadeSettings
from pipeline.schema import ROW_INDEX
from pipeline.store.manifest import write_json

LABEL = "cascade_label"
CONFIDENCE = "cascade_confidence"


def stage_votes(answers: pl.DataFrame, label: str, samples: int, stated: bool) -> pl.DataFrame:
    """ROW_INDEX, LABEL, CONFIDENCE and `cost_usd` (all its samples) for each row whose
    `samples` requests are all answered: the most frequent valid label and the share of
    samples giving it (votes), or the one answer's label and stated confidence."""
    if answers.is_empty():
        schema = {ROW_INDEX: pl.Int64, LABEL: pl.String, CONFIDENCE: pl.Float64}
        return pl.DataFrame(schema={**schema, "cost_usd": pl.Float64})
    grouped = (
        answers.sort([ROW_INDEX, "cascade_sample"])
        .group_by(ROW_INDEX, maintain_order=True)
        .agg(pl.col(label), pl.col("stated").first(), pl.col("cost_usd").sum(), pl.len())
        .filter(pl.col("len") == samples)
    )
    labels, confidences = [], []
    for given, said in zip(grouped[label].to_list(), grouped["stated"].to_list(), strict=True):
        voted, share = vote(given)
        labels.append(voted)
        confidences.append((said or 0.0) if stated and voted is not None else share)
    return grouped.select(ROW_INDEX, "cost_usd").with_columns(
        pl.Series(LABEL, labels, pl.String), pl.Series(CONFIDENCE, confidences, pl.Float64)
    )


def in_reach(
    first: pl.DataFrame, label: str, asked: int, samples: int, threshold: float
) -> pl.Series:
    """The rows of a first round's answers (`first`: `asked` of each row's `samples`)
    whose label could still stand at `threshold` if every sample still to come agreed with
    their most frequent valid answer (thresholds.first_round); rows missing an answer, as
    stage_votes, never stand."""
    if first.is_empty():
        return pl.Series(ROW_INDEX, [], pl.Int64)
    grouped = first.group_by(ROW_INDEX).agg(pl.col(label), pl.len()).sort(ROW_INDEX)
    keep = []
    for given, answered in zip(grouped[label].to_list(), grouped["len"].to_list(), strict=True):
        best = (most_given(given)[1] + samples - asked) / samples
        keep.append(answered == asked and stands("", best, threshold))
    return grouped.filter(pl.Series(keep, dtype=pl.Boolean))[ROW_INDEX]


def standing(votes: pl.DataFrame, threshold: float) -> pl.DataFrame:
    """The votes whose label stands at `threshold` (thresholds.stands): the rows decided."""
    keep = [
        stands(label, confidence, threshold)
        for label, confidence in zip(
            votes[LABEL].to_list(), votes[CONFIDENCE].to_list(), strict=True
        )
    ]
    return votes.filter(pl.Series(keep, dtype=pl.Boolean))


def calibrate(votes: list[pl.DataFrame], rows: pl.Series, settings: CascadeSettings) -> Plan:
    """The thresholds, from every stage's votes on the calibration `rows`."""
    order = pl.DataFrame({ROW_INDEX: rows})
    answers = []
    for stage in votes:
        joined = order.join(stage, on=ROW_INDEX, how="left", maintain_order="left")
        answers.append(
            StageAnswers(
                labels=joined[LABEL].to_list(),
                confidences=joined[CONFIDENCE].fill_null(0.0).to_list(),
                cost_per_row=float(joined["cost_usd"].fill_null(0.0).sum()) / max(rows.len(), 1),
            )
        )
    return plan_thresholds(answers[:-1], answers[-1], settings.target, settings.confidence)


def save_plan(path: Path, plan: Plan) -> None:
    record: dict[str, Any] = {
        "thresholds": [None if t == NEVER else t for t in plan.thresholds],
        **{k: getattr(plan, k) for k in _NUMBERS},
        "decided_share": list(plan.decided_share),
    }
    write_json(path, record)


def load_plan(path: Path) -> Plan | None:
    if not path.exists():
        return None
    record = json.loads(path.read_text(encoding="utf-8"))
    return Plan(
        thresholds=tuple(NEVER if t is None else float(t) for t in record["thresholds"]),
        decided_share=tuple(record["decided_share"]),
        **{k: record[k] for k in _NUMBERS},
    )


_NUMBERS = (
    "disagreements",
    "rows",
    "upper_bound",
    "expected_cost_per_row",
    "last_alone_cost_per_row",
    "candidates",
)


def describe_plan(plan: Plan, settings: CascadeSettings) -> str:
    """The plan, as the run prints it before spending past the calibration."""
    models, last = settings.models, settings.models[-1]
    lines = [f"cascade plan, from {plan.rows:,} calibration rows that every stage answered:"]
    for k, threshold in enumerate(plan.thresholds):
        share = f"{plan.decided_share[k]:.1%} of rows expected"
        if threshold == NEVER:
            why = "no threshold keeps the guarantee" if plan.worth_it else "it would not pay"
            lines.append(f"  stage {k} {models[k]}: not asked ({why})")
        else:
            stands_at = f"its label stands at confidence >= {threshold:.2f}"
            lines.append(f"  stage {k} {models[k]}: {stands_at}: {share}")
    lines.append(f"  stage {len(models) - 1} {last}: the rest, {plan.decided_share[-1]:.1%}")
    alone = plan.last_alone_cost_per_row
    ratio = plan.expected_cost_per_row / alone if alone else math.nan
    lines.append(
        f"  expected cost a row ${plan.expected_cost_per_row:.6f} against ${alone:.6f} for "
        f"{last} alone ({ratio:.0%})"
    )
    lines.append("  " + guarantee(plan, settings))
    if not plan.worth_it:
        lines.append(
            f"  the cascade would not cost less than {last} alone: {last} answers the rest alone"
        )
    return "\n".join(lines)


def guarantee(plan: Plan, settings: CascadeSettings) -> str:
    last = settings.models[-1]
    if all(t == NEVER for t in plan.thresholds):
        return f"guarantee: every label is {last}'s"
    return (
        f"guarantee: with probability {settings.confidence:g}, the labels agree with {last}'s on "
        f"at least {settings.target:.0%} of rows like these (calibration: {plan.disagreements} "
        f"of {plan.rows} disagree; upper bound {plan.upper_bound:.1%}, Clopper-Pearson "
        f"corrected for {plan.candidates} threshold choices)"
    )
