"""A cascade's thresholds: the Clopper-Pearson bound against exact fractions, the plan's
choice on a worked case, and its guarantee in a repeated simulation."""

from __future__ import annotations

import random
from fractions import Fraction
from math import comb

import numpy as np
import pytest

from pipeline.cascade.thresholds import (
    NEVER,
    StageAnswers,
    binomial_cdf,
    clopper_pearson_upper,
    plan_thresholds,
    vote,
)


def exact_cdf(k: int, n: int, p: Fraction) -> Fraction:
    return sum((comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k + 1)), Fraction(0))


@pytest.mark.parametrize("k, n", [(0, 10), (3, 40), (7, 25), (0, 1), (12, 200)])
def test_the_binomial_cdf_and_the_upper_bound_match_exact_fractions(k, n):
    for p in (0.01, 0.1, 0.3, 0.77):
        assert binomial_cdf(k, n, p) == pytest.approx(float(exact_cdf(k, n, Fraction(p))), rel=1e-9)
    upper = clopper_pearson_upper(k, n, 0.05)
    assert float(exact_cdf(k, n, Fraction(upper))) == pytest.approx(0.05, abs=1e-9)


def test_no_failure_gives_the_textbook_bound():
    assert clopper_pearson_upper(0, 10, 0.05) == pytest.approx(1 - 0.05 ** (1 / 10))


def test_the_cheapest_plan_that_keeps_the_guarantee_is_chosen():
    # 400 rows: the cheap stage is sure (1.0) and right on 300, unsure (1/3) on 100
    last = StageAnswers(["a"] * 400, [1.0] * 400, cost_per_row=10.0)
    cheap = StageAnswers(["a"] * 300 + ["b"] * 100, [1.0] * 300 + [1 / 3] * 100, 1.0)
    plan = plan_thresholds([cheap], last, target=0.95, confidence=0.95)
    assert plan.thresholds == (1.0,)  # sure rows stand; the unsure go on
    assert plan.decided_share == (0.75, 0.25) and plan.disagreements == 0
    assert plan.expected_cost_per_row == pytest.approx(1.0 + 0.25 * 10.0)
    assert plan.worth_it


def test_a_stage_that_is_never_reliable_accepts_nothing():
    last = StageAnswers(["a"] * 200, [1.0] * 200, cost_per_row=10.0)
    noisy = StageAnswers(["a", "b"] * 100, [1.0] * 200, 1.0)  # sure, and wrong half the time
    plan = plan_thresholds([noisy], last, target=0.95, confidence=0.95)
    assert plan.thresholds == (NEVER,) and plan.decided_share == (0.0, 1.0)
    assert not plan.worth_it  # it costs the cheap stage and the last model: more than alone


def population(rng: random.Random, n: int, stages: int) -> tuple[list[StageAnswers], StageAnswers]:
    """Rows where each cheap stage is sure with some chance and then right with 97%, and
    unsure (1/3 or 2/3) and then right with 60%."""
    truth = [rng.choice("xyz") for _ in range(n)]
    answers = []
    for s in range(stages):
        labels, confidences = [], []
        for t in truth:
            confidence = rng.choice([1.0, 1.0, 2 / 3, 1 / 3])
            right = rng.random() < (0.97 if confidence == 1.0 else 0.6)
            labels.append(t if right else rng.choice([c for c in "xyz" if c != t]))
            confidences.append(confidence)
        answers.append(StageAnswers(labels, confidences, cost_per_row=1.0 + s))
    return answers, StageAnswers(truth, [1.0] * n, cost_per_row=20.0)


class Routed:
    """A population's stages and last model as numpy arrays (labels, whether each is
    valid, confidences), to route all its rows at once."""

    def __init__(self, stages: list[StageAnswers], last: StageAnswers) -> None:
        self.stages, self.last = stages, last
        self.labels = [np.array(s.labels, dtype=object) for s in stages]
        self.valid = [labels != None for labels in self.labels]  # noqa: E711
        self.confidences = [np.array(s.confidences) for s in stages]
        self.last_labels = np.array(last.labels, dtype=object)


