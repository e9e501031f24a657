"""Seeded faults of the Message Batches API: requests that end errored or expired, and
creates whose answer is lost after the batch was made.

Draws are taken at create, in arrival order, one per request, from sequences seeded by
`--seed`: the same creates in the same order meet the same faults, whatever the timing of
the background processing, while a request sent again in a later batch gets a fresh draw
(so a client's retry can succeed). Each fault kind has its own sequence, so enabling one
leaves the other's draws as they were.
"""

from __future__ import annotations

import random
from typing import Any, Literal

from pipeline.simulator.config import SimConfig

Fault = Literal["errored", "expired"]
# The transient error a client must retry in a later batch (API-NOTES: result.type errored).
OVERLOADED: dict[str, Any] = {
    "type": "errored",
    "error": {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}},
}
EXPIRED: dict[str, Any] = {"type": "expired"}


class BatchFaults:
    """The fault draws of one server; `reset` starts them over (/_sim/reset makes a new
    one, from the settings the server starts over with)."""

    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.reset()

    def reset(self) -> None:
        seed = self.config.seed
        self._outcome_rng = random.Random(f"batch-outcome:{seed}")
        self._lose_rng = random.Random(f"batch-lose-create:{seed}")
        self._creates = 0

    def outcomes(self, count: int) -> list[Fault | None]:
        """The injected end of each of `count` requests of a new batch (None: answer it)."""
        errored = self.config.batch_errored_rate
        expired = errored + self.config.batch_expired_rate
        if not expired:
            return [None] * count  # no draws: a 100,000-request batch pays nothing for this
        draws = (self._outcome_rng.random() for _ in range(count))
        return ["errored" if d < errored else "expired" if d < expired else None for d in draws]

    def lose_create(self) -> bool:
        """Whether the answer to the batch just created is lost: the first N for sure, then
        at the seeded rate."""
        self._creates += 1
        if self._creates <= self.config.batch_lose_first_creates:
            return True
        rate = self.config.batch_lose_create_rate
        return bool(rate) and self._lose_rng.random() < rate
