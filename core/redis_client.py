"""The proxy's one way to call Redis: explicit timeouts, an overall deadline, no hidden retries, a pause after failing."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar
from urllib.parse import urlsplit

if TYPE_CHECKING:
    import redis.asyncio

T = TypeVar("T")


class RedisUnavailable(Exception):
    """Redis did not answer in time. ``where`` is the server without credentials, ``reason`` what failed; both
    are for the log only, never for a client."""

    def __init__(self, where: str, reason: str) -> None:
        super().__init__(f"{where}: {reason}")
        self.where = where
        self.reason = reason


def describe(url: str) -> str:
    """The server's address without credentials, for log lines."""
    parts = urlsplit(url)
    where = parts.path if parts.scheme == "unix" else f"{parts.hostname}:{parts.port or 6379}{parts.path or '/0'}"
    return f"{parts.scheme}://{where}"


class RedisClient:
    """One Redis server. Socket timeouts bound each step and a deadline the whole call (every attempt of
    ``retries``); after a failure every call fails at once for ``retry_after`` seconds instead of making every
    request wait again. Replies are decoded to ``str``.

    redis is imported on first use, so a proxy that never configures Redis does not load it.
    """

    def __init__(self, url: str, timeout: float, *, retry_after: float = 1.0, retries: int = 0,
                 max_connections: int | None = None) -> None:
        import redis.asyncio as redis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        self.where = describe(url)
        self.retry_after = retry_after
        # Each attempt may spend a socket timeout connecting and another one reading.
        self.deadline = timeout * 2 * (retries + 1)
        self.client: redis.Redis = redis.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout, retry_on_timeout=False,
            retry=Retry(NoBackoff(), retries), health_check_interval=0, decode_responses=True,
            max_connections=max_connections,
        )
        self._down_until = 0.0
        self._last_failure = ""

    async def execute(self, command: str, *args: object) -> object:
        """One Redis command, e.g. ``execute("GET", key)``."""
        return await self.run(lambda: self.client.execute_command(command, *args))  # type: ignore[no-untyped-call]

    async def run(self, call: Callable[[], Awaitable[T]]) -> T:
        """``call()`` (a command, a script, a pipeline) under the deadline; Redis failures raise RedisUnavailable."""
        import redis

        if time.monotonic() < self._down_until:
            raise RedisUnavailable(self.where, f"{self._last_failure} (failed less than {self.retry_after:g}s ago; "
                                               "not retried yet)")
        try:
            async with asyncio.timeout(self.deadline):
                return await call()
        except (redis.RedisError, OSError, TimeoutError) as exc:
            self._last_failure = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            self._down_until = time.monotonic() + self.retry_after
            raise RedisUnavailable(self.where, self._last_failure) from None

    async def close(self) -> None:
        await self.client.aclose(close_connection_pool=True)
