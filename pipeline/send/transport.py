"""The HTTP seam: one `post` that returns status, lower-cased headers and body bytes.

`AiohttpTransport` is the default: on these 2-core machines aiohttp carries ~1,230
requests/s with 256 in flight at 200 ms latency where a plain `httpx.AsyncClient` manages
~50 (../shared/MEASURED.md). `HttpxTransport` wraps any httpx client or transport (proxies,
HTTP/2, or `httpx.MockTransport` in unit tests; in httpx_transport.py, so a run without it
never imports httpx). Both translate their library's exceptions
into `ConnectFailed` / `RequestTimedOut` here, where they enter, and both hold a server to
the same three bounds, whatever it does:
- redirects are never followed: a 3xx comes back as it is, so the key in the request's
  headers goes to no other address (the client makes it an error row);
- an attempt has a deadline as a whole (`deadline_s`), besides the bound on silence, so a
  server trickling a byte a second cannot hold a worker for ever;
- an answer is read up to `max_answer_bytes` (declared length first, then the bytes as
  they arrive, decompressed): past it, `AnswerTooLarge`, and the rest is never read.
"""

from __future__ import annotations

import zlib
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Protocol

import aiohttp
from multidict import CIMultiDict

from pipeline.errors import AnswerTooLarge as AnswerTooLarge
from pipeline.errors import ConnectFailed, RequestTimedOut
from pipeline.send.deadlines import Deadlines

MAX_ANSWER_BYTES = 32 * 1024 * 1024  # far above any real answer (the request limit is 32 MB)


ErrorKinds = tuple[
    tuple[type[BaseException], ...],
    tuple[type[BaseException], ...],
    tuple[type[BaseException], ...],
]


@dataclass(slots=True)
class RawResponse:
    status: int
    headers: dict[str, str]  # names lower-cased
    body: bytes


class Transport(Protocol):
    async def post(
        self, url: str, headers: Mapping[str, str], body: bytes, *, deadline_s: float | None = None
    ) -> RawResponse:
        """Send one POST; raise ConnectFailed / RequestTimedOut when no whole answer comes
        within `deadline_s` (None: the transport's own), AnswerTooLarge past its cap."""
        ...

    async def aclose(self) -> None: ...


def check_declared(status: int, headers: Mapping[str, str], cap: int) -> None:
    """Refuse before reading when the server says up front that the answer is too long."""
    try:
        declared = int(headers.get("content-length", ""))
    except ValueError:
        return  # absent or not a number: the bytes are counted as they come
    if declared > cap:
        raise AnswerTooLarge(
            status, f"answer too large: {declared:,} bytes declared, max_answer_bytes is {cap:,}"
        )


INFLATE_STEP = 1024 * 1024  # decompressed bytes produced at a time


async def inflated(chunks: AsyncIterator[bytes], encoding: str | None) -> AsyncIterator[bytes]:
    """The body decompressed (gzip / deflate) at most INFLATE_STEP bytes at a time, so a
    reader that stops at its cap never holds more than the cap and one step."""
    kind = (encoding or "").strip().lower()
    if kind in ("", "identity"):
        async for chunk in chunks:
            yield chunk
        return
    if kind not in ("gzip", "x-gzip", "deflate"):
        raise ConnectFailed(f"the answer is encoded as {encoding!r}, which was not asked for")
    decoder = zlib.decompressobj(16 + zlib.MAX_WBITS if "gzip" in kind else zlib.MAX_WBITS)
    try:
        async for chunk in chunks:
            data = chunk
            while data:
                out = decoder.decompress(data, INFLATE_STEP)
                data = decoder.unconsumed_tail
                if out:
                    yield out
        if tail := decoder.flush():
            yield tail
    except zlib.error as e:
        raise ConnectFailed(f"the answer's {kind} encoding is corrupt: {e}") from e


async def read_capped(status: int, chunks: AsyncIterator[bytes], cap: int) -> bytes:
    """The whole body, or AnswerTooLarge as soon as it passes `cap` bytes."""
    parts: list[bytes] = []
    size = 0
    async for chunk in chunks:
        size += len(chunk)
        if size > cap:
            raise AnswerTooLarge(
                status, f"answer too large: over {cap:,} bytes (max_answer_bytes); not read further"
            )
        parts.append(chunk)
    return b"".join(parts)


def _plain_and_declared(headers: Mapping[str, str]) -> bool:
    """An answer not encoded, whose length was given (and checked by `check_declared`) and
    not contradicted by a chunked transfer: aiohttp reads exactly that many bytes, so there
    is no cap to watch while reading."""
    if headers.get("content-encoding", "identity").strip().lower() != "identity":
        return False
    length = headers.get("content-length", "")
    return length.isascii() and length.isdigit() and "transfer-encoding" not in headers


# Failures before the request could leave: it was never sent, so never billed. Every other
# failure may have come after the server took the whole request (ApiClient counts it as
# maybe billed); a write that failed part-way sent no whole request either.
UNSENT = (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError)
CONNECTING = (aiohttp.ConnectionTimeoutError,)
SILENT = (aiohttp.ServerTimeoutError,)


def timed_out(
    url: str, deadline_s: float | None, error: BaseException, library: ErrorKinds | None = None
) -> RequestTimedOut:
    """A timeout of either transport, as ours; `library`: its (connecting, unsent,
    silent) exception classes (None: aiohttp's)."""
    connecting, unsent, silent = library or (CONNECTING, UNSENT, SILENT)
    if isinstance(error, connecting):
        return RequestTimedOut(f"could not connect to {url} in time", delivered=False)
    if isinstance(error, unsent):
        return RequestTimedOut(f"could not send to {url} in time", delivered=False)
    if isinstance(error, silent):
        return RequestTimedOut(f"no answer from {url}: silent for longer than timeout_s")
    within = f" within {deadline_s:g} s" if deadline_s else ""
    return RequestTimedOut(f"the answer from {url} did not complete{within}")


