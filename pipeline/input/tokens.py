"""A local token estimate shared by the client (budgets, estimates) and the simulator.

Real tokenizers are not available offline; ~4 characters a token is the figure the
provider documents for English text, and using one function on both sides keeps the
client's estimates and the simulator's billing consistent.
"""

from __future__ import annotations

import math


def estimate_tokens(text: str) -> int:
    """Tokens in `text`: one per four UTF-8 bytes, rounded up, at least one if non-empty."""
    if not text:
        return 0
    return max(1, math.ceil(len(text.encode("utf-8")) / 4))
