"""The Messages API request fields this version knows, and one check for each.

One table serves every place a field can be set: `[request]`, `[request.extra]` and a
per-row `[overrides]` cell. A value refused in one place is refused in all of them, so a
bad value never reaches the API through a side door (it would be paid for, row after row,
until fail-fast stops the run). Rules that tie two fields together run on the merged
request, and again on each row's body once its overrides are applied.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pipeline.job.checks import (
    Check,
    Invalid,
    boolean,
    mapping,
    mapping_list,
    number,
    string,
    string_list,
)

MAX_TOKENS_CAP = 1_000_000  # far above any model's output limit; a typo's extra zeros are not
TOP_K_CAP = 1_000_000  # beyond any vocabulary: a larger top_k means nothing
THINKING_TOP_P = 0.95  # the lowest top_p the API takes with thinking on (its docs)


def model(value: Any) -> str:
    text = str(string()(value))
    if not text.strip():
        raise Invalid("must name a model (got an empty string)")
    return text


def system(value: Any) -> str | list[dict[str, Any]]:
    if isinstance(value, str):
        return value
    blocks = mapping_list(value)
    for number_, block in enumerate(blocks, 1):
        if not isinstance(block.get("text"), str):
            raise Invalid("each system block must have a string `text`")
        if not block["text"].strip():  # the API refuses an empty text block, every row
            raise Invalid(f"block {number_} has an empty `text`")
    return blocks


def tool_choice(value: Any) -> dict[str, Any]:
    table = mapping(value)
    string(("auto", "any", "tool", "none"))(table.get("type"))
    if table["type"] == "tool" and not isinstance(table.get("name"), str):
        raise Invalid('type = "tool" needs the tool\'s `name`')
    return table


def thinking(value: Any) -> dict[str, Any]:
    table = mapping(value)
    string(("enabled", "disabled", "adaptive"))(table.get("type"))
    if table["type"] == "enabled":
        if "budget_tokens" not in table:
            raise Invalid('type = "enabled" needs budget_tokens', "budget_tokens")
        try:
            number(1024, MAX_TOKENS_CAP, integer=True)(table["budget_tokens"])
        except Invalid as e:
            raise Invalid(str(e), "budget_tokens") from None
    return table


def metadata(value: Any) -> dict[str, Any]:
    table = mapping(value)
    if "user_id" in table and not isinstance(table["user_id"], str):
        raise Invalid("must be a string", "user_id")
    return table


def no_stream(value: Any) -> bool:
    if boolean(value):
        raise Invalid(
            "must be false: the pipeline decides, and streams answers whose max_tokens "
            "is above 21,333 by itself"
        )
    return False


REQUEST_FIELDS: dict[str, Check] = {
    "model": model,
    "max_tokens": number(1, MAX_TOKENS_CAP, integer=True),
    "system": system,
    "temperature": number(0, 1),
    "top_p": number(0, 1),
    "top_k": number(0, TOP_K_CAP, integer=True),
    "stop_sequences": string_list,
    "stream": no_stream,
    "tools": mapping_list,
    "tool_choice": tool_choice,
    "thinking": thinking,
    "metadata": metadata,
    "service_tier": string(("auto", "standard_only")),
    "cache_control": mapping,
}

# Keys [request.extra] refuses, and why: extra is for API fields this version does not
# know, sent as written. These are ours (prompt), built by the pipeline from the row
# (messages), or templates that extra would send unrendered (system).
NOT_IN_EXTRA = {
    "prompt": "is the prompt template, not an API field: set it in [request]",
    "system": "is a {column} template: set it in [request], where it is rendered per row",
    "messages": "is built from [request] prompt, one user turn per row: remove it",
    "extra": "[request.extra] cannot hold another extra table",
}


def check_extra(extra: Mapping[str, Any], request: Mapping[str, Any]) -> dict[str, Any]:
    """[request.extra] validated: known fields by their own check, unknown ones as given.
    Raises Invalid with `subkey` naming the key inside extra."""
    checked: dict[str, Any] = {}
    for key, value in extra.items():
        if key in NOT_IN_EXTRA:
            raise Invalid(NOT_IN_EXTRA[key], key)
        if key in request:
            raise Invalid("is set in [request] too: keep one", key)
        check = REQUEST_FIELDS.get(key)
        try:
            checked[key] = check(value) if check else value
        except Invalid as e:
            raise Invalid(str(e), f"{key}.{e.subkey}" if e.subkey else key) from None
    return checked


def thinking_on(request: Mapping[str, Any]) -> bool:
    """Extended thinking is asked for (enabled with a budget, or adaptive)."""
    thinking = request.get("thinking")
    return isinstance(thinking, Mapping) and thinking.get("type") in ("enabled", "adaptive")


def across_fields(request: Mapping[str, Any]) -> tuple[str, str] | None:
    """The first rule tying two fields together that `request` breaks: (key, message)."""
    thinking = request.get("thinking")
    if not thinking:  # every rule here is about thinking: none asked for, none broken
        return None
    budget = thinking.get("budget_tokens")
    most = request.get("max_tokens")
    if isinstance(budget, int) and isinstance(most, int) and budget >= most:
        return "thinking.budget_tokens", f"must be < max_tokens ({budget} >= {most})"
    return _with_thinking(request) if thinking_on(request) else None


def _with_thinking(request: Mapping[str, Any]) -> tuple[str, str] | None:
    """What the API refuses (400, every row, each one paid for in time and retries) beside
    thinking: a temperature other than 1, any top_k, a top_p below 0.95, forced tool use."""
    temperature, top_p = request.get("temperature"), request.get("top_p")
    choice = (request.get("tool_choice") or {}).get("type")
    if temperature is not None and temperature != 1:
        return "temperature", f"must be 1 (or left out) with thinking on (got {temperature})"
    if request.get("top_k") is not None:
        return "top_k", f"cannot be set with thinking on (got {request['top_k']}): remove it"
    if top_p is not None and top_p < THINKING_TOP_P:
        return "top_p", f"must be >= {THINKING_TOP_P} (or left out) with thinking on (got {top_p})"
    if choice in ("any", "tool"):
        return "tool_choice", (
            f'type = "{choice}" forces tool use, which thinking forbids: use "auto" or "none"'
        )
    return None


def cell_value(field: str, value: Any) -> Any:
    """A per-row override cell as its field's value, by the field's own check: CSV cells
    are text ("128"), Parquet cells keep their type. Raises Invalid."""
    if isinstance(value, bool) and field != "system":
        raise Invalid(f"must be {'a string' if field == 'model' else 'a number'}")
    if field in ("max_tokens", "top_k"):
        try:
            as_float = float(value)
        except (TypeError, ValueError, OverflowError):
            raise Invalid("must be an integer") from None
        if not as_float.is_integer():  # also NaN and infinity
            raise Invalid("must be an integer")
        return REQUEST_FIELDS[field](int(as_float))
    if field in ("temperature", "top_p"):
        try:
            as_float = float(value)
        except (TypeError, ValueError, OverflowError):
            raise Invalid("must be a number") from None
        return REQUEST_FIELDS[field](as_float)
    return REQUEST_FIELDS[field](str(value))
