"""`[request] cache = "auto"`: find the prefix every row shares and mark it for caching.

The shared prefix runs, in the order the API reads a request, over the tools, the system
prompt (a string or blocks; a per-row `system` override ends it before the system) and
the prompt template's text before its first `{column}`. A system block or the prompt that
holds a `{column}` is shared up to that column: the rendered text is split there into two
text blocks, the first marked, so every row's text is exactly what it was, only cut in two
(the prompt is cut only when its head adds 256 tokens or more, or the prefix needs them).
One `cache_control` breakpoint goes at the end of the prefix when it reaches the model's
minimum cacheable length (below it the API caches nothing and says nothing); the user's own
breakpoints stay as they are, `auto` never adds a fifth, and never one whose TTL would break
the API's order (a 1-hour breakpoint before any 5-minute one: the request would be refused).
The plan is made once per job (`plan_cache`); `CachePlan.mark` applies it to each rendered
body. Whether the API cached is known only from an answer's usage: `CacheMarker.heard` says.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from pipeline.input.tokens import estimate_tokens
from pipeline.job.template import Template, system_templates
from pipeline.providers.base import Usage

MAX_BREAKPOINTS = 4
SKIP = "skip"  # CachePlan.where when nothing is marked
PROMPT_HEAD_TOKENS = 256  # the prompt's head extends the prefix only if it adds this many
LONGER = {"5m": 0, "1h": 1}  # TTLs by length: a longer one must come before a shorter one
Where = tuple[int, int]  # a breakpoint's place in the order the API reads a request


@dataclass(frozen=True)
class CachePlan:
    where: str  # "tools" | "system" | "prompt" | SKIP
    tokens: int  # the shared prefix, by the local estimate
    ttl: str  # "5m" | "1h"
    system_block: int | None = None  # where == "system": the block marked (or split)
    split_at: str | None = None  # the literal head to cut off and mark (system or prompt)
    reason: str = ""  # what the run says about it, once

    @property
    def active(self) -> bool:
        return self.where != SKIP

    def mark(self, body: dict[str, Any]) -> dict[str, Any]:
        """`body` with the breakpoint placed; unchanged when the plan marks nothing, or
        when this row's body does not have the shape the plan expects."""
        if not self.active:
            return body
        control = {"type": "ephemeral", "ttl": self.ttl}
        if self.where == "tools":
            tools = list(body["tools"])
            if tools[-1].get("cache_control"):
                return body  # the user's own breakpoint, kept as it is
            tools[-1] = {**tools[-1], "cache_control": control}
            return {**body, "tools": tools}
        if self.where == "system":
            return _mark_system(body, self, control)
        return _mark_prompt(body, self.split_at or "", control)


def _mark_system(body: dict[str, Any], plan: CachePlan, control: dict[str, Any]) -> dict[str, Any]:
    system = body.get("system")
    blocks = [{"type": "text", "text": system}] if isinstance(system, str) else list(system or [])
    index = plan.system_block if plan.system_block is not None else len(blocks) - 1
    if not 0 <= index < len(blocks):
        return body
    block = blocks[index]
    if block.get("cache_control"):
        return body  # the user's own breakpoint, kept as it is
    if plan.split_at is None:
        blocks[index] = {**block, "cache_control": control}
        return {**body, "system": blocks}
    text = block.get("text")
    head = plan.split_at
    if not isinstance(text, str) or not text.startswith(head) or not text[len(head) :].strip():
        return body  # the API refuses a whitespace-only text block: this row stays whole
    rest = {k: v for k, v in block.items() if k != "cache_control"}
    blocks[index : index + 1] = [
        {"type": "text", "text": head, "cache_control": control},
        {**rest, "text": text[len(head) :]},
    ]
    return {**body, "system": blocks}


def _mark_prompt(body: dict[str, Any], head: str, control: dict[str, Any]) -> dict[str, Any]:
    messages = body["messages"]
    text = messages[-1]["content"]
    if not isinstance(text, str) or not text.startswith(head) or not text[len(head) :].strip():
        return body  # the API refuses a whitespace-only text block: this row stays whole
    content = [
        {"type": "text", "text": head, "cache_control": control},
        {"type": "text", "text": text[len(head) :]},
    ]
    return {**body, "messages": [*messages[:-1], {**messages[-1], "content": content}]}


def user_breakpoints(request: Mapping[str, Any], system: Any) -> int:
    """Breakpoints the job's own request already carries."""
    return len(own_breakpoints(request, system))


