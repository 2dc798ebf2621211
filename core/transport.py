"""An httpx transport on aiohttp's connection pool: httpx's API, without httpcore's cost under concurrency.

Measured on this 2-core machine (see DESIGN.md and bench/overhead.py): httpx's default pool collapses to
~200 req/s at 32 concurrent requests where aiohttp's sustains ~1,500. Requests keep httpx's types,
timeouts and exception tree, so callers never see aiohttp.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import httpx
from yarl import URL

# Read size for streamed bodies: large enough for whole JSON answers, small enough that SSE events are
# forwarded as soon as they arrive (iter_any returns whatever is buffered, never waiting to fill it).
_CHUNK = 65536
_DEFAULT_PORTS = {"http": 80, "https": 443}


class _ResponseStream(httpx.AsyncByteStream):
    __slots__ = ("_response",)

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.content.iter_any():
                yield chunk
        except asyncio.TimeoutError as exc:
            raise httpx.ReadTimeout("upstream read timed out") from exc
        except aiohttp.ClientError as exc:
            raise httpx.ReadError(f"upstream read failed: {exc}") from exc

    async def aclose(self) -> None:
        # release() returns a fully read connection to the pool; close() drops one we stopped reading.
        if self._response.content.at_eof():
            self._response.release()
        else:
            self._response.close()


class AiohttpTransport(httpx.AsyncBaseTransport):
    """httpx transport over one aiohttp.ClientSession (one pool per upstream, explicit limits)."""

    def __init__(self, *, max_connections: int = 512, keepalive_expiry: float = 30.0) -> None:
        self._max_connections = max_connections
        self._keepalive_expiry = keepalive_expiry
        self._session: aiohttp.ClientSession | None = None
        # Upstreams reuse a handful of URL objects; parsing them again for aiohttp costs more than the
        # rest of the request building, so the yarl form is kept per httpx.URL.
        self._yarl: dict[int, tuple[httpx.URL, URL]] = {}

    def _url(self, url: httpx.URL) -> URL:
        cached = self._yarl.get(id(url))
        if cached is not None and cached[0] is url:
            return cached[1]
        parsed = URL(str(url), encoded=True)
        if len(self._yarl) < 1024:
            self._yarl[id(url)] = (url, parsed)
        return parsed

    def _open(self) -> aiohttp.ClientSession:
        # Created lazily: a ClientSession binds to the running loop, which exists only once serving.
        connector = aiohttp.TCPConnector(
            limit=self._max_connections, keepalive_timeout=self._keepalive_expiry, ttl_dns_cache=300,
            enable_cleanup_closed=False,
        )
        self._session = aiohttp.ClientSession(
            connector=connector, auto_decompress=False, skip_auto_headers=("User-Agent", "Accept-Encoding"),
            cookie_jar=aiohttp.DummyCookieJar(), timeout=aiohttp.ClientTimeout(total=None),
        )
        return self._session

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        session = self._session or self._open()
        timeout = request.extensions.get("timeout", {})
        # sock_read bounds the wait for the response headers (first byte); once they are in, the same
        # per-read timer of the connection is set to `idle`, the longest gap between two body chunks.
        client_timeout = aiohttp.ClientTimeout(
            total=None, connect=timeout.get("pool"), sock_connect=timeout.get("connect"),
            sock_read=timeout.get("read"),
        )
        body: Any = request.content if request.method not in ("GET", "HEAD") else None
        try:
            response = await session.request(
                request.method, self._url(request.url), headers=request.headers.multi_items(), data=body,
                timeout=client_timeout, allow_redirects=False, compress=None, chunked=None,
            )
        except aiohttp.ClientConnectorError as exc:
            url = request.url
            port = url.port or _DEFAULT_PORTS.get(url.scheme)
            raise httpx.ConnectError(f"cannot connect to {url.host}:{port}: {exc.strerror}", request=request) from exc
        except aiohttp.ConnectionTimeoutError as exc:
            raise httpx.ConnectTimeout("upstream connect timed out", request=request) from exc
        except (asyncio.TimeoutError, aiohttp.ServerTimeoutError) as exc:
            raise httpx.ReadTimeout("upstream did not answer in time", request=request) from exc
        except aiohttp.ClientError as exc:
            raise httpx.RemoteProtocolError(f"upstream failed: {exc}", request=request) from exc
        idle = timeout.get("idle")
        connection = response.connection
        if idle is not None and connection is not None and connection.protocol is not None:
            connection.protocol.read_timeout = idle
        return httpx.Response(
            status_code=response.status,
            headers=[(k, v) for k, v in response.raw_headers],
            stream=_ResponseStream(response),
            extensions={"http_version": b"HTTP/1.1"},
            request=request,
        )

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
