"""The HTTP seam: one `post` that returns status, lower-cased headers and body bytes.

`AiohttpTransport` is the default: on these 2-core machines aiohttp carries ~1,230
requests/s with 256 in flight at 200 ms latency where a plain `httpx.AsyncClient` manages
~50 (../shared/MEASURED.md). `HttpxTransport` wraps any httpx client or transport (proxies,
HTTP/2, or `httpx.MockTransport` in unit tests). Both translate their library's exceptions
into `ConnectFailed` / `RequestTimedOut` here, where they enter.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

import aiohttp
import httpx

from pipeline.errors import ConnectFailed, RequestTimedOut


@dataclass(slots=True)
class RawResponse:
    status: int
    headers: dict[str, str]  # names lower-cased
    body: bytes


class Transport(Protocol):
    async def post(self, url: str, headers: Mapping[str, str], body: bytes) -> RawResponse:
        """Send one POST; raise ConnectFailed / RequestTimedOut when no answer comes."""
        ...

    async def aclose(self) -> None: ...


class AiohttpTransport:
    """Keep-alive connection pool over aiohttp, created on first use (needs a running loop)."""

    def __init__(
        self, *, max_connections: int, connect_timeout_s: float, read_timeout_s: float
    ) -> None:
        self._max_connections = max_connections
        self._timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=connect_timeout_s, sock_read=read_timeout_s
        )
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(
            limit=self._max_connections, keepalive_timeout=30, enable_cleanup_closed=True
        )
        # auto_decompress stays on; cookies are never wanted by an API client.
        return aiohttp.ClientSession(
            connector=connector,
            timeout=self._timeout,
            cookie_jar=aiohttp.DummyCookieJar(),
            skip_auto_headers=("User-Agent",),
        )

    async def post(self, url: str, headers: Mapping[str, str], body: bytes) -> RawResponse:
        session = self._session or self._open()
        self._session = session
        try:
            async with session.post(url, data=body, headers=headers) as response:
                data = await response.read()
                names = {k.lower(): v for k, v in response.headers.items()}
                return RawResponse(response.status, names, data)
        except TimeoutError as e:
            raise RequestTimedOut(f"no answer from {url} in time") from e
        except aiohttp.ClientError as e:  # refused, dropped, or an answer that is not HTTP
            raise ConnectFailed(f"connection to {url} failed: {e.__class__.__name__}") from e

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


class HttpxTransport:
    """The same seam over httpx: pass a client, or a transport such as MockTransport."""

    def __init__(
        self,
        client: httpx.AsyncClient | None = None,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._client = client or httpx.AsyncClient(transport=transport)

    async def post(self, url: str, headers: Mapping[str, str], body: bytes) -> RawResponse:
        try:
            response = await self._client.post(url, content=body, headers=dict(headers))
        except httpx.TimeoutException as e:
            raise RequestTimedOut(f"no answer from {url} in time") from e
        except httpx.TransportError as e:
            raise ConnectFailed(f"connection to {url} failed: {e.__class__.__name__}") from e
        names = {k.lower(): v for k, v in response.headers.items()}
        return RawResponse(response.status_code, names, response.content)

    async def aclose(self) -> None:
        await self._client.aclose()
