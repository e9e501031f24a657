"""A hostile Messages API server, for tests: every way an answer can betray the client.

    python -m tests.hostile_server --mode MODE [--port 0]

prints one JSON line, {"port": P, "catcher": URL}, then serves `POST /v1/messages` on
127.0.0.1:P until killed. MODE is how every request is answered unless its prompt holds
`[[hostile:OTHER]]`, which picks another mode for that request (so one server process can
serve a table of cases). `GET /_ledger` says what was received: requests per mode, and
everything that reached the catcher, a second listener (on 127.0.0.2 where the system
allows it: another host) that the redirect modes point at.

Modes:
  ok                       a proper answer
  no-usage, null-usage,    an answer without usage / `usage: null` / `usage: "lots"` /
  string-usage,            usage with no output_tokens
  no-output-count
  string-count, negative,  impossible counts: "12", -5, 1e30, 2.5, true
  huge-count, float-count,
  bool-count
  echo, echo-error         the request's key echoed: in the model, stop_reason, text (also
                           as JSON \\u escapes), a tool's input and the request-id header;
                           or in a 400 error's type and message and request-id
  redirect-301/302/303/307/308   a redirect to the catcher, the key in its query string
  trickle                  a proper answer, one byte a second (--interval)
  huge, huge-declared,     a 50 MB answer: chunked / with content-length / gzip-compressed
  huge-gzip                to ~50 kB (its decompressed size is what counts)
  bill-drop                a proper answer, billed (request bytes / 4 in, 5 out), but the
                           connection is closed unanswered for --drop-share of requests
                           (spread evenly), after billing: `billed` in the ledger lists all
A request that asks for a stream gets the same answer as server-sent events (the echoed
key's text split across two deltas; trickle and usage modes as events too).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gzip
import json
import re
import sys
from collections import Counter
from typing import Any

import orjson
from aiohttp import web

HUGE_BYTES = 50 * 1000 * 1000
CHUNK = b"x" * 65536
DIRECTIVE = re.compile(r"\[\[hostile:([a-z0-9-]+)\]\]")
ESCAPED = "@@escaped-key@@"  # replaced, in the serialised body, by the key in \\u escapes

USAGE: dict[str, Any] = {
    "no-usage": ...,
    "null-usage": None,
    "string-usage": "lots",
    "no-output-count": {"input_tokens": 12},
    "string-count": {"input_tokens": "12", "output_tokens": 1},
    "negative": {"input_tokens": 12, "output_tokens": -5},
    "huge-count": {"input_tokens": 12, "output_tokens": 1e30},
    "float-count": {"input_tokens": 12, "output_tokens": 2.5},
    "bool-count": {"input_tokens": True, "output_tokens": 1},
}
PROPER_USAGE = {"input_tokens": 12, "output_tokens": 1}


def key_of(request: web.Request) -> str:
    auth = request.headers.get("authorization", "")
    return auth.removeprefix("Bearer ").strip() or request.headers.get("x-api-key", "")


def message(mode: str, key: str) -> dict[str, Any]:
    answer: dict[str, Any] = {
        "id": "msg_hostile",
        "type": "message",
        "role": "assistant",
        "model": "claude-haiku-4-5-20251001",
        "content": [{"type": "text", "text": "positive"}],
        "stop_reason": "end_turn",
        "usage": USAGE.get(mode, PROPER_USAGE),
    }
    if answer["usage"] is ...:
        del answer["usage"]
    if mode == "echo":
        answer["model"] = answer["stop_reason"] = key
        answer["content"] = [
            {"type": "text", "text": f"positive, and your key is {key} or {ESCAPED}"},
            {"type": "tool_use", "id": "toolu_1", "name": key, "input": {key: ESCAPED}},
        ]
    return answer


def escaped(key: str) -> bytes:
    return "".join(f"\\u{ord(c):04x}" for c in key).encode()


def as_json(answer: dict[str, Any], key: str) -> bytes:
    return orjson.dumps(answer).replace(ESCAPED.encode(), escaped(key))


def as_events(answer: dict[str, Any], key: str) -> bytes:
    """The answer as a Messages API stream; text split in two deltas (so is an echoed key)."""
    usage = answer.get("usage", ...)
    start = {k: v for k, v in answer.items() if k not in ("content", "usage", "stop_reason")}
    start["content"] = []
    if isinstance(usage, dict):
        start["usage"] = {k: v for k, v in usage.items() if k != "output_tokens"}
    events: list[dict[str, Any]] = [{"type": "message_start", "message": start}]
    for index, block in enumerate(answer["content"]):
        if block["type"] == "text":
            text = block["text"]
            events.append(
                {"type": "content_block_start", "index": index, "content_block": {"type": "text"}}
            )
            for piece in (text[: len(text) // 2], text[len(text) // 2 :]):
                delta = {"type": "text_delta", "text": piece}
                events.append({"type": "content_block_delta", "index": index, "delta": delta})
        else:
            events.append({"type": "content_block_start", "index": index, "content_block": block})
        events.append({"type": "content_block_stop", "index": index})
    delta: dict[str, Any] = {
        "type": "message_delta",
        "delta": {"stop_reason": answer["stop_reason"]},
    }
    if isinstance(usage, dict):  # the final count comes last, as the API sends it
        delta["usage"] = {k: v for k, v in usage.items() if k == "output_tokens"}
    elif usage is not ...:
        delta["usage"] = usage
    events += [delta, {"type": "message_stop"}]
    raw = b"".join(
        b"event: " + e["type"].encode() + b"\ndata: " + orjson.dumps(e) + b"\n\n" for e in events
    )
    # a key split across deltas is only the key once assembled: keep the raw bytes free of it
    return raw.replace(ESCAPED.encode(), escaped(key))


class Hostile:
    def __init__(self, mode: str, interval: float, drop_share: float = 0.0) -> None:
        self.mode, self.interval, self.catcher = mode, interval, ""
        self.drop_share = drop_share
        self.billed: list[dict[str, Any]] = []  # bill-drop: every request billed, in order
        self.requests: Counter[str] = Counter()
        self.caught: list[dict[str, Any]] = []
        self._gzipped: bytes | None = None

    def gzipped(self) -> bytes:
        if self._gzipped is None:
            self._gzipped = gzip.compress(huge_body(), compresslevel=1)
        return self._gzipped

    async def messages(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        body = orjson.loads(raw)
        found = DIRECTIVE.search(raw.decode("utf-8", "replace"))
        mode = found.group(1) if found else self.mode
        self.requests[mode] += 1
        key = key_of(request)
        if mode.startswith("redirect-"):
            where = f"{self.catcher}/v1/messages?key={key}"
            return web.Response(status=int(mode.split("-")[1]), headers={"location": where})
        if mode == "echo-error":
            error = {"type": key, "message": f"the key {key} is not welcome"}
            return web.json_response(
                {"type": "error", "error": error}, status=400, headers={"request-id": key}
            )
        if mode in ("huge", "huge-declared", "huge-gzip"):
            return await self.huge(request, mode)
        answer = message(mode, key)
        if mode == "bill-drop":
            answer["usage"], dropped = self.bill(len(raw))
            if dropped and request.transport is not None:
                request.transport.close()  # billed, and the answer never goes out
                return web.Response()
        streamed = bool(body.get("stream"))
        data = as_events(answer, key) if streamed else as_json(answer, key)
        kind = "text/event-stream" if streamed else "application/json"
        headers = {"content-type": kind, "request-id": f"req_{key}" if mode == "echo" else "req_1"}
        if mode == "trickle":
            return await self.trickle(request, data, headers)
        return web.Response(body=data, headers=headers)

    async def trickle(
        self, request: web.Request, data: bytes, headers: dict[str, str]
    ) -> web.StreamResponse:
        response = web.StreamResponse(headers=headers)
        await response.prepare(request)
        try:
            for i in range(len(data)):
                await response.write(data[i : i + 1])
                await asyncio.sleep(self.interval)
            await response.write_eof()
        except (ConnectionError, RuntimeError):
            pass  # the client gave up at its deadline, as it should
        return response

    async def huge(self, request: web.Request, mode: str) -> web.StreamResponse:
        headers = {"content-type": "application/json"}
        if mode == "huge-gzip":
            headers["content-encoding"] = "gzip"
            return web.Response(body=self.gzipped(), headers=headers)
        head, tail = huge_parts()
        if mode == "huge-declared":
            headers["content-length"] = str(len(head) + HUGE_BYTES + len(tail))
        response = web.StreamResponse(headers=headers)
        await response.prepare(request)
        try:
            await response.write(head)
            for start in range(0, HUGE_BYTES, len(CHUNK)):
                await response.write(CHUNK[: min(len(CHUNK), HUGE_BYTES - start)])
            await response.write(tail)
            await response.write_eof()
        except (ConnectionError, RuntimeError):
            pass  # the client hung up past its cap, as it should
        return response

    def bill(self, request_bytes: int) -> tuple[dict[str, Any], bool]:
        """Bill one request (fewer tokens than its bytes / 2: the client's worst case);
        True: its answer is to be dropped."""
        n = len(self.billed)
        dropped = int((n + 1) * self.drop_share) > int(n * self.drop_share)
        usage = {"input_tokens": request_bytes // 4 + 1, "output_tokens": 5}
        self.billed.append({**usage, "dropped": dropped})
        return usage, dropped

    async def catch(self, request: web.Request) -> web.Response:
        self.caught.append(
            {
                "method": request.method,
                "path": request.path_qs,
                "headers": {k.lower(): v for k, v in request.headers.items()},
                "body_bytes": len(await request.read()),
            }
        )
        answer = message("ok", "")
        answer["content"] = [{"type": "text", "text": "positive (from the catcher)"}]
        return web.json_response(answer)

    async def ledger(self, request: web.Request) -> web.Response:
        return web.json_response(
            {"requests": dict(self.requests), "caught": self.caught, "billed": self.billed}
        )


def huge_parts() -> tuple[bytes, bytes]:
    head = b'{"type": "message", "model": "claude-haiku-4-5-20251001", "stop_reason": "end_turn",'
    head += (
        b' "usage": {"input_tokens": 1, "output_tokens": 1}, "content": [{"type": "text", "text": "'
    )
    return head, b'"}]}'


def huge_body() -> bytes:
    head, tail = huge_parts()
    return head + b" " * HUGE_BYTES + tail


async def serve(mode: str, port: int, interval: float, drop_share: float = 0.0) -> None:
    hostile = Hostile(mode, interval, drop_share)
    catcher_app = web.Application()
    catcher_app.router.add_route("*", "/{tail:.*}", hostile.catch)
    catcher_runner = web.AppRunner(catcher_app, access_log=None)
    await catcher_runner.setup()
    for host in ("127.0.0.2", "127.0.0.1"):
        try:
            site = web.TCPSite(catcher_runner, host, 0)
            await site.start()
            break
        except OSError:
            continue
    catcher_port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    hostile.catcher = catcher = f"http://{host}:{catcher_port}"
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/v1/messages", hostile.messages)
    app.router.add_get("/_ledger", hostile.ledger)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    main = web.TCPSite(runner, "127.0.0.1", port)
    await main.start()
    bound = main._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    print(json.dumps({"port": bound, "catcher": catcher}), flush=True)
    await asyncio.Event().wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.hostile_server")
    parser.add_argument("--mode", default="ok")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--interval", type=float, default=1.0, help="trickle: s per byte")
    parser.add_argument("--drop-share", type=float, default=0.0, help="bill-drop: share dropped")
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):  # SIGINT: a quiet stop
        asyncio.run(serve(args.mode, args.port, args.interval, args.drop_share))
    return 0


if __name__ == "__main__":
    sys.exit(main())
