"""A cascade's thresholds, set on calibration rows that every stage answered, with a stated
guarantee.

Each stage but the last gives a row a label and a confidence (the share of its samples
that agree, or its stated confidence). With thresholds t_0 .. t_{k-2}, a row is decided
at the first stage whose confidence reaches its threshold, else by the last model; its
final label disagrees with the last model's only where an earlier stage decided it
wrongly.

On the n calibration rows, for every candidate vector of thresholds (each stage's
distinct confidences, and "accept nothing"), the disagreements d are counted, and the
Clopper-Pearson upper bound of the disagreement rate is taken at level alpha / M, where
alpha = 1 - confidence and M the number of vectors tried (Bonferroni: the bound holds
for every vector at once, so for the one chosen after looking). Of the vectors whose
bound is at most 1 - target, the one with the lowest expected cost a row (each stage's
mean cost times the share of rows that reach it, on the calibration rows) is chosen;
"accept nothing" at every stage always qualifies (the last model agrees with itself,
whatever a bound says), so there is always a plan. Then, with probability at least
`confidence`, the cascade's labels agree with the last model's on at least `target` of
rows like the calibration rows.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

NEVER = math.inf  # a threshold no confidence reaches: the stage accepts nothing


@dataclass(frozen=True)
class StageAnswers:
    """One stage's answers on the calibration rows, in the same row order."""

    labels: Sequence[str | None]
    confidences: Sequence[float]
    cost_per_row: float  # what answering a row costs at this stage (all its samples)


@dataclass(frozen=True)
class Plan:
    thresholds: tuple[float, ...]  # one a stage but the last (NEVER: it accepts nothing)
    decided_share: tuple[float, ...]  # on the calibration rows: share decided at each stage
    disagreements: int  # calibration rows whose final label is not the last model's
    rows: int
    upper_bound: float  # of the disagreement rate, at the corrected level
    expected_cost_per_row: float
    last_alone_cost_per_row: float
    candidates: int  # threshold vectors tried (the Bonferroni M)

    @property
    def worth_it(self) -> bool:
        """Whether the cascade is expected to cost less than the last model alone."""
        return self.expected_cost_per_row < self.last_alone_cost_per_row


@functools.lru_cache(maxsize=4096)
def clopper_pearson_upper(failures: int, n: int, alpha: float) -> float:
    """The one-sided upper bound p such that P(Binomial(n, p) <= failures) = alpha (1 when
    failures == n): the exact bound, by bisection on the binomial distribution. Kept by
    its arguments: a plan's candidate thresholds share few disagreement counts, and each
    bound is 80 bisection steps (plans on 200 and 2,000 calibration rows: 3x faster)."""
    if n <= 0 or failures >= n:
        return 1.0
    low, high = failures / n, 1.0
    for _ in range(80):
        middle = (low + high) / 2
        if binomial_cdf(failures, n, middle) > alpha:
            low = middle
        else:
            high = middle
    return high


def binomial_cdf(k: int, n: int, p: float) -> float:
    """P(X <= k) for X ~ Binomial(n, p), summed in log space."""
    if p <= 0.0:
        return 1.0
    if p >= 1.0:
        return 1.0 if k >= n else 0.0
    log_p, log_q = math.log(p), math.log1p(-p)
    logs = [
        math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * log_p
        + (n - i) * log_q
        for i in range(k + 1)
    ]  # fmt: skip
    top = max(logs)
    return min(1.0, math.exp(top) * sum(math.exp(v - top) for v in logs))


def plan_thresholds(
    stages: Sequence[StageAnswers], last: StageAnswers, target: float, confidence: float
) -> Plan:
    """The cheapest thresholds whose guarantee holds (see the module's docstring)."""
    n = len(last.labels)
    if any(len(s.labels) != n or len(s.confidences) != n for s in stages):
        raise ValueError("every stage answers the same calibration rows")
    candidates = [[*sorted(set(s.confidences)), NEVER] for s in stages]
    vectors = list(itertools.product(*candidates))
    alpha = (1.0 - confidence) / len(vectors)
    best: Plan | None = None
    for vector in vectors:
        plan = _evaluate(vector, stages, last, alpha, len(vectors))
        alone = all(t == NEVER for t in vector)  # the last model alone: agrees by definition
        if (alone or plan.upper_bound <= 1.0 - target) and (
            best is None or plan.expected_cost_per_row < best.expected_cost_per_row
        ):
            best = plan
    assert best is not None  # the last model alone always qualifies
    return best


def _evaluate(
    thresholds: tuple[float, ...],
    stages: Sequence[StageAnswers],
    last: StageAnswers,
    alpha: float,
    tried: int,
) -> Plan:
    n = len(last.labels)
    decided = [0] * (len(stages) + 1)
    wrong = 0
    for row in range(n):
        stage = _deciding_stage(row, thresholds, stages)
        decided[stage] += 1
        if stage < len(stages) and stages[stage].labels[row] != last.labels[row]:
            wrong += 1
    reaching = [n - sum(decided[:k]) for k in range(len(stages) + 1)]
    every = [*stages, last]
    cost = sum(r * s.cost_per_row for r, s in zip(reaching, every, strict=True)) / max(n, 1)
    return Plan(
        thresholds=thresholds,
        decided_share=tuple(d / max(n, 1) for d in decided),
        disagreements=wrong,
        rows=n,
        upper_bound=clopper_pearson_upper(wrong, n, alpha),
        expected_cost_per_row=cost,
        last_alone_cost_per_row=last.cost_per_row,
        candidates=tried,
    )


def _deciding_stage(row: int, thresholds: tuple[float, ...], stages: Sequence[StageAnswers]) -> int:
    for k, (threshold, stage) in enumerate(zip(thresholds, stages, strict=True)):
        if stands(stage.labels[row], stage.confidences[row], threshold):
            return k
    return len(stages)


def stands(label: str | None, confidence: float, threshold: float) -> bool:
    """Whether a stage's label for a row stands (the row goes no further): the one rule,
    for the calibration rows' plan and for the rows the cascade then routes."""
    return label is not None and confidence >= threshold


def first_round(samples: int, threshold: float) -> int | None:
    """How many of a row's `samples` to ask first, so that a row no answers still to come
    could lift to `threshold` asks no more: the fewest after which a row whose answers all
    differ could not reach it (a unanimous threshold of 3 samples: 2; 2 of 3: None, all
    at once). A row asked the rest has all its samples, and so the votes, and the standing,
    that asking them all at once gives."""
    if threshold == NEVER:
        return None
    for first in range(2, samples):
        if not stands("", (1 + samples - first) / samples, threshold):
            return first
    return None


def vote(labels: Sequence[str | None]) -> tuple[str | None, float]:
    """A stage's label for a row from its samples, and its confidence: the share of all
    samples (an invalid answer counts against) that give the most frequent valid label;
    a tie goes to the label given first. (None, 0.0) when no sample gave a valid label."""
    best, count = most_given(labels)
    return (best, count / len(labels)) if best is not None else (None, 0.0)


def most_given(labels: Sequence[str | None]) -> tuple[str | None, int]:
    """The most frequent valid label (a tie: the one given first) and how many give it;
    (None, 0) when none is valid."""
    counts: dict[str, int] = {}
    for label in labels:
        if label is not None:
            counts[label] = counts.get(label, 0) + 1
    if not counts:
        return None, 0
    best = max(counts, key=lambda label: counts[label])  # the first of the most frequent
    return best, counts[best]
