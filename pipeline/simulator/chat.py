"""The OpenAI-style chat completions dialect, answered by the same generator."""

from __future__ import annotations

import time
from typing import Any

import orjson

from pipeline.simulator.answers import Answer, Directives, Prompt, ToolSpec
from pipeline.simulator.messages import check_temperature, temperature_of
from pipeline.simulator.prefixes import cache_prefixes, system_blocks, tool_blocks
from pipeline.simulator.protocol import (
    ApiError,
    CachePrefix,
    Dialect,
    ParsedRequest,
    Usage,
    content_pieces,
    count_input_tokens,
)

DEFAULT_MAX_TOKENS = 4096
CHAT_ROLES = ("system", "developer", "user", "assistant", "tool")
FINISH_REASONS = {"max_tokens": "length", "tool_use": "tool_calls"}
ERROR_CODES = {
    401: "invalid_api_key",
    404: "model_not_found",
    429: "rate_limit_exceeded",
    500: "server_error",
    503: "service_unavailable",
    529: "overloaded",
}


def parse_request(body: object) -> ParsedRequest:
    """A ParsedRequest, or ApiError (400 / 404)."""
    if not isinstance(body, dict):
        raise ApiError(400, "request body must be a JSON object")
    for name in ("model", "messages"):
        if name not in body:
            raise ApiError(400, f"{name}: Field required")
    model = body["model"]
    if not isinstance(model, str) or not model:
        raise ApiError(400, "model: Input should be a valid, non-empty string")
    max_tokens = _max_tokens(body)
    check_temperature(body.get("temperature"), 2.0)
    if body.get("stream") is True:
        raise ApiError(400, "stream: not supported by the simulator's chat completions endpoint")
    system, messages = _split_messages(body["messages"])
    tools = _tools(body.get("tools"))
    forced_tool = _forced_tool(body.get("tool_choice"), tools)
    if not model.startswith("claude-"):
        raise ApiError(404, f"The model `{model}` does not exist")
    system_texts = tuple(text for text, _ in system)
    prompt = Prompt(
        model=model,
        system=system_texts,
        messages=tuple((role, "\n".join(pieces)) for role, pieces in messages),
        max_tokens=max_tokens,
        last_user_text=next("\n".join(p) for r, p in reversed(messages) if r == "user"),
        stop_sequences=_stop(body.get("stop")),
        tools=tools,
        forced_tool=forced_tool,
        temperature=temperature_of(body),
    )
    tools_json = orjson.dumps(body["tools"]).decode() if tools else ""
    return ParsedRequest(
        prompt=prompt,
        input_tokens=count_input_tokens(system_texts, [p for _, p in messages], tools_json),
        cache_prefixes=_cache_prefixes(model, body.get("tools"), system),
        service_tier="batch" if body.get("service_tier") == "batch" else "standard",
    )


def _cache_prefixes(
    model: str, tools: object, system: list[tuple[str, object]]
) -> tuple[CachePrefix, ...]:
    """Breakpoints come only from system parts with cache_control (the chat format has no
    notion of its own; gateways pass these on): the prefix is the tools, then the system."""
    if not any(isinstance(control, dict) for _, control in system):
        return ()
    tool_list = tools if isinstance(tools, list) else []
    return cache_prefixes(model, [*tool_blocks(tool_list), *system_blocks(system)])


def _max_tokens(body: dict[str, Any]) -> int:
    value = body.get("max_completion_tokens", body.get("max_tokens", DEFAULT_MAX_TOKENS))
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ApiError(400, "max_tokens: Input should be an integer greater than or equal to 1")
    return value


def _split_messages(
    value: object,
) -> tuple[list[tuple[str, object]], list[tuple[str, list[str]]]]:
    """System blocks (text, cache_control) and (role, text pieces) of the conversation."""
    if not isinstance(value, list) or not value:
        raise ApiError(400, "messages: at least one message is required")
    system: list[tuple[str, object]] = []
    messages: list[tuple[str, list[str]]] = []
    for index, message in enumerate(value):
        role = message.get("role") if isinstance(message, dict) else None
        if not isinstance(message, dict) or role not in CHAT_ROLES:
            raise ApiError(400, f"messages.{index}.role: unknown role {role!r}")
        content = message.get("content")
        if role in ("system", "developer"):
            system.extend(_system_parts(content))
            continue
        pieces = content_pieces(content)
        for call in message.get("tool_calls") or []:
            function = call.get("function") if isinstance(call, dict) else None
            if isinstance(function, dict) and isinstance(function.get("arguments"), str):
                pieces.append(function["arguments"])
        messages.append(("user" if role == "tool" else role, pieces))
    if not any(role == "user" for role, _ in messages):
        raise ApiError(400, "messages: at least one user message is required")
    return system, messages