def own_breakpoints(request: Mapping[str, Any], system: Any) -> list[tuple[Where, str]]:
    """The job's own breakpoints and their TTLs, in the order the API reads them: tools
    (0, i), system blocks (1, i), then the request's top-level one (3, 0), which the API
    puts on the last block, after the prompt (2, 0)."""
    found = [
        ((0, i), _ttl(tool["cache_control"]))
        for i, tool in enumerate(request.get("tools") or ())
        if tool.get("cache_control")
    ]
    if isinstance(system, list):
        found += [
            ((1, i), _ttl(block["cache_control"]))
            for i, block in enumerate(system)
            if block.get("cache_control")
        ]
    if request.get("cache_control"):
        found.append(((3, 0), _ttl(request["cache_control"])))
    return found


def _ttl(control: Any) -> str:
    """A breakpoint's TTL: 5 minutes unless it asks for the hour (the API's default)."""
    return "1h" if isinstance(control, Mapping) and control.get("ttl") == "1h" else "5m"


def _ttl_clash(own: list[tuple[Where, str]], at: Where, ttl: str) -> str | None:
    """Why a `ttl` breakpoint at `at` would break the API's order (longer TTLs first)
    among the job's own breakpoints; None when it would not."""
    for where, theirs in own:
        if (where < at and LONGER[theirs] < LONGER[ttl]) or (
            where > at and LONGER[theirs] > LONGER[ttl]
        ):
            side = "before" if where < at else "after"
            return (
                f"the job's own {theirs} breakpoint comes {side} the shared prefix's end, and "
                f"the API refuses a request with a longer TTL after a shorter one: no {ttl} "
                "breakpoint added"
            )
    return None


def _at(prefix: _Prefix, request: Mapping[str, Any]) -> Where:
    """Where the breakpoint at the end of `prefix` goes, in `own_breakpoints`' order."""
    if prefix.where == "tools":
        return (0, len(request["tools"]) - 1)
    if prefix.where == "system":
        return (1, prefix.system_block or 0)
    return (2, 0)


@dataclass(frozen=True)
class _Prefix:
    where: str
    text: str  # what the estimate counts
    system_block: int | None = None
    split_at: str | None = None


def shared_prefix(
    request: Mapping[str, Any],
    prompt: Template,
    system: str | list[dict[str, Any]] | None,
    overrides: Mapping[str, str],
    *,
    into_prompt: bool = True,
) -> _Prefix | None:
    """The longest prefix every row shares, and where it ends (None: nothing shared);
    with `into_prompt` False, it ends before the prompt."""
    tools = request.get("tools") or []
    found = _Prefix("tools", orjson.dumps(tools).decode()) if tools else None
    text = found.text if found else ""
    if "system" in overrides:
        return found
    templates = system_templates(system)
    for index, template in enumerate(templates):
        head = template.parts[0]
        if template.columns:  # shared up to its first column
            if head.strip():
                found = _Prefix("system", text + head, index, head)
            return found
        text += head
        found = _Prefix("system", text, index)
    head = prompt.parts[0]
    if into_prompt and prompt.columns and head.strip():
        found = _Prefix("prompt", text + head, split_at=head)
    return found


def plan_cache(
    request: Mapping[str, Any],
    prompt: Template,
    system: str | list[dict[str, Any]] | None,
    overrides: Mapping[str, str],
    *,
    minimum: int | None,
    model: str,
    ttl: str,
) -> CachePlan:
    """Where `auto` puts its breakpoint for `model`, or why it puts none."""
    if user_breakpoints(request, system) >= MAX_BREAKPOINTS:
        return CachePlan(SKIP, 0, ttl, reason="the job marks 4 breakpoints already: none added")
    prefix = shared_prefix(request, prompt, system, overrides)
    before = shared_prefix(request, prompt, system, overrides, into_prompt=False)
    if prefix is not None and before is not None and prefix.where == "prompt":
        gained = estimate_tokens(prefix.text) - estimate_tokens(before.text)
        if gained < PROMPT_HEAD_TOKENS and (
            minimum is None or estimate_tokens(before.text) >= minimum
        ):
            prefix = before  # a few words more are not worth cutting the user's prompt in two
    if prefix is None:
        return CachePlan(SKIP, 0, ttl, reason="the rows share no prefix: nothing to cache")
    tokens = estimate_tokens(prefix.text)
    if minimum is None:
        return CachePlan(SKIP, tokens, ttl, reason=f"no minimum cacheable length known for {model}")
    if tokens < minimum:
        return CachePlan(
            SKIP, tokens, ttl,
            reason=f"shared prefix ~{tokens:,} tokens: below the {minimum:,} that {model} caches",
        )  # fmt: skip
    clash = _ttl_clash(own_breakpoints(request, system), _at(prefix, request), ttl)
    if clash is not None:
        return CachePlan(SKIP, tokens, ttl, reason=clash)
    return CachePlan(  # marked, not cached: only the API's answer says whether it cached
        prefix.where, tokens, ttl, prefix.system_block, prefix.split_at,
        reason=f"shared prefix ~{tokens:,} tokens ({prefix.where}) of {model} marked for "
        f"caching, ttl {ttl}",
    )  # fmt: skip


