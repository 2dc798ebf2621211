"""Where stored Responses API responses live: a bounded in-memory LRU, or Redis shared by every replica."""

from __future__ import annotations

import json
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, fields
from typing import Any, Protocol, TypeVar

from core.config import ResponsesConfig
from core.redis_client import RedisClient, RedisUnavailable

T = TypeVar("T")


@dataclass(frozen=True)
class StoredResponse:
    """One stored response: what GET /v1/responses/{id} answers and what `previous_response_id` continues."""

    id: str
    #: The principal's name; None on a listener without auth.
    owner: str | None
    #: The Response object as the client got it.
    response: dict[str, Any]
    #: This request's input items, as GET /v1/responses/{id}/input_items lists them.
    input_items: list[dict[str, Any]]
    #: This turn only, in chat-completions form: its input, then its output. The conversation before it is in
    #: the ``chain``'s responses, so a conversation of N turns stores N turns, not N(N+1)/2.
    messages: list[dict[str, Any]]
    #: The deployment that holds this id natively (a Responses upstream: entry, base URL, account), else None.
    native: str | None
    #: Epoch seconds.
    created_at: float
    #: The response this one continues (``previous_response_id``), None for a conversation's first.
    previous: str | None
    #: Every earlier response of the conversation, oldest first: one ``get_many`` reads them all.
    chain: list[str]


class StoreUnavailable(Exception):
    """The store's backend could not answer in time. The message is safe for clients; ``where`` (host and
    error type) is for the log only."""

    def __init__(self, message: str, where: str) -> None:
        super().__init__(message)
        self.where = where


class ResponseStore(Protocol):
    async def put(self, item: StoredResponse) -> None:
        """Store (or replace) ``item`` under ``item.id`` for the configured TTL."""

    async def get(self, response_id: str) -> StoredResponse | None:
        """The stored response; None when absent, expired or evicted."""

    async def get_many(self, response_ids: list[str]) -> list[StoredResponse | None]:
        """The stored responses in the order asked, None for each absent one, in one round trip; each found one
        counts as used again (its LRU recency in memory, its TTL in Redis)."""

    async def delete(self, response_id: str) -> bool:
        """Forget a response; False when there was none."""

    async def close(self) -> None: ...


def _encode(item: StoredResponse) -> str:
    # Shallow: dataclasses.asdict deep-copies every nested dict first, ~0.4 ms for one response.
    text = json.dumps({name: getattr(item, name) for name in _FIELDS}, ensure_ascii=False, separators=(",", ":"))
    # An upstream's lone surrogate cannot be UTF-8, which Redis needs: kept as the same JSON escape.
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


_FIELDS = tuple(field.name for field in fields(StoredResponse))


def _decode(raw: str) -> StoredResponse | None:
    """A stored value; None for one this version did not write (another release, such as one that kept the
    whole conversation in each response, or another tool on the prefix): as if absent."""
    try:
        item = StoredResponse(**json.loads(raw))
    except (ValueError, TypeError):
        return None
    chain = item.chain
    if not isinstance(chain, list) or not all(isinstance(ancestor, str) for ancestor in chain):
        return None
    return item