def failed(
    url: str, error: BaseException, unsent: tuple[type[BaseException], ...] = UNSENT
) -> ConnectFailed:
    delivered = not isinstance(error, unsent)
    what = f"connection to {url} failed: {error.__class__.__name__}"
    return ConnectFailed(what, delivered=delivered)


def _merged(headers: Mapping[str, str]) -> CIMultiDict[str]:
    """`headers` over ours, as aiohttp merges a request's headers over a session's (by
    name, in any case); ours: the encodings read_capped can inflate."""
    merged: CIMultiDict[str] = CIMultiDict({"accept-encoding": "gzip, deflate"})
    given: CIMultiDict[str] = CIMultiDict(headers)
    added: set[str] = set()
    for name, value in given.items():
        if name in added:
            merged.add(name, value)
        else:
            merged[name] = value
            added.add(name)
    return merged


class AiohttpTransport:
    """Keep-alive connection pool over aiohttp, created on first use (needs a running loop).

    `read_timeout_s` bounds each silence (waiting for the answer, or between its bytes);
    `deadline_s` (default: the same) bounds the whole attempt.
    """

    def __init__(
        self,
        *,
        max_connections: int,
        connect_timeout_s: float,
        read_timeout_s: float,
        deadline_s: float | None = None,
        max_answer_bytes: int = MAX_ANSWER_BYTES,
    ) -> None:
        self._max_connections = max_connections
        self._timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=connect_timeout_s, sock_read=read_timeout_s
        )
        # An attempt whose deadline is no longer than the bound on silence cannot be silent
        # for longer than that bound: it needs no read timer of its own, which aiohttp would
        # arm anew on every chunk (two timer handles a request, for nothing).
        self._deadline_only = aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout_s)
        self._read_timeout_s = read_timeout_s
        self._deadline_s = deadline_s or read_timeout_s
        self._cap = max_answer_bytes
        self._deadlines = Deadlines()
        # The headers of a client's requests never change: they are the session's own, so
        # aiohttp merges none into each request (~3 us a request). Other headers (no run
        # sends two sets) get a session of their own: no set is merged into another.
        self._sessions: dict[tuple[tuple[str, str], ...], aiohttp.ClientSession] = {}
        self._usual: tuple[Mapping[str, str], aiohttp.ClientSession] | None = None

    def _session_for(self, headers: Mapping[str, str]) -> aiohttp.ClientSession:
        """The session whose own headers are `headers` (opened on first use)."""
        usual = self._usual
        if usual is not None and usual[0] == headers:
            return usual[1]
        key = tuple(headers.items())
        session = self._sessions.get(key)
        if session is None:
            session = self._sessions[key] = self._open(headers)
        if usual is None:
            self._usual = (dict(headers), session)
        return session

    def _open(self, headers: Mapping[str, str]) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(
            limit=self._max_connections, keepalive_timeout=30, enable_cleanup_closed=True
        )
        # Answers are decompressed here, a bounded step at a time (read_capped), not by
        # aiohttp, which inflates each network chunk whole: a gzip bomb would allocate a
        # thousand times its size before the cap could look. Cookies are never wanted.
        return aiohttp.ClientSession(
            connector=connector,
            timeout=self._timeout,
            cookie_jar=aiohttp.DummyCookieJar(),
            skip_auto_headers=("User-Agent",),
            auto_decompress=False,
            headers=_merged(headers),
        )

    async def post(
        self, url: str, headers: Mapping[str, str], body: bytes, *, deadline_s: float | None = None
    ) -> RawResponse:
        session = self._session_for(headers)
        deadline_s = deadline_s or self._deadline_s
        timeout = self._deadline_only if deadline_s <= self._read_timeout_s else self._timeout
        try:
            deadline = self._deadlines.enter(deadline_s)  # as asyncio.timeout, a timer less
            error: BaseException | None = None
            try:
                return await self._exchange(session, url, body, timeout)
            except BaseException as e:
                error = e
                raise
            finally:
                self._deadlines.leave(deadline, error)  # TimeoutError if it expired
        except TimeoutError as e:  # aiohttp's own timeouts are TimeoutErrors too
            raise timed_out(url, deadline_s, e) from e
        except aiohttp.ClientError as e:  # refused, dropped, or an answer that is not HTTP
            raise failed(url, e) from e

    async def _exchange(
        self,
        session: aiohttp.ClientSession,
        url: str,
        body: bytes,
        timeout: aiohttp.ClientTimeout,
    ) -> RawResponse:
        """One POST with the session's own headers (`_session_for`)."""
        async with session.post(url, data=body, allow_redirects=False, timeout=timeout) as response:
            names = {k.lower(): v for k, v in response.headers.items()}
            try:
                check_declared(response.status, names, self._cap)
                if _plain_and_declared(names):  # at most the cap, checked: read at once
                    data = await response.read()
                else:
                    encoding = names.get("content-encoding")
                    chunks = inflated(response.content.iter_any(), encoding)
                    data = await read_capped(response.status, chunks, self._cap)
            except AnswerTooLarge:
                response.close()  # drop the connection: the rest is never read
                raise
            return RawResponse(response.status, names, data)

    async def aclose(self) -> None:
        sessions, self._sessions, self._usual = list(self._sessions.values()), {}, None
        for session in sessions:
            await session.close()
