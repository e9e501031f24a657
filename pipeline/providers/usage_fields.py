"""Token counts in an answer's `usage`, under every name the API and the gateways give them.

The cache counts decide the price (a write costs 1.25x / 2x input, a read 0.1x), so they
are read wherever a gateway puts them, in both request formats:

    cache writes   usage.cache_creation_input_tokens                (Anthropic; LiteLLM repeats it)
                   usage.prompt_tokens_details.cache_creation_tokens (LiteLLM, OpenAI format)
                   usage.prompt_tokens_details.cache_write_tokens    (OpenRouter)
    their split    usage.cache_creation.ephemeral_{5m,1h}_input_tokens (Anthropic)
                   usage.prompt_tokens_details.cache_creation_token_details.ephemeral_... (LiteLLM)
    cache reads    usage.cache_read_input_tokens                     (Anthropic; LiteLLM repeats it)
                   usage.prompt_tokens_details.cached_tokens         (OpenAI; LiteLLM; OpenRouter)

Where a count is given under two names, the first name above wins (Anthropic's: the
upstream's own figure, passed through). Every count given is checked: one that cannot be a
token count makes the answer malformed. A field that looks like a token count and that we
neither read nor know to be harmless is warned about once, since it may be billed.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, TextIO

from pipeline.providers.base import MalformedAnswer

MAX_COUNT = 2**63  # the token columns are int64; a count beyond is no count at all
DETAILS = "prompt_tokens_details"
WRITES = (("cache_creation_input_tokens",), (DETAILS, "cache_creation_tokens"),
          (DETAILS, "cache_write_tokens"))  # fmt: skip
READS = (("cache_read_input_tokens",), (DETAILS, "cached_tokens"))
SPLITS = (("cache_creation",), (DETAILS, "cache_creation_token_details"))
SPLIT_KEYS = ("ephemeral_5m_input_tokens", "ephemeral_1h_input_tokens")
# Counts read elsewhere (input / output), or parts of a count already priced (the output's
# reasoning tokens, the prompt's text / image / audio tokens), or a sum of others.
HARMLESS = {
    "input_tokens", "output_tokens", "prompt_tokens", "completion_tokens", "total_tokens",
    f"{DETAILS}.text_tokens", f"{DETAILS}.image_tokens", f"{DETAILS}.audio_tokens",
    f"{DETAILS}.video_tokens",
}  # fmt: skip
OUTPUT_DETAILS = ("completion_tokens_details", "output_tokens_details")


def token_count(raw: dict[str, Any], key: str, where: str = "usage") -> int | None:
    """The count under `key`: None when absent or null, MalformedAnswer when impossible."""
    value = raw.get(key)
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer() and 0 <= value < MAX_COUNT:
        return int(value)  # a JSON number written as 12.0 is still 12 tokens
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < MAX_COUNT:
        return value
    shown = repr(value)
    shown = shown if len(shown) <= 40 else shown[:37] + "..."
    raise MalformedAnswer(f"{where}.{key} is not a token count: {shown}")


@dataclass(frozen=True)
class CacheCounts:
    """The cache counts an answer gave; None: no field said (not even 0)."""

    writes: int | None = None
    reads: int | None = None
    five: int = 0  # the writes' 5m / 1h split, 0 where the answer gives none
    hour: int = 0

    @property
    def written(self) -> int:
        """The cache writes: the total given, else the sum of the split (if only that is)."""
        return self.writes if self.writes is not None else self.five + self.hour


def cache_counts(usage: dict[str, Any]) -> CacheCounts:
    """The cache writes, reads and the writes' split, from whichever names `usage` uses."""
    writes, reads = _first(usage, WRITES), _first(usage, READS)
    five = hour = None
    for path in SPLITS:
        split = _nested(usage, path[:-1]).get(path[-1])
        if isinstance(split, dict):
            where = "usage." + ".".join(path)
            counts = [token_count(split, key, where) for key in SPLIT_KEYS]
            five = five if five is not None else counts[0]
            hour = hour if hour is not None else counts[1]
    return CacheCounts(writes, reads, five or 0, hour or 0)


def _first(usage: dict[str, Any], paths: tuple[tuple[str, ...], ...]) -> int | None:
    """The count under the first of `paths` that gives one; every one given is checked."""
    found = None
    for path in paths:
        where = ".".join(("usage", *path[:-1]))
        count = token_count(_nested(usage, path[:-1]), path[-1], where)
        found = found if found is not None else count
    return found


def _nested(usage: dict[str, Any], path: tuple[str, ...]) -> dict[str, Any]:
    for key in path:
        inner = usage.get(key)
        usage = inner if isinstance(inner, dict) else {}
    return usage


KNOWN = (
    HARMLESS
    | {".".join(path) for path in WRITES + READS}
    | {".".join((*path, key)) for path in SPLITS for key in SPLIT_KEYS}
)
_warned: set[str] = set()


def warn_unknown(usage: dict[str, Any], *, to: TextIO | None = None) -> None:
    """Say once per field (per process) that `usage` has a count we do not price."""
    for path in _unknown_counts(usage, ()):
        if path not in _warned:
            _warned.add(path)
            print(
                f"warning: the answers' usage has a field this version does not read: "
                f"usage.{path}; if it is billed, the cost columns leave it out",
                file=to or sys.stderr,
            )


def _unknown_counts(tree: dict[str, Any], prefix: tuple[str, ...]) -> list[str]:
    """Paths of the numbers in `tree` named like token or cache counts that are not KNOWN."""
    found = []
    for key, value in tree.items():
        path = (*prefix, str(key))
        if isinstance(value, dict):
            if path[0] not in OUTPUT_DETAILS:  # parts of the output count, priced as output
                found += _unknown_counts(value, path)
            continue
        if not isinstance(value, int | float) or isinstance(value, bool):
            continue  # not a count (text, null, a list): nothing is billed by it
        name, dotted = str(key).lower(), ".".join(path)
        if ("token" in name or "cache" in name) and dotted not in KNOWN:
            found.append(dotted)
    return found
