"""Rate-limit headers under the names gateways pass them on with.

LiteLLM's proxy sends every header of the provider's answer on as `llm_provider-<name>`
(`llm_provider-anthropic-ratelimit-requests-limit`, ...), beside copies of a few under
OpenAI's names (`x-ratelimit-limit-tokens` is Anthropic's tokens-limit there). Read like
the originals, they tell the limiter the provider's limits; a gateway that passes none on
leaves the limit to be learned from its 429s.
"""

from __future__ import annotations

from collections.abc import Mapping

PASSED_ON_PREFIXES = ("llm_provider-",)


def rate_limit_headers(headers: Mapping[str, str]) -> Mapping[str, str]:
    """`headers` (names lower-cased) with each one a gateway passed on under another name
    also under the provider's own; a header sent under its own name wins over a copy."""
    names = "\n".join(headers)
    if not any(prefix in names for prefix in PASSED_ON_PREFIXES):
        return headers  # no name holds a prefix, so none starts with one
    passed_on = {
        name[len(prefix) :]: value
        for name, value in headers.items()
        for prefix in PASSED_ON_PREFIXES
        if name.startswith(prefix)
    }
    return {**passed_on, **headers} if passed_on else headers
