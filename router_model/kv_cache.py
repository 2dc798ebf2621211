"""Prefilled KV caches of static prompt prefixes, keyed by route set and batch size."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable

from router_model.engine import PastKV


class PrefixCache:
    """A small LRU: one entry per (route set key, batch size); route sets change rarely."""

    def __init__(self, capacity: int = 16) -> None:
        self.capacity = capacity
        self._entries: OrderedDict[tuple[str, int], PastKV] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: str, batch: int, build: Callable[[], PastKV]) -> PastKV:
        with self._lock:
            entry = self._entries.get((key, batch))
            if entry is not None:
                self._entries.move_to_end((key, batch))
                self.hits += 1
                return entry
        self.misses += 1
        entry = build()
        with self._lock:
            self._entries[(key, batch)] = entry
            while len(self._entries) > self.capacity:
                self._entries.popitem(last=False)
        return entry

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
