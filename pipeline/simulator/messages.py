"""The Messages API dialect: validate a request like the real API, shape answers and errors."""

from __future__ import annotations

from typing import Any

import orjson

from pipeline.simulator.answers import Answer, Directives, Prompt, ToolSpec
from pipeline.simulator.prefixes import (
    cache_prefixes,
    is_marked,
    message_blocks,
    system_blocks,
    tool_blocks,
)
from pipeline.simulator.protocol import (
    ApiError,
    CachePrefix,
    Dialect,
    ParsedRequest,
    Usage,
    content_pieces,
    count_input_tokens,
)

ROLES = ("user", "assistant")
MIN_THINKING_BUDGET = 1024


def parse_request(body: object) -> ParsedRequest:
    """A ParsedRequest, or ApiError (400 / 404) with the message the real API would give."""
    if not isinstance(body, dict):
        raise ApiError(400, "request body must be a JSON object")
    for name in ("model", "max_tokens", "messages"):
        if name not in body:
            raise ApiError(400, f"{name}: Field required")
    model = body["model"]
    if not isinstance(model, str) or not model:
        raise ApiError(400, "model: Input should be a valid, non-empty string")
    max_tokens = _max_tokens(body["max_tokens"])
    messages = _messages(body["messages"])
    check_temperature(body.get("temperature"), 1.0)
    system = _system_blocks(body.get("system"))
    tools = _tools(body.get("tools"))
    forced_tool = _forced_tool(body.get("tool_choice"), tools)
    thinking_budget = _thinking_budget(body, max_tokens, forced_tool)
    if not model.startswith("claude-"):
        raise ApiError(404, f"model: {model}")
    system_texts = tuple(text for text, _ in system)
    prompt = Prompt(
        model=model,
        system=system_texts,
        messages=tuple((role, "\n".join(pieces)) for role, pieces in messages),
        max_tokens=max_tokens,
        last_user_text=next(("\n".join(p) for r, p in reversed(messages) if r == "user"), ""),
        stop_sequences=_stop_sequences(body.get("stop_sequences")),
        tools=tools,
        forced_tool=forced_tool,
        temperature=temperature_of(body),
        thinking_budget=thinking_budget,
    )
    tools_json = orjson.dumps(body["tools"]).decode() if tools else ""
    return ParsedRequest(
        prompt=prompt,
        input_tokens=count_input_tokens(system_texts, [p for _, p in messages], tools_json),
        cache_prefixes=_cache_prefixes(model, body, system),
        stream=body.get("stream") is True,
        service_tier="batch" if body.get("service_tier") == "batch" else "standard",
    )


def _cache_prefixes(
    model: str, body: dict[str, Any], system: list[tuple[str, object]]
) -> tuple[CachePrefix, ...]:
    """The request's breakpoints over tools -> system -> messages (checked already)."""
    tools, messages, top_level = body.get("tools"), body["messages"], body.get("cache_control")
    if not is_marked(tools, body.get("system"), messages, top_level):
        return ()
    blocks = [*tool_blocks(tools or ()), *system_blocks(system), *message_blocks(messages)]
    return cache_prefixes(model, blocks, top_level)


