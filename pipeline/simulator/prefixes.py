"""Where a request's cacheable prefixes end: its `cache_control` breakpoints, as the API reads them.

The API reads a prompt as one sequence of blocks: the tool definitions, then the system
blocks, then each message's content blocks. A block carrying `cache_control` is a breakpoint:
the prefix up to and including it is cacheable (at most 4 a request). A top-level
`cache_control` (automatic caching) puts one on the last block of the last message.

Each prefix is identified by a sha256 over the model and the canonical JSON of its blocks,
`cache_control` left out (marking a block does not change what is cached), and sized with the
same per-block token estimate as the request's `input_tokens`, so a prefix never counts more
tokens than the request it belongs to.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from pipeline.input.tokens import estimate_tokens
from pipeline.simulator.protocol import TOKENS_PER_MESSAGE, ApiError, CachePrefix, content_pieces

MAX_BREAKPOINTS = 4
TTLS = ("5m", "1h")


@dataclass(frozen=True, slots=True)
class Block:
    """One block of the prompt in API order: what identifies it, its share of the input
    tokens, and its `cache_control` (None when it marks no breakpoint)."""

    identity: object
    tokens: int
    control: dict[str, Any] | None


def _control(block: object) -> dict[str, Any] | None:
    control = block.get("cache_control") if isinstance(block, dict) else None
    return control if isinstance(control, dict) else None


def _bare(block: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in block.items() if key != "cache_control"}


def is_marked(tools: object, system: object, messages: object, top_level: object) -> bool:
    """Does anything in the request carry cache_control? (A cheap look before any hashing:
    most requests mark nothing.)"""
    if isinstance(top_level, dict):
        return True
    for group in (tools, system):
        if isinstance(group, list) and any(_control(item) is not None for item in group):
            return True
    for message in messages if isinstance(messages, list) else ():
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list) and any(_control(b) is not None for b in content):
            return True
    return False


def tool_blocks(tools: Sequence[object]) -> Iterator[Block]:
    """The input counts the tools as one JSON list; each tool's share is what it adds to
    that list's estimate, so the shares of all the tools add up to exactly that estimate."""
    parts: list[str] = []
    counted = 0
    for index, tool in enumerate(tools):
        parts.append(orjson.dumps(tool).decode())
        so_far = estimate_tokens("[" + ",".join(parts) + "]")
        bare = _bare(tool) if isinstance(tool, dict) else tool
        yield Block(["tool", index, bare], so_far - counted, _control(tool))
        counted = so_far


def system_blocks(system: Iterable[tuple[str, object]]) -> Iterator[Block]:
    for index, (text, control) in enumerate(system):
        identity = ["system", index, {"type": "text", "text": text}]
        yield Block(identity, estimate_tokens(text), control if isinstance(control, dict) else None)


def message_blocks(messages: Sequence[dict[str, Any]]) -> Iterator[Block]:
    """Each message's content blocks (a string is one text block); the message's own
    TOKENS_PER_MESSAGE go with its first block, as `count_input_tokens` counts them."""
    for index, message in enumerate(messages):
        role, content = message.get("role"), message.get("content")
        if isinstance(content, str):
            blocks = [{"type": "text", "text": content}]
        else:
            blocks = [block for block in content or () if isinstance(block, dict)]
        if not blocks:  # nothing to mark, but its tokens still come before what follows
            yield Block(["message", index, role, None], TOKENS_PER_MESSAGE, None)
        extra = TOKENS_PER_MESSAGE
        for block in blocks:
            tokens = extra + sum(estimate_tokens(piece) for piece in content_pieces([block]))
            yield Block(["message", index, role, _bare(block)], tokens, _control(block))
            extra = 0


def cache_prefixes(
    model: str, blocks: Sequence[Block], top_level: object = None
) -> tuple[CachePrefix, ...]:
    """One CachePrefix per breakpoint, shortest first; ApiError 400 past 4 breakpoints."""
    marks = [block.control for block in blocks]
    if isinstance(top_level, dict) and marks and marks[-1] is None:
        marks[-1] = top_level  # automatic caching: the last block, unless already marked
    found = sum(mark is not None for mark in marks)
    if found > MAX_BREAKPOINTS:
        message = f"A maximum of {MAX_BREAKPOINTS} blocks with cache_control may be provided."
        raise ApiError(400, f"{message} Found {found}.")
    if not found:
        return ()
    digest = hashlib.sha256(orjson.dumps(model))
    prefixes: list[CachePrefix] = []
    tokens = 0
    for block, mark in zip(blocks, marks, strict=True):
        # Canonical JSON (sorted keys) of a list: self-delimiting, so the concatenation
        # of the blocks identifies the sequence exactly.
        digest.update(orjson.dumps(block.identity, option=orjson.OPT_SORT_KEYS))
        tokens += block.tokens
        if mark is not None:
            prefixes.append(CachePrefix(digest.copy().digest(), tokens, _ttl(mark)))
            if len(prefixes) == found:
                break
    return tuple(prefixes)


def _ttl(control: dict[str, Any]) -> str:
    ttl = control.get("ttl") or "5m"
    if ttl not in TTLS:
        raise ApiError(400, "cache_control.ttl: Input should be '5m' or '1h'")
    return str(ttl)