def true_disagreement(plan, routed: Routed) -> float:
    """The share of rows a cheap stage decides and gets wrong against the last model: each
    row routed as `_deciding_stage` routes it (the first stage whose label `stands`)."""
    from pipeline.cascade.thresholds import _deciding_stage, stands

    wrong, undecided = 0, np.ones(len(routed.last_labels), dtype=bool)
    for k, threshold in enumerate(plan.thresholds):
        standing = routed.valid[k] & (routed.confidences[k] >= threshold)
        wrong += int((undecided & standing & (routed.labels[k] != routed.last_labels)).sum())
        undecided &= ~standing
    # the one rule, row by row, on a spread of rows: the arrays route as the cascade does
    stages = routed.stages
    for row in range(0, len(routed.last_labels), 397):
        k = _deciding_stage(row, plan.thresholds, stages)
        assert (k == len(stages)) == bool(undecided[row])
        assert k == len(stages) or stands(
            stages[k].labels[row], stages[k].confidences[row], plan.thresholds[k]
        )
    return wrong / len(routed.last_labels)


@pytest.mark.parametrize("n_stages", [1, 2])
def test_the_guarantee_holds_in_repeated_calibration(n_stages):
    """Calibrate on 200 rows drawn from a large population, many times: the chosen plan's
    agreement with the last model on the whole population reaches the target in at least
    `confidence` of the trials."""
    rng = random.Random(24)
    whole, whole_last = population(rng, 20_000, n_stages)
    routed = Routed(whole, whole_last)
    target, confidence, held, trials, decided = 0.95, 0.9, 0, 100, 0.0
    for _ in range(trials):
        rows = rng.sample(range(20_000), 200)
        stages = [
            StageAnswers(
                [s.labels[r] for r in rows], [s.confidences[r] for r in rows], s.cost_per_row
            )
            for s in whole
        ]
        last = StageAnswers([whole_last.labels[r] for r in rows], [1.0] * 200, 20.0)
        plan = plan_thresholds(stages, last, target, confidence)
        held += true_disagreement(plan, routed) <= 1 - target
        decided += 1 - plan.decided_share[-1]
    assert held / trials >= confidence
    assert decided / trials > 0.3  # and the cascade does decide rows early: not vacuous


def test_the_bound_is_what_keeps_the_guarantee_near_the_target():
    """A stage sure of every row and wrong on 5.5% of them: accepting it breaks a 95%
    target. Picking by the calibration rows' own share would accept it whenever those
    rows happen to show 5% or less; the bound does not."""
    rng = random.Random(7)
    truth = ["a"] * 20_000
    wrong = set(rng.sample(range(20_000), 1_100))  # 5.5%
    labels = ["b" if i in wrong else "a" for i in range(20_000)]
    held = naive_held = 0
    for _ in range(200):
        rows = rng.sample(range(20_000), 200)
        stage = StageAnswers([labels[r] for r in rows], [1.0] * 200, 1.0)
        last = StageAnswers([truth[r] for r in rows], [1.0] * 200, 20.0)
        plan = plan_thresholds([stage], last, target=0.95, confidence=0.9)
        held += plan.thresholds == (NEVER,)  # accepting it would break the target
        naive_held += sum(labels[r] != "a" for r in rows) > 10  # > 5% seen: refused
    assert held / 200 >= 0.9
    assert naive_held / 200 < 0.9  # the naive rule would not keep the guarantee


@pytest.mark.parametrize(
    "labels, expected",
    [
        (["a", "a", "b"], ("a", 2 / 3)),
        (["b", "a", "a"], ("a", 2 / 3)),
        (["a", "b", "c"], ("a", 1 / 3)),  # a tie: the first given
        (["c", "b", "b", "c"], ("c", 0.5)),
        (["a", None, None], ("a", 1 / 3)),  # invalid answers count against
        ([None, None], (None, 0.0)),
        (["x"], ("x", 1.0)),
    ],
)
def test_a_stages_vote(labels, expected):
    assert vote(labels) == (expected[0], pytest.approx(expected[1]))
