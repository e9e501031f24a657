"""What every provider (request format) produces and must offer: the seam the runner, the
client and count_tokens use, so nothing outside providers/ knows which format it speaks.

    Answer, Usage, MalformedAnswer   the parsed result of a 2xx answer
    Provider                         endpoint, headers, body, streamed?, parse answer /
                                     error / stream, the local input-token estimate
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pipeline.errors import MalformedAnswer as MalformedAnswer


@dataclass(frozen=True)
class Usage:
    """Tokens an answer was billed for, as the cost columns need them."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0
    # The split as the answer gave it: writes it leaves out (only the total given) are
    # counted at the TTL the request asked for (pricing.split_writes).
    cache_creation_5m_tokens: int = 0
    cache_creation_1h_tokens: int = 0
    service_tier: str | None = None


@dataclass(slots=True)
class Answer:
    """A successful answer, reduced to what the output columns need."""

    text: str
    content_json: str
    stop_reason: str | None
    model: str | None
    usage: Usage | None  # None: the answer said nothing of usage; its cost is unknown
    content: list[Any]


@dataclass(frozen=True)
class Provider:
    """A request format, as the runner and the client use it (providers.registry has one
    per `[api] format`). The client sends what `body` renders and reads answers with the
    three parsers; nothing outside providers/ knows which format it speaks: what differs
    between formats beyond that is a capability field here, read where it matters."""

    name: str
    endpoint: Callable[[str], str]  # base_url -> the URL requests go to
    request_headers: Callable[[str, str, str], dict[str, str]]  # auth, key, version
    body: Callable[[dict[str, Any]], dict[str, Any]]  # a Messages body -> the format's
    streamed: Callable[[dict[str, Any]], bool]  # is this request's answer streamed?
    parse_answer: Callable[[bytes], Answer]
    parse_error: Callable[[int, bytes], tuple[str, str]]  # -> (error_type, message)
    parse_stream: Callable[[bytes], Answer]
    estimate_input_tokens: Callable[[dict[str, Any]], int]  # before sending, for limits
    # Capabilities
    supports_batches: bool  # the Message Batches API: `[api] mode = "batch"`, `--batch`
    supports_prompt_cache: bool  # `cache_control` breakpoints: `[request] cache = "auto"`