def choose_ttl(*, batch: bool, requests_per_minute: float | None) -> tuple[str, str]:
    """The TTL, and why: 1 hour when reuses may come more than ~4 minutes apart."""
    if batch:
        return "1h", "batch mode: a batch's requests may be processed hours apart"
    if requests_per_minute is not None and requests_per_minute < 0.25:
        return "1h", (
            f"at {requests_per_minute:g} requests a minute, reuses come more than 4 minutes apart"
        )
    return "5m", "reuses come within 5 minutes"


def pays(ttl: str, rows: int) -> bool:
    """Does one write (1.25x or 2x input) and reads at 0.1x beat `rows` full-price inputs?"""
    write = 2.0 if ttl == "1h" else 1.25
    return write + 0.1 * (rows - 1) < rows


class CacheMarker:
    """The job's plan per model (a `model` override gives each model its own prefix),
    made on first use and said once."""

    def __init__(self, job: Any, prices: Any, *, batch: bool, rows: int, say: Any) -> None:
        self.job, self.prices, self.say = job, prices, say
        self.ttl, self.why = choose_ttl(
            batch=batch, requests_per_minute=job.limits.requests_per_minute
        )
        self.rows = rows
        self.plans: dict[str, CachePlan] = {}
        self.heard_from: set[str] = set()  # models whose first answer was said

    def plan_for(self, model: str) -> CachePlan:
        plan = self.plans.get(model)
        if plan is None:
            price = self.prices.lookup(model)
            job = self.job
            plan = plan_cache(
                job.request, job.prompt, job.system, job.overrides,
                minimum=price.min_cache_tokens if price else None, model=model, ttl=self.ttl,
            )  # fmt: skip
            if plan.active and not pays(self.ttl, self.rows):
                plan = CachePlan(SKIP, plan.tokens, self.ttl, reason=(
                    f"{self.rows} row(s) to send: a {self.ttl} cache write would not pay for itself"
                ))  # fmt: skip
            self.plans[model] = plan
            self.say(f"cache: {plan.reason}" + (f" ({self.why})" if plan.active else ""))
        return plan

    def mark(self, body: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
        """The body marked, and the prefix's key (its model) when it is, for the warm-up."""
        plan = self.plan_for(str(body["model"]))
        marked = plan.mark(body)
        return marked, (str(body["model"]) if marked is not body else None)

    def heard(self, model: str, usage: Usage | None) -> None:
        """Say, once per model, what the first answer to a marked request did with the
        cache: marking asks, and only the answer's usage says whether the API cached."""
        plan = self.plans.get(model)
        if plan is None or not plan.active or model in self.heard_from:
            return
        self.heard_from.add(model)
        if usage is None:
            self.say(
                f"cache: {model}: the first answer carried no usage: what it cached is unknown"
            )
        elif usage.cache_creation_input_tokens or usage.cache_read_input_tokens:
            self.say(
                f"cache: {model}: the first answer wrote {usage.cache_creation_input_tokens:,}"
                f" and read {usage.cache_read_input_tokens:,} prefix tokens"
            )
        else:
            self.say(
                f"cache: {model}: the API wrote nothing to the cache: the first answer to a "
                f"marked request (~{plan.tokens:,} prefix tokens by the local estimate) "
                "neither wrote nor read it; the prefix may be below what the model caches "
                "(min_cache_tokens under [pricing]) or the endpoint does not cache, and such "
                "rows pay the full input price"
            )


def write_ttl(job: Any, marker: CacheMarker | None, model: str) -> str | None:
    """The TTL the job's requests for `model` ask their cache writes to live, to price
    writes whose 5m / 1h split an answer leaves out: "1h" when any breakpoint (the job's
    own, or `auto`'s) asks for the hour, the most it can cost; else "5m"; None: none."""
    ttls = [ttl for _, ttl in own_breakpoints(job.request, job.system)]
    if marker is not None and marker.plan_for(model).active:
        ttls.append(marker.ttl)
    return max(ttls, key=LONGER.__getitem__, default=None)
