"""The statistics of `compare` and the sample rule, each against an independent computation
(exact fractions, a confusion-matrix formula, enumeration) or a repeated simulation."""

from __future__ import annotations

import itertools
import random
from fractions import Fraction
from math import comb

import polars as pl
import pytest

from pipeline.input.sample import sample_positions
from pipeline.reports.agreement import (
    cohen_kappa,
    mcnemar_exact_p,
    pair_counts,
    rows_to_show,
    verdict,
)


def binomial_two_sided(b: int, c: int) -> Fraction:
    """By definition: twice the smaller tail of Bin(b + c, 1/2), at most 1."""
    n = b + c
    tail = sum(Fraction(comb(n, i), 2**n) for i in range(min(b, c) + 1))
    return min(Fraction(1), 2 * tail)


@pytest.mark.parametrize("b, c", [(0, 0), (10, 2), (2, 10), (5, 5), (0, 7), (30, 60), (1, 0)])
def test_mcnemar_p_is_the_exact_binomial_tail(b, c):
    assert mcnemar_exact_p(b, c) == pytest.approx(float(binomial_two_sided(b, c)), rel=1e-12)


def test_mcnemar_p_of_a_textbook_table():
    assert mcnemar_exact_p(10, 2) == pytest.approx(158 / 4096)  # 2 * (1 + 12 + 66) / 2**12


def test_mcnemar_in_log_space_matches_exact_fractions(monkeypatch):
    from pipeline.reports import agreement

    monkeypatch.setattr(agreement, "EXACT_UP_TO", 50)  # the log-space sum from 51 rows on
    for b, c in [(40, 30), (70, 20), (26, 25), (200, 150)]:
        exact = float(binomial_two_sided(b, c))
        assert mcnemar_exact_p(b, c) == pytest.approx(exact, rel=1e-9)


def test_mcnemar_keeps_its_level_and_finds_a_real_difference_in_simulation():
    rng = random.Random(5)

    def rejections(p_b_better: float, discordant: int = 40, trials: int = 2000) -> float:
        hits = 0
        for _ in range(trials):
            b_better = sum(rng.random() < p_b_better for _ in range(discordant))
            hits += mcnemar_exact_p(discordant - b_better, b_better) < 0.05
        return hits / trials

    assert rejections(0.5) <= 0.05  # no difference: wrongly "significant" at most 5%
    assert rejections(0.8) >= 0.9  # 4 in 5 discordant rows go to B: found


def kappa_by_matrix(a: list[str], b: list[str]) -> float:
    labels = sorted(set(a) | set(b))
    n = len(a)
    matrix = {(x, y): 0 for x in labels for y in labels}
    for x, y in zip(a, b, strict=True):
        matrix[x, y] += 1
    po = sum(matrix[x, x] for x in labels) / n
    pe = sum(
        sum(matrix[x, y] for y in labels) * sum(matrix[y, x] for y in labels) for x in labels
    ) / (n * n)
    return (po - pe) / (1 - pe)


def test_kappa_matches_the_confusion_matrix_formula():
    rng = random.Random(2)
    for _ in range(50):
        a = [rng.choice("xyz") for _ in range(rng.randrange(5, 80))]
        b = [x if rng.random() < 0.6 else rng.choice("xyzw") for x in a]
        if len(set(a) | set(b)) > 1:
            assert cohen_kappa(a, b) == pytest.approx(kappa_by_matrix(a, b))


def test_kappa_of_a_worked_example():
    # 50 rows: both yes 20, a yes / b no 5, a no / b yes 10, both no 15
    a = ["y"] * 25 + ["n"] * 25
    b = ["y"] * 20 + ["n"] * 5 + ["y"] * 10 + ["n"] * 15
    assert cohen_kappa(a, b) == pytest.approx(0.4)  # po 0.7, pe 0.5


def test_kappa_is_undefined_when_both_give_one_label_to_every_row():
    assert cohen_kappa(["a"] * 4, ["a"] * 4) is None


def test_rows_to_show_reaches_the_power_it_claims_in_simulation():
    """At the rows it asks for, a 10-point gap with 30% of rows discordant is found about
    80% of the time."""
    needed = rows_to_show(0.10, 0.30)
    assert needed is not None
    rng = random.Random(9)
    hits = 0
    for _ in range(600):
        discordant = sum(rng.random() < 0.30 for _ in range(needed))
        # of the discordant rows, B is right in (0.30 + 0.10) / 2 / 0.30 of them
        b_right = sum(rng.random() < (0.15 + 0.05) / 0.30 for _ in range(discordant))
        hits += mcnemar_exact_p(discordant - b_right, b_right) < 0.05
    assert 0.72 <= hits / 600 <= 0.9


def test_the_verdict_says_who_is_better_and_at_what_price():
    counts = pair_counts([True] * 60 + [False] * 40, [True] * 60 + [True] * 25 + [False] * 15)
    line = verdict(counts, ("A", "B"), 3.0)
    assert line.startswith("B is more accurate than A by 25.0 points (p = ")
    assert line.endswith("at 3.0x the cost per row")
    quiet = pair_counts([True, False] * 50, [True, False] * 49 + [False, True])
    assert verdict(quiet, ("A", "B"), None).startswith("no evidence of a difference on 100 rows")


IDS = pl.Series("id", [f"row-{i}" for i in range(1000)])


def test_a_sample_depends_only_on_ids_size_and_seed():
    first = sample_positions(IDS, 50, seed=0)
    assert first.len() == 50 and first.is_sorted() and first.n_unique() == 50
    assert sample_positions(IDS.clone(), 50, seed=0).to_list() == first.to_list()
    assert sample_positions(IDS, 50, seed=1).to_list() != first.to_list()
    # the same ids in another order pick the same ids
    shuffled = IDS.sample(fraction=1.0, shuffle=True, seed=3)
    again = shuffled.gather(sample_positions(shuffled, 50, seed=0))
    assert sorted(again.to_list()) == sorted(IDS.gather(first).to_list())


@pytest.mark.parametrize(
    "strata", [None, pl.Series([("a", "b", "b", "c")[i % 4] for i in range(1000)])]
)
def test_a_larger_sample_holds_every_row_of_a_smaller_one(strata):
    sizes = [1, 7, 50, 333, 999, 1000, 5000]
    samples = [set(sample_positions(IDS, n, 4, strata).to_list()) for n in sizes]
    for smaller, larger in itertools.pairwise(samples):
        assert smaller <= larger
    assert len(samples[-1]) == 1000


def test_a_stratified_sample_holds_each_gold_label_in_proportion():
    gold = pl.Series([("pos",) * 6 + ("neg",) * 3 + (None,)][0][i % 10] for i in range(1000))
    for size in (10, 37, 100, 250):
        chosen = gold.gather(sample_positions(IDS, size, 11, gold))
        shares = {"pos": 0.6, "neg": 0.3, None: 0.1}
        for label, share in shares.items():
            count = chosen.is_null().sum() if label is None else (chosen == label).sum()
            assert abs(count - size * share) <= 1, (size, label, count)


def test_an_unstratified_sample_is_uniform_in_simulation():
    """Each row is picked with probability N / rows, over many seeds."""
    ids = pl.Series([f"r{i}" for i in range(40)])
    picks = [0] * 40
    for seed in range(2000):
        for position in sample_positions(ids, 10, seed):
            picks[position] += 1
    expected = 2000 * 10 / 40
    assert all(abs(p - expected) < 5 * (expected * 0.75) ** 0.5 for p in picks)
