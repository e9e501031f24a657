"""The OpenAI-style `POST /v1/chat/completions` for the same models (`format = "openai"`).

Requests are rendered as Messages API bodies and translated here; answers are mapped back
into the same Answer, so every output column, report and extraction works for both. Usage:
prompt_tokens less the cache reads and writes is input (the cache counts under every name
the gateways use: usage_fields), completion_tokens are output. finish_reason is mapped onto
the Messages API's stop_reason names.
"""

from __future__ import annotations

from typing import Any

import orjson

from pipeline.providers.anthropic import string_or_none
from pipeline.providers.base import Answer, MalformedAnswer, Usage
from pipeline.providers.usage_fields import cache_counts, token_count, warn_unknown

CHAT_PATH = "/v1/chat/completions"
STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}
__all__ = ["body", "endpoint", "parse_answer", "streamed"]


def endpoint(base_url: str) -> str:
    return base_url.rstrip("/") + CHAT_PATH


def streamed(messages_body: dict[str, Any]) -> bool:
    """chat/completions answers are never streamed here."""
    return False


def body(messages_body: dict[str, Any]) -> dict[str, Any]:
    """A chat/completions body from a Messages API body (fields it lacks are dropped)."""
    out: dict[str, Any] = {
        "model": messages_body["model"],
        "max_tokens": messages_body["max_tokens"],
    }
    system = messages_body.get("system")
    if isinstance(system, list):  # text parts, cache_control kept for gateways that use it
        system = [
            {k: v for k, v in block.items() if k in ("type", "text", "cache_control")}
            for block in system
        ]
    out["messages"] = ([{"role": "system", "content": system}] if system else []) + [
        {"role": m["role"], "content": m["content"]} for m in messages_body["messages"]
    ]
    for name in ("temperature", "top_p"):
        if name in messages_body:
            out[name] = messages_body[name]
    if messages_body.get("stop_sequences"):
        out["stop"] = list(messages_body["stop_sequences"])
    if user := (messages_body.get("metadata") or {}).get("user_id"):
        out["user"] = user
    if messages_body.get("tools"):
        out["tools"] = [
            {
                "type": "function",
                "function": {
                    "name": t["name"],
                    "description": t.get("description", ""),
                    "parameters": t.get("input_schema") or {"type": "object"},
                },
            }
            for t in messages_body["tools"]
        ]
    if choice := messages_body.get("tool_choice"):
        out["tool_choice"] = _tool_choice(choice)
    return out


def _tool_choice(choice: dict[str, Any]) -> Any:
    kind = choice.get("type")
    if kind == "tool":
        return {"type": "function", "function": {"name": choice["name"]}}
    return {"any": "required", "none": "none"}.get(str(kind), "auto")


def parse_answer(raw: bytes) -> Answer:
    try:
        message = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise MalformedAnswer(f"answer is not JSON ({e})") from None
    choices = message.get("choices") if isinstance(message, dict) else None
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise MalformedAnswer("answer has no `choices`")
    first = choices[0]
    found = first.get("message")
    reply: dict[str, Any] = found if isinstance(found, dict) else {}
    content = _blocks(reply)
    finish = first.get("finish_reason")
    text = reply["content"] if isinstance(reply.get("content"), str) else ""
    return Answer(
        text=text,
        content_json=orjson.dumps(content).decode(),
        stop_reason=STOP_REASONS.get(finish, finish) if isinstance(finish, str) else None,
        model=string_or_none(message.get("model")),
        usage=_usage(message.get("usage")),
        content=content,
    )


def _blocks(reply: dict[str, Any]) -> list[dict[str, Any]]:
    """The reply as Messages API content blocks (text, then tool_use), for extraction."""
    blocks: list[dict[str, Any]] = []
    if isinstance(reply.get("content"), str) and reply["content"]:
        blocks.append({"type": "text", "text": reply["content"]})
    for call in reply.get("tool_calls") or []:
        function = call.get("function") or {}
        try:
            arguments = orjson.loads(function.get("arguments") or "{}")
        except orjson.JSONDecodeError:
            arguments = function.get("arguments")  # kept as given: extraction says invalid
        blocks.append(
            {
                "type": "tool_use",
                "id": call.get("id"),
                "name": function.get("name"),
                "input": arguments,
            }
        )
    return blocks


def _usage(raw: Any) -> Usage | None:
    """Usage in the Messages API's terms; None when the answer does not say (cost unknown).

    prompt_tokens counts every input token, cached or not (OpenAI's convention, and
    LiteLLM's: input + cache writes + cache reads), so the cache counts come out of it.
    Some LiteLLM versions left the writes out of prompt_tokens: when reads and writes
    together exceed it, the writes were not in it."""
    if not isinstance(raw, dict):
        return None
    prompt = token_count(raw, "prompt_tokens")
    completion = token_count(raw, "completion_tokens")
    cache = cache_counts(raw)  # every count checked, used or not
    warn_unknown(raw)
    if prompt is None or completion is None:
        return None
    reads = cache.reads or 0
    writes = cache.written
    if reads > prompt:  # cached tokens are part of the prompt's: more is impossible
        raise MalformedAnswer(f"usage: cache reads ({reads}) exceed prompt_tokens ({prompt})")
    inside = writes if reads + writes <= prompt else 0
    return Usage(
        input_tokens=prompt - reads - inside,
        output_tokens=completion,
        cache_creation_input_tokens=writes,
        cache_read_input_tokens=reads,
        cache_creation_5m_tokens=cache.five,
        cache_creation_1h_tokens=cache.hour,
    )
