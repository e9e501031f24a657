"""How answers go on the wire: headers by dialect, JSON bodies, reason phrases, SSE streams."""

from __future__ import annotations

import orjson
from aiohttp import web

from pipeline.simulator.buckets import RateLimiter
from pipeline.simulator.protocol import ApiError, Dialect

# aiohttp knows reason phrases only from http.HTTPStatus and writes "HTTP/1.1 529 " for the
# provider's own status; "Overloaded" is the message its 529 body carries.
REASONS = {529: "Overloaded"}


def headers_for(
    limiter: RateLimiter, dialect: Dialect, request_id: str, *, rate_limits: bool = True
) -> dict[str, str]:
    """The request id and (if `rate_limits` and any bucket is configured) the rate-limit
    headers, each in the dialect's own names."""
    headers: dict[str, str] = {}
    if rate_limits and limiter.buckets:
        openai = dialect.header_style == "openai"
        headers = limiter.openai_headers() if openai else limiter.headers()
    headers["request-id"] = request_id
    if dialect.header_style == "openai":
        headers["x-request-id"] = request_id  # what the openai SDK reads as the request id
    return headers


def error_response(
    limiter: RateLimiter, dialect: Dialect, error: ApiError, request_id: str
) -> web.Response:
    headers = headers_for(limiter, dialect, request_id, rate_limits=error.rate_limit_headers)
    if error.retry_after is not None:
        headers["retry-after"] = error.retry_after
    return json_response(error.status, dialect.error_body(error, request_id), headers)


def json_response(status: int, body: object, headers: dict[str, str]) -> web.Response:
    return web.Response(
        body=orjson.dumps(body),
        status=status,
        reason=REASONS.get(status),
        headers=headers,
        content_type="application/json",
    )


async def send_stream(
    request: web.Request, headers: dict[str, str], frames: tuple[bytes, ...]
) -> web.StreamResponse:
    response = web.StreamResponse(status=200, headers=headers)
    response.content_type = "text/event-stream"
    response.headers["cache-control"] = "no-cache"
    await response.prepare(request)
    try:
        for frame in frames:
            await response.write(frame)
        await response.write_eof()
    except ConnectionError:
        pass  # the client left mid-stream; what it was sent is already billed
    return response