class MemoryResponseStore:
    """Per-process responses: least recently used evicted past ``max_entries`` or ``max_bytes`` (each entry is
    one turn of its conversation), each expires ``ttl`` seconds after it was put.

    Entries are kept as JSON, like in Redis: a caller that mutates what it put or got cannot change what is
    stored, and both backends accept and return exactly the same values.
    """

    def __init__(self, ttl: float, max_entries: int, clock: Callable[[], float] = time.monotonic,
                 max_bytes: int | None = None) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.clock = clock
        self._entries: OrderedDict[str, tuple[str, float]] = OrderedDict()
        #: Characters of JSON held (a close count of the bytes: most of it is ASCII).
        self.size = 0

    def __len__(self) -> int:
        return len(self._entries)

    async def put(self, item: StoredResponse) -> None:
        encoded = _encode(item)
        self._drop(item.id)
        self._entries[item.id] = (encoded, self.clock() + self.ttl)
        self.size += len(encoded)
        limit = self.max_bytes if self.max_bytes is not None else float("inf")
        # The newest entry stays even alone over the budget: the client was just told its id.
        while len(self._entries) > 1 and (len(self._entries) > self.max_entries or self.size > limit):
            self._drop(next(iter(self._entries)))

    def _drop(self, response_id: str) -> tuple[str, float] | None:
        entry = self._entries.pop(response_id, None)
        if entry is not None:
            self.size -= len(entry[0])
        return entry

    async def get(self, response_id: str) -> StoredResponse | None:
        entry = self._entries.get(response_id)
        if entry is None:
            return None
        if entry[1] <= self.clock():
            self._drop(response_id)
            return None
        self._entries.move_to_end(response_id)
        return _decode(entry[0])

    async def get_many(self, response_ids: list[str]) -> list[StoredResponse | None]:
        found = [await self.get(response_id) for response_id in response_ids]
        # As in Redis: a conversation lives as long as its latest turn, so the turns read get their TTL again.
        expires = self.clock() + self.ttl
        for response_id, item in zip(response_ids, found):
            if item is not None:
                self._entries[response_id] = (self._entries[response_id][0], expires)
        return found

    async def delete(self, response_id: str) -> bool:
        entry = self._drop(response_id)
        return entry is not None and entry[1] > self.clock()

    async def close(self) -> None:
        self._entries.clear()
        self.size = 0


class RedisResponseStore:
    """Responses in Redis, one JSON value per key ``{prefix}{id}`` set with a TTL, so every replica can
    continue every conversation.

    Each call is bounded by explicit socket timeouts and an overall deadline, never retried; after a failure
    the store reports itself unavailable for ``retry_after`` seconds instead of making every request wait again.
    """

    def __init__(self, url: str, ttl: float, timeout: float, key_prefix: str, retry_after: float = 1.0) -> None:
        self.ttl_ms = max(1, int(ttl * 1000))
        self.prefix = key_prefix
        self._redis = RedisClient(url, timeout, retry_after=retry_after)

    async def _call(self, command: str, *args: object) -> object:
        return await self._mapped(self._redis.execute(command, *args))

    async def _mapped(self, work: Awaitable[T]) -> T:
        try:
            return await work
        except RedisUnavailable as exc:
            raise StoreUnavailable("the response store is unavailable", str(exc)) from None

    async def put(self, item: StoredResponse) -> None:
        await self._call("SET", self.prefix + item.id, _encode(item), "PX", self.ttl_ms)

    async def get(self, response_id: str) -> StoredResponse | None:
        value = await self._call("GET", self.prefix + response_id)
        return _decode(value) if isinstance(value, str) else None

    async def get_many(self, response_ids: list[str]) -> list[StoredResponse | None]:
        if not response_ids:
            return []
        keys = [self.prefix + response_id for response_id in response_ids]

        async def read_and_refresh() -> list[Any]:
            # One round trip: the values, and each key's TTL set again, so a conversation lives as long as its
            # latest turn (a key that is gone stays gone: PEXPIRE does not create it).
            async with self._redis.client.pipeline(transaction=False) as pipe:
                pipe.mget(keys)
                for key in keys:
                    pipe.pexpire(key, self.ttl_ms)
                replies: list[Any] = await pipe.execute()
            return replies

        values = (await self._mapped(self._redis.run(read_and_refresh)))[0]
        return [_decode(value) if isinstance(value, str) else None for value in values]

    async def delete(self, response_id: str) -> bool:
        return bool(await self._call("DEL", self.prefix + response_id))

    async def close(self) -> None:
        await self._redis.close()


def build_store(config: ResponsesConfig) -> ResponseStore:
    if config.store == "memory":
        return MemoryResponseStore(config.ttl_seconds, config.max_entries, max_bytes=config.max_bytes)
    return RedisResponseStore(config.store, config.ttl_seconds, config.redis_timeout_seconds, config.key_prefix)
