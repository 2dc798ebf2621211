"""Where session pins live: a bounded in-memory LRU with idle TTL, or Redis shared by every proxy process."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Protocol

from core.redis_client import RedisClient, RedisUnavailable


class StoreUnavailable(Exception):
    """The backend could not answer in time; the caller applies its fail_open / fail_closed policy."""


class PinStore(Protocol):
    async def get(self, session_id: str) -> str | None:
        """The pinned model, refreshing the pin's idle TTL; None when absent or expired."""

    async def set(self, session_id: str, model: str) -> None:
        """Pin (or re-pin) a session to a model for the idle TTL."""

    async def close(self) -> None: ...


class MemoryPinStore:
    """Per-process pins: least recently used evicted past ``max_sessions``, idle ones expire after ``ttl``."""

    def __init__(self, ttl: float, max_sessions: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self.max_sessions = max_sessions
        self.clock = clock
        self._pins: OrderedDict[str, tuple[str, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._pins)

    async def get(self, session_id: str) -> str | None:
        entry = self._pins.get(session_id)
        if entry is None:
            return None
        now = self.clock()
        if entry[1] <= now:
            del self._pins[session_id]
            return None
        self._pins[session_id] = (entry[0], now + self.ttl)
        self._pins.move_to_end(session_id)
        return entry[0]

    async def set(self, session_id: str, model: str) -> None:
        self._pins[session_id] = (model, self.clock() + self.ttl)
        self._pins.move_to_end(session_id)
        while len(self._pins) > self.max_sessions:
            self._pins.popitem(last=False)

    async def close(self) -> None:
        self._pins.clear()


class RedisPinStore:
    """Pins in Redis (``GETEX`` refreshes the idle TTL atomically), so every replica honours every pin.

    Each call is bounded by explicit socket timeouts and an overall deadline; after a failure the store
    reports itself unavailable for ``retry_after`` seconds instead of making every request wait again.
    """

    def __init__(self, url: str, ttl: float, timeout: float, key_prefix: str, retry_after: float = 1.0) -> None:
        self.ttl_ms = max(1, int(ttl * 1000))
        self.prefix = key_prefix
        self._redis = RedisClient(url, timeout, retry_after=retry_after)

    async def _call(self, command: str, *args: object) -> object:
        try:
            return await self._redis.execute(command, *args)
        except RedisUnavailable as exc:
            raise StoreUnavailable(str(exc)) from None

    async def get(self, session_id: str) -> str | None:
        value = await self._call("GETEX", self.prefix + session_id, "PX", self.ttl_ms)
        return value if isinstance(value, str) else None

    async def set(self, session_id: str, model: str) -> None:
        await self._call("SET", self.prefix + session_id, model, "PX", self.ttl_ms)

    async def close(self) -> None:
        await self._redis.close()
