"""`HttpxTransport`: the transport seam (send/transport.py) over any httpx client or
transport: proxies, HTTP/2, or `httpx.MockTransport` in unit tests. httpx's exceptions
are translated here, where they enter, into the same `ConnectFailed` / `RequestTimedOut`
as aiohttp's, and the server is held to the same bounds (no redirect followed, a deadline
for the whole attempt, the answer read up to its cap)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import httpx

from pipeline.send.transport import (
    MAX_ANSWER_BYTES,
    ErrorKinds,
    RawResponse,
    check_declared,
    failed,
    read_capped,
    timed_out,
)

# as transport.UNSENT: failures before the request could leave (never billed)
UNSENT = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.PoolTimeout,
    httpx.WriteError,
    httpx.WriteTimeout,
    httpx.UnsupportedProtocol,
)
KINDS: ErrorKinds = ((httpx.ConnectTimeout,), UNSENT, (httpx.TimeoutException,))


class HttpxTransport:
    """The same seam over httpx: pass a client, or a transport such as MockTransport.

    The bound on silence is the client's own timeout; `deadline_s` bounds the whole attempt
    (None: no deadline unless `post` is given one).
    """

    def __init__(
        self,
        client: httpx.AsyncClient | None = None,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        deadline_s: float | None = None,
        max_answer_bytes: int = MAX_ANSWER_BYTES,
    ) -> None:
        self._client = client or httpx.AsyncClient(transport=transport)
        self._deadline_s = deadline_s
        self._cap = max_answer_bytes

    async def post(
        self, url: str, headers: Mapping[str, str], body: bytes, *, deadline_s: float | None = None
    ) -> RawResponse:
        deadline_s = deadline_s or self._deadline_s
        try:
            async with asyncio.timeout(deadline_s):
                return await self._exchange(url, headers, body)
        except (TimeoutError, httpx.TimeoutException) as e:
            raise timed_out(url, deadline_s, e, KINDS) from e
        except httpx.RequestError as e:  # transport errors, and a body that does not decode
            raise failed(url, e, UNSENT) from e

    async def _exchange(self, url: str, headers: Mapping[str, str], body: bytes) -> RawResponse:
        async with self._client.stream(
            "POST", url, content=body, headers=dict(headers), follow_redirects=False
        ) as response:
            names = {k.lower(): v for k, v in response.headers.items()}
            check_declared(response.status_code, names, self._cap)
            data = await read_capped(response.status_code, response.aiter_bytes(), self._cap)
            return RawResponse(response.status_code, names, data)

    async def aclose(self) -> None:
        await self._client.aclose()
