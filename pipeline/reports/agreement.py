"""How two outputs' labels compare: agreement, Cohen's kappa, the exact McNemar test on the
rows only one of them got right, and how many rows a difference would need to show.

McNemar's test looks only at the discordant rows (A right and B wrong, or the reverse):
with no difference in accuracy each is A's with probability 1/2, so the two-sided p-value
is twice the binomial tail of the smaller count, capped at 1 (the exact form: small counts
are where a labelling comparison lives). Rows needed: the usual normal approximation for
a paired test of proportions at a 5% two-sided level and 80% power,
n = (z_0.975 + z_0.8)^2 * p_discordant / difference^2.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

Z_975, Z_80 = 1.959963984540054, 0.8416212335729143
EXACT_UP_TO = 20_000  # discordant rows summed as exact integers; beyond, in log space


def cohen_kappa(a: Sequence[object], b: Sequence[object]) -> float | None:
    """Cohen's kappa of two labellings of the same rows; None when it is undefined (both
    give one and the same label to every row: chance agreement is already 1)."""
    if len(a) != len(b):
        raise ValueError("two labellings of different lengths")
    n = len(a)
    if not n:
        return None
    observed = sum(x == y for x, y in zip(a, b, strict=True)) / n
    count_a, count_b = Counter(a), Counter(b)
    chance = sum(count_a[label] * count_b[label] for label in count_a) / (n * n)
    if chance >= 1.0:
        return None
    return (observed - chance) / (1.0 - chance)


def mcnemar_exact_p(only_a_right: int, only_b_right: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts."""
    n, low = only_a_right + only_b_right, min(only_a_right, only_b_right)
    if n == 0:
        return 1.0
    if n <= EXACT_UP_TO:
        tail = term = 1  # C(n, 0), then each C(n, i + 1) from C(n, i), exactly
        for i in range(low):
            term = term * (n - i) // (i + 1)
            tail += term
        return min(1.0, 2 * tail / (1 << n))
    logs = [_log_comb(n, i) - n * math.log(2) for i in range(low + 1)]
    top = max(logs)
    return min(1.0, 2 * math.exp(top) * sum(math.exp(v - top) for v in logs))


def _log_comb(n: int, k: int) -> float:
    return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)


def rows_to_show(difference: float, discordant_share: float) -> int | None:
    """Rows a paired comparison needs to show `difference` in accuracy (5% level, 80%
    power), when `discordant_share` of rows are right in one output only."""
    if difference <= 0 or discordant_share <= 0:
        return None
    return math.ceil((Z_975 + Z_80) ** 2 * discordant_share / difference**2)


def smallest_difference_shown(rows: int, discordant_share: float) -> float | None:
    """The smallest difference in accuracy `rows` rows would show (as rows_to_show)."""
    if rows <= 0 or discordant_share <= 0:
        return None
    return (Z_975 + Z_80) * math.sqrt(discordant_share / rows)


@dataclass(frozen=True)
class PairCounts:
    """Two outputs against the gold labels, row by row."""

    both_right: int
    only_a_right: int
    only_b_right: int
    both_wrong: int

    @property
    def rows(self) -> int:
        return self.both_right + self.only_a_right + self.only_b_right + self.both_wrong

    @property
    def p_value(self) -> float:
        return mcnemar_exact_p(self.only_a_right, self.only_b_right)

    @property
    def difference(self) -> float:
        """B's accuracy minus A's."""
        return (self.only_b_right - self.only_a_right) / self.rows if self.rows else 0.0


def pair_counts(a_right: Sequence[bool], b_right: Sequence[bool]) -> PairCounts:
    pairs = Counter(zip(a_right, b_right, strict=True))
    return PairCounts(
        pairs[True, True], pairs[True, False], pairs[False, True], pairs[False, False]
    )


def verdict(counts: PairCounts, names: tuple[str, str], cost_ratio: float | None) -> str:
    """One line a person can act on: which is more accurate, how sure, at what price.
    `cost_ratio`: B's cost per row over A's (None: unknown)."""
    a, b = names
    if not counts.rows:
        return f"{a} and {b} share no answered rows with a gold label"
    difference, p = counts.difference, counts.p_value
    if p < 0.05 and difference:
        better, worse = (b, a) if difference > 0 else (a, b)
        ratio = cost_ratio if difference > 0 or not cost_ratio else 1 / cost_ratio
        price = f" at {ratio:.1f}x the cost per row" if ratio else ""
        return (
            f"{better} is more accurate than {worse} by {abs(difference) * 100:.1f} points "
            f"(p = {p:.2g}){price}"
        )
    share = (counts.only_a_right + counts.only_b_right) / counts.rows
    shown = smallest_difference_shown(counts.rows, share)
    if shown is None:
        return f"no difference on {counts.rows:,} rows: {a} and {b} are right on the same rows"
    line = (
        f"no evidence of a difference on {counts.rows:,} rows (p = {p:.2g}): a difference "
        f"under ~{shown * 100:.0f} points would not show"
    )
    needed = rows_to_show(abs(difference), share)
    if needed:
        line += f"; the {abs(difference) * 100:.1f}-point gap seen would need about {needed:,} rows"
    return line
