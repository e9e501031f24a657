"""Request bodies read under a per-route size limit (413 `request_too_large` past it).

aiohttp's `client_max_size` is one limit for the whole app, but the API has two: 32 MB on
/v1/messages and 256 MB on a batch create. Reading `request.content` ourselves bypasses the
app-wide limit, so each route passes its own. The declared Content-Length is checked before
any byte is read (a client announcing 300 MB is refused at once), and the bytes actually
received are counted as they arrive (a chunked body has no Content-Length, and a lying one
must not get more past us than the limit).
"""

from __future__ import annotations

from aiohttp import web

from pipeline.simulator.protocol import ApiError

MESSAGES_MAX_BYTES = 32 * 1024 * 1024  # the real API's limit on /v1/messages
BATCH_MAX_BYTES = 256 * 1024 * 1024  # ...and on a Message Batches create


def too_large(limit: int) -> ApiError:
    return ApiError(413, f"Request exceeds the maximum allowed size of {limit} bytes")


async def read_body(request: web.Request, limit: int) -> bytearray:
    """The whole body, or ApiError 413 once it is known to exceed `limit` bytes.

    A bytearray, not bytes: copying a 256 MB body once more only to make it immutable would
    double the peak memory of a large create; orjson and hashlib take either.
    """
    declared = request.content_length
    if declared is not None and declared > limit:
        raise too_large(limit)
    body = bytearray()
    async for chunk in request.content.iter_any():
        body += chunk
        if len(body) > limit:
            raise too_large(limit)
    return body
