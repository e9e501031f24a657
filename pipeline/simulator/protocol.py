"""What both endpoints share: parsed requests, usage, errors, dialects."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

import orjson

from pipeline.errors import ERROR_TYPES as ERROR_TYPES
from pipeline.errors import ApiError as ApiError
from pipeline.errors import error_type_for as error_type_for
from pipeline.input.tokens import estimate_tokens
from pipeline.simulator.answers import Answer, Directives, Prompt

TOKENS_PER_MESSAGE = 3  # role markers and separators, as real tokenizers add


@dataclass(frozen=True, slots=True)
class CachePrefix:
    """The prompt up to one cache breakpoint: its identity (model and content), its input
    tokens and the breakpoint's TTL (see `prefixes`)."""

    key: bytes
    tokens: int
    ttl: str  # "5m" or "1h"


@dataclass(frozen=True, slots=True)
class ParsedRequest:
    prompt: Prompt
    input_tokens: int  # every input token, the cacheable prefix included
    cache_prefixes: tuple[CachePrefix, ...] = ()  # one per breakpoint, shortest first
    stream: bool = False
    service_tier: str = "standard"


@dataclass(frozen=True, slots=True)
class Usage:
    input_tokens: int
    output_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0
    cache_5m_tokens: int = 0
    cache_1h_tokens: int = 0
    service_tier: str = "standard"

    @property
    def rate_limited_input(self) -> int:
        """Input tokens the input-token limit counts: cache reads are free of it."""
        return self.input_tokens + self.cache_creation_input_tokens

    @property
    def cache_event(self) -> str | None:
        """For the ledger: "write" if it paid any cache write (even beside a read), "read"
        if it only read, None if it did neither."""
        if self.cache_creation_input_tokens:
            return "write"
        return "read" if self.cache_read_input_tokens else None

    def with_output(self, output_tokens: int) -> Usage:
        return replace(self, output_tokens=output_tokens)

    def anthropic(self) -> dict[str, Any]:
        return {
            "input_tokens": self.input_tokens,
            "cache_creation_input_tokens": self.cache_creation_input_tokens,
            "cache_read_input_tokens": self.cache_read_input_tokens,
            "cache_creation": {
                "ephemeral_5m_input_tokens": self.cache_5m_tokens,
                "ephemeral_1h_input_tokens": self.cache_1h_tokens,
            },
            "output_tokens": self.output_tokens,
            "service_tier": self.service_tier,
        }


def count_input_tokens(
    system: Sequence[str], messages: Sequence[Sequence[str]], tools_json: str
) -> int:
    """System + every message's text pieces (+3 a message) + the tools' JSON."""
    total = sum(estimate_tokens(text) for text in system) + estimate_tokens(tools_json)
    for pieces in messages:
        total += TOKENS_PER_MESSAGE + sum(estimate_tokens(piece) for piece in pieces)
    return total


def content_pieces(content: object) -> list[str]:
    """The text pieces of a message's content: a string or a list of blocks / parts."""
    if isinstance(content, str):
        return [content]
    if not isinstance(content, list):
        return []
    pieces: list[str] = []
    for block in content:
        if not isinstance(block, dict):
            continue
        text = block.get("text")
        if isinstance(text, str):
            pieces.append(text)
        elif block.get("type") == "tool_result":
            pieces.extend(content_pieces(block.get("content")))
        elif block.get("type") == "tool_use":
            pieces.append(orjson.dumps(block.get("input")).decode())
    return pieces


def last_user_text(body: object) -> str:
    """The text of the last user message of a raw request body ("" if there is none)."""
    messages = body.get("messages") if isinstance(body, dict) else None
    if not isinstance(messages, list):
        return ""
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            return "\n".join(content_pieces(message.get("content")))
    return ""


@dataclass(frozen=True, slots=True)
class Dialect:
    """One API flavour: how it parses requests and shapes answers, errors and headers."""

    endpoint: str
    id_prefix: str
    parse: Callable[[object], ParsedRequest]
    success_body: Callable[[str, Prompt, Answer, Usage, Directives], dict[str, Any]]
    error_body: Callable[[ApiError, str], dict[str, Any]]
    # "anthropic": request-id + anthropic-ratelimit-*; "openai": request-id and x-request-id
    # + x-ratelimit-* (what the official openai SDK reads).
    header_style: Literal["anthropic", "openai"] = "anthropic"