def _system_parts(content: object) -> list[tuple[str, object]]:
    if isinstance(content, str):
        return [(content, None)]
    if not isinstance(content, list):
        return []
    return [
        (part["text"], part.get("cache_control"))
        for part in content
        if isinstance(part, dict) and isinstance(part.get("text"), str)
    ]


def _tools(value: object) -> tuple[ToolSpec, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ApiError(400, "tools: Input should be a valid list")
    tools: list[ToolSpec] = []
    for index, tool in enumerate(value):
        function = tool.get("function") if isinstance(tool, dict) else None
        name = function.get("name") if isinstance(function, dict) else None
        if not isinstance(function, dict) or not isinstance(name, str) or not name:
            raise ApiError(400, f"tools.{index}.function.name: Field required")
        parameters = function.get("parameters")
        description = function.get("description")
        tools.append(
            ToolSpec(
                name=name,
                description=description if isinstance(description, str) else "",
                input_schema=parameters if isinstance(parameters, dict) else {},
            )
        )
    return tuple(tools)


def _forced_tool(choice: object, tools: tuple[ToolSpec, ...]) -> str | None:
    """The function to call: {type: function, function: {name}}, or the first for "required"."""
    if choice == "required":
        if not tools:
            raise ApiError(400, "tool_choice 'required' needs tools")
        return tools[0].name
    function = choice.get("function") if isinstance(choice, dict) else None
    if not isinstance(function, dict):
        return None
    name = function.get("name")
    if name not in {tool.name for tool in tools}:
        raise ApiError(400, f"tool_choice.function.name: tool {name!r} not found in tools")
    return str(name)


def _stop(value: object) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
        raise ApiError(400, "stop: Input should be a string or a list of strings")
    return tuple(value)


def success_body(
    message_id: str, prompt: Prompt, answer: Answer, usage: Usage, directives: Directives
) -> dict[str, Any]:
    prompt_tokens = usage.rate_limited_input + usage.cache_read_input_tokens
    finish_reason = FINISH_REASONS.get(answer.stop_reason, "stop")
    body: dict[str, Any] = {
        "id": message_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": prompt.model,
        "choices": [{"index": 0, "message": _message(answer), "finish_reason": finish_reason}],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": usage.output_tokens,
            "total_tokens": prompt_tokens + usage.output_tokens,
            "prompt_tokens_details": {"cached_tokens": usage.cache_read_input_tokens},
        },
    }
    if directives.unknown_block:
        body["sim_future_field"] = {"note": "a field this client has never seen"}
    return body


def _message(answer: Answer) -> dict[str, Any]:
    """The assistant message: text, or tool calls with JSON-string arguments."""
    text = "".join(block["text"] for block in answer.blocks if block["type"] == "text")
    tool_calls = [
        {
            "id": "call_" + block["id"].removeprefix("toolu_"),
            "type": "function",
            "function": {"name": block["name"], "arguments": orjson.dumps(block["input"]).decode()},
        }
        for block in answer.blocks
        if block["type"] == "tool_use"
    ]
    if not tool_calls:
        return {"role": "assistant", "content": text}
    # OpenAI sends null content beside tool calls.
    return {"role": "assistant", "content": text or None, "tool_calls": tool_calls}


def error_body(error: ApiError, request_id: str) -> dict[str, Any]:
    return {
        "error": {
            "message": error.message,
            "type": error.error_type,
            "param": None,
            "code": error.code or ERROR_CODES.get(error.status),
        }
    }


CHAT_COMPLETIONS = Dialect(
    endpoint="/v1/chat/completions",
    id_prefix="chatcmpl-sim",
    parse=parse_request,
    success_body=success_body,
    error_body=error_body,
    header_style="openai",
)
