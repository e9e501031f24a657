"""Streamed Messages API answers (server-sent events), assembled into the same Answer.

Long answers are streamed (a request whose max_tokens could outlast a 10-minute
non-streaming call). The whole stream is read, then replayed here: message_start,
content_block_start / _delta / _stop, message_delta (stop reason, cumulative usage),
message_stop. `ping` and unknown events are ignored. An `error` event, which can arrive
after HTTP 200, raises StreamBroken with the HTTP status that error type stands for, so
the retry policy treats it like that status; a stream cut short is a dropped connection.
Usage is parsed as for a whole answer: none at all is None (cost unknown), an impossible
count is a MalformedAnswer.
"""

from __future__ import annotations

from typing import Any

import orjson

from pipeline.errors import StreamBroken as StreamBroken
from pipeline.providers.anthropic import answer_from
from pipeline.providers.base import Answer, MalformedAnswer

STATUS_OF_ERROR = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}


def events(raw: bytes) -> list[tuple[str, Any]]:
    """(event name, decoded data) of every complete event in the stream.

    Only a tail the connection cut off may fail to parse (the missing message_stop then
    reports a dropped connection). An event that does not parse anywhere else is a
    corrupted answer: words would be missing from it, so it is malformed, never ok.
    """
    found = []
    chunks = raw.replace(b"\r\n", b"\n").split(b"\n\n")
    for number, chunk in enumerate(chunks, 1):
        name, data = "message", []
        for line in chunk.split(b"\n"):
            if line.startswith(b"event:"):
                name = line[6:].strip().decode("utf-8", "replace")
            elif line.startswith(b"data:"):
                data.append(line[5:].strip())
        if not data:
            continue
        try:
            found.append((name, orjson.loads(b"\n".join(data))))
        except orjson.JSONDecodeError:
            if number == len(chunks):  # not followed by a blank line: cut off mid-event
                continue
            raise MalformedAnswer(
                f"stream event {number} ({name}) does not parse: the answer is corrupted"
            ) from None
    return found


def parse_stream(raw: bytes) -> Answer:
    message: dict[str, Any] = {}
    blocks: dict[int, dict[str, Any]] = {}
    partial_json: dict[int, list[str]] = {}
    finished = False
    for name, data in events(raw):
        kind = data.get("type", name) if isinstance(data, dict) else name
        if kind == "error":
            error = data.get("error") if isinstance(data, dict) else None
            error = error if isinstance(error, dict) else {"message": str(error or data)}
            error_type = str(error.get("type") or "api_error")
            raise StreamBroken(
                STATUS_OF_ERROR.get(error_type, 500),
                error_type,
                f"stream interrupted: {error.get('message') or error_type}",
            )
        if kind == "message_start":
            message = dict(data.get("message") or {})
        elif kind == "content_block_start":
            blocks[data["index"]] = dict(data.get("content_block") or {})
        elif kind == "content_block_delta":
            _apply(
                blocks.setdefault(data["index"], {}),
                data.get("delta") or {},
                partial_json.setdefault(data["index"], []),
            )
        elif kind == "content_block_stop" and partial_json.get(data["index"]):
            blocks[data["index"]]["input"] = _tool_input("".join(partial_json[data["index"]]))
        elif kind == "message_delta":
            message.update({k: v for k, v in (data.get("delta") or {}).items()})
            message["usage"] = _later_usage(message.get("usage"), data.get("usage"))
        elif kind == "message_stop":
            finished = True
    if not finished:
        raise StreamBroken(None, "connection_error", "the stream ended before message_stop")
    return answer_from(message, [blocks[i] for i in sorted(blocks)])


def _later_usage(earlier: Any, later: Any) -> Any:
    """message_delta's cumulative usage over message_start's: a null count adds nothing,
    and usage that is not an object is no usage (parse_usage then says None)."""
    if not isinstance(later, dict):
        return earlier
    base = earlier if isinstance(earlier, dict) else {}
    return {**base, **{k: v for k, v in later.items() if v is not None}}


def _tool_input(text: str) -> Any:
    """A streamed tool call's input; cut short (max_tokens), it stays text: the extraction
    then calls the label invalid instead of the whole answer being lost."""
    try:
        return orjson.loads(text) if text else {}
    except orjson.JSONDecodeError:
        return text


def _apply(block: dict[str, Any], delta: dict[str, Any], pieces: list[str]) -> None:
    kind = delta.get("type")
    if kind == "text_delta":
        block["text"] = block.get("text", "") + delta.get("text", "")
    elif kind == "input_json_delta":
        pieces.append(delta.get("partial_json", ""))
    elif kind == "thinking_delta":
        block["thinking"] = block.get("thinking", "") + delta.get("thinking", "")
    elif kind == "signature_delta":
        block["signature"] = delta.get("signature", "")
    elif kind == "citations_delta":
        block.setdefault("citations", []).append(delta.get("citation"))
