"""Server-sent events for a streamed Messages API answer, planned up front as bytes."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import orjson

from pipeline.input.tokens import estimate_tokens
from pipeline.simulator.answers import Answer, Directives
from pipeline.simulator.messages import message_shell
from pipeline.simulator.protocol import Usage

DELTA_CHARS = 16  # characters a delta: a few tokens, like the real API's
OVERLOADED = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
DATA = b"\ndata: "
GARBLE = b"?#?"  # written over the `":"` after the first key: no JSON parser accepts it


@dataclass(frozen=True, slots=True)
class StreamPlan:
    frames: tuple[bytes, ...]
    output_tokens: int  # what the frames deliver (and what gets billed)
    partial: bool  # True if the stream ends in an injected error
    corrupted_event: int | None = None  # index of the event whose data is not JSON


def sse(event: str, data: dict[str, Any]) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def plan_stream(
    message_id: str, model: str, answer: Answer, usage: Usage, directives: Directives
) -> StreamPlan:
    """The event sequence of the real API; `stream_error_after=N` cuts it after N text deltas."""
    start = message_shell(message_id, model, usage.with_output(1))
    if directives.unknown_block:
        start["sim_future_field"] = {"note": "a field this client has never seen"}
    frames = [sse("message_start", {"type": "message_start", "message": start})]
    error_after = directives.stream_error_after
    sent_tokens = 0
    for index, block in enumerate(answer.blocks):
        start_event = {"type": "content_block_start", "index": index}
        frames.append(sse("content_block_start", start_event | {"content_block": _opening(block)}))
        if index == 0:
            frames.append(sse("ping", {"type": "ping"}))
        deltas, tokens = _deltas(block)
        if block["type"] == "text" and error_after is not None:
            sent = deltas[:error_after]
            frames.extend(_delta_frame(index, delta) for delta in sent)
            sent_text = "".join(delta["text"] for delta in sent)
            frames.append(sse("error", OVERLOADED))
            return StreamPlan(tuple(frames), sent_tokens + estimate_tokens(sent_text), True)
        frames.extend(_delta_frame(index, delta) for delta in deltas)
        frames.append(sse("content_block_stop", {"type": "content_block_stop", "index": index}))
        sent_tokens += tokens
    if error_after is not None:  # no text to cut: fail before the message completes
        frames.append(sse("error", OVERLOADED))
        return StreamPlan(tuple(frames), sent_tokens, True)
    if directives.unknown_block:
        frames.append(sse("future_event", {"type": "future_event", "detail": {"sim": True}}))
    frames.append(_message_delta(answer, usage))
    frames.append(sse("message_stop", {"type": "message_stop"}))
    return StreamPlan(tuple(frames), answer.output_tokens, False)


def _opening(block: dict[str, Any]) -> dict[str, Any]:
    """A block as content_block_start shows it: empty, to be filled by deltas."""
    kind = block["type"]
    if kind == "text":
        return {"type": "text", "text": ""}
    if kind == "thinking":
        return {"type": "thinking", "thinking": ""}
    if kind == "tool_use":
        return {"type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}
    return block


def _deltas(block: dict[str, Any]) -> tuple[list[dict[str, Any]], int]:
    """The deltas that fill a block, and the output tokens they carry."""
    kind = block["type"]
    if kind == "text":
        text = block["text"]
        deltas = [{"type": "text_delta", "text": piece} for piece in _pieces(text)]
        return deltas, estimate_tokens(text)
    if kind == "thinking":
        thought = block["thinking"]
        deltas = [{"type": "thinking_delta", "thinking": piece} for piece in _pieces(thought)]
        deltas.append({"type": "signature_delta", "signature": block["signature"]})
        return deltas, estimate_tokens(thought)
    if kind == "tool_use":
        arguments = orjson.dumps(block["input"]).decode()
        deltas = [{"type": "input_json_delta", "partial_json": p} for p in _pieces(arguments)]
        return deltas, estimate_tokens(arguments)
    return [], 0


def _pieces(text: str) -> list[str]:
    return [text[i : i + DELTA_CHARS] for i in range(0, len(text), DELTA_CHARS)]


def _delta_frame(index: int, delta: dict[str, Any]) -> bytes:
    event = {"type": "content_block_delta", "index": index, "delta": delta}
    return sse("content_block_delta", event)


def _message_delta(answer: Answer, usage: Usage) -> bytes:
    return sse(
        "message_delta",
        {
            "type": "message_delta",
            "delta": {"stop_reason": answer.stop_reason, "stop_sequence": answer.stop_sequence},
            "usage": {
                "input_tokens": usage.input_tokens,
                "cache_creation_input_tokens": usage.cache_creation_input_tokens,
                "cache_read_input_tokens": usage.cache_read_input_tokens,
                "output_tokens": answer.output_tokens,
            },
        },
    )


def corrupt_event(plan: StreamPlan, at: int | None = None) -> StreamPlan:
    """The same stream with one event's data garbled so that it is not JSON.

    `at` is the event's index (negative counts from the end); None picks the middle
    content_block_delta, so a client that skips the event visibly loses words. Never the
    last event: a torn last event is a cut-off stream, a different fault.
    """
    frames = plan.frames
    index = _middle_delta(frames) if at is None else at + len(frames) if at < 0 else at
    index = min(max(index, 0), len(frames) - 2)
    garbled = (*frames[:index], garble(frames[index]), *frames[index + 1 :])
    return replace(plan, frames=garbled, corrupted_event=index)


def _middle_delta(frames: tuple[bytes, ...]) -> int:
    """The middle text delta (else the middle delta of any kind, else the middle event)."""
    deltas = [i for i, f in enumerate(frames[:-1]) if f.startswith(b"event: content_block_delta")]
    text = [i for i in deltas if b'"type":"text_delta"' in frames[i]]
    chosen = text or deltas
    return chosen[len(chosen) // 2] if chosen else len(frames) // 2


def garble(frame: bytes) -> bytes:
    """The frame with three bytes of its data overwritten, after the first key, where every
    event's data reads `{"type":"...`: the key is then followed by a comma, never valid."""
    head, data = frame.split(DATA, 1)
    at = data.index(b'":"')
    return head + DATA + data[:at] + GARBLE + data[at + len(GARBLE) :]