def _max_tokens(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ApiError(400, "max_tokens: Input should be a valid integer")
    if value < 1:
        raise ApiError(400, "max_tokens: Input should be greater than or equal to 1")
    return value


def _messages(value: object) -> list[tuple[str, list[str]]]:
    if not isinstance(value, list):
        raise ApiError(400, "messages: Input should be a valid list")
    if not value:
        raise ApiError(400, "messages: at least one message is required")
    messages: list[tuple[str, list[str]]] = []
    for index, message in enumerate(value):
        role = message.get("role") if isinstance(message, dict) else None
        if role not in ROLES:
            raise ApiError(400, f"messages.{index}.role: Input should be 'user' or 'assistant'")
        content = message.get("content")
        if not isinstance(content, str | list):
            raise ApiError(400, f"messages.{index}.content: Input should be a string or a list")
        _refuse_blank_blocks(content, f"messages.{index}.content")
        messages.append((role, content_pieces(content)))
    if messages[0][0] != "user":
        raise ApiError(400, 'messages: first message must use the "user" role')
    return messages


def check_temperature(value: object, maximum: float) -> None:
    if value is None:
        return
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise ApiError(400, "temperature: Input should be a valid number")
    if not 0.0 <= value <= maximum:
        raise ApiError(400, f"temperature: Input should be between 0 and {maximum:g}")


def temperature_of(body: dict[str, Any]) -> float:
    """The request's temperature (checked already); unset is 0 in the simulator, not the
    API's 1, so that runs which never ask for variety stay reproducible."""
    value = body.get("temperature")
    return float(value) if isinstance(value, int | float) else 0.0


def _system_blocks(value: object) -> list[tuple[str, object]]:
    """(text, cache_control) for each system block; a string is one unmarked block."""
    if value is None:
        return []
    if isinstance(value, str):
        return [(value, None)]
    if not isinstance(value, list):
        raise ApiError(400, "system: Input should be a string or a list of text blocks")
    blocks: list[tuple[str, object]] = []
    for index, block in enumerate(value):
        text = block.get("text") if isinstance(block, dict) else None
        if not isinstance(block, dict) or block.get("type") != "text" or not isinstance(text, str):
            raise ApiError(400, f"system.{index}: Input should be a text block")
        blocks.append((text, block.get("cache_control")))
    _refuse_blank_blocks(value, "system")
    return blocks


def _refuse_blank_blocks(content: object, where: str) -> None:
    """As the API: a text block of whitespace only is refused (a plain string is not)."""
    if not isinstance(content, list):
        return
    for index, block in enumerate(content):
        if not isinstance(block, dict) or block.get("type") != "text":
            continue
        text = block.get("text")
        if isinstance(text, str) and not text.strip():
            raise ApiError(
                400, f"{where}.{index}: text content blocks must contain non-whitespace text"
            )


def _stop_sequences(value: object) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
        raise ApiError(400, "stop_sequences: Input should be a list of strings")
    return tuple(value)


def _tools(value: object) -> tuple[ToolSpec, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ApiError(400, "tools: Input should be a valid list")
    tools: list[ToolSpec] = []
    for index, tool in enumerate(value):
        name = tool.get("name") if isinstance(tool, dict) else None
        if not isinstance(tool, dict) or not isinstance(name, str) or not name:
            raise ApiError(400, f"tools.{index}.name: Field required")
        schema = tool.get("input_schema")
        description = tool.get("description")
        tools.append(
            ToolSpec(
                name=name,
                description=description if isinstance(description, str) else "",
                input_schema=schema if isinstance(schema, dict) else {},
            )
        )
    return tuple(tools)


def _forced_tool(choice: object, tools: tuple[ToolSpec, ...]) -> str | None:
    """The tool the answer must call: named by {type: tool}, the first one for {type: any}."""
    kind = choice.get("type") if isinstance(choice, dict) else None
    if kind not in ("any", "tool"):
        return None
    if not tools:
        raise ApiError(400, "tool_choice may only be specified while providing tools")
    if kind == "any":
        return tools[0].name
    name = choice.get("name") if isinstance(choice, dict) else None
    if name not in {tool.name for tool in tools}:
        raise ApiError(400, f"tool_choice.name: tool {name!r} not found in tools")
    return str(name)


def _thinking_budget(body: dict[str, Any], max_tokens: int, forced_tool: str | None) -> int | None:
    thinking = body.get("thinking")
    if not isinstance(thinking, dict) or thinking.get("type") != "enabled":
        return None
    budget = thinking.get("budget_tokens")
    if not isinstance(budget, int) or isinstance(budget, bool) or budget < MIN_THINKING_BUDGET:
        raise ApiError(
            400, "thinking.enabled.budget_tokens: Input should be greater than or equal to 1024"
        )
    if budget >= max_tokens:
        raise ApiError(400, "`max_tokens` must be greater than `thinking.budget_tokens`")
    # Two rejections the real API is known to make with thinking on.
    if body.get("temperature") not in (None, 1):
        raise ApiError(400, "`temperature` may only be set to 1 when thinking is enabled")
    if forced_tool is not None:
        raise ApiError(400, "Thinking may not be enabled when tool_choice forces tool use")
    return budget


def success_body(
    message_id: str, prompt: Prompt, answer: Answer, usage: Usage, directives: Directives
) -> dict[str, Any]:
    body: dict[str, Any] = message_shell(message_id, prompt.model, usage)
    body["content"] = list(answer.blocks)
    body["stop_reason"] = answer.stop_reason
    body["stop_sequence"] = answer.stop_sequence
    if directives.unknown_block:
        body["sim_future_field"] = {"note": "a field this client has never seen"}
    return body


def message_shell(message_id: str, model: str, usage: Usage) -> dict[str, Any]:
    """A message with no content yet: the start of every answer and of every stream."""
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": usage.anthropic(),
    }


def error_body(error: ApiError, request_id: str) -> dict[str, Any]:
    if error.gateway:
        return {
            "error": {
                "type": error.error_type,
                "code": error.code,
                "message": error.message,
                "request_id": request_id,
            }
        }
    return {
        "type": "error",
        "error": {"type": error.error_type, "message": error.message},
        "request_id": request_id,
    }


MESSAGES = Dialect(
    endpoint="/v1/messages",
    id_prefix="msg_sim_",
    parse=parse_request,
    success_body=success_body,
    error_body=error_body,
)
