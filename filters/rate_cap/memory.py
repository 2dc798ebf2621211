"""The backend contract of rate_cap and its in-memory backend; the GCRA and bucket math the Lua scripts mirror."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

Kind = Literal["requests", "tokens", "concurrent"]
_EPSILON = 1e-6


@dataclass(frozen=True, slots=True)
class Check:
    """One cap applied to one request: the backend key, the cap's parameters and what the request costs."""

    kind: Kind
    key: str
    limit: int
    window: float
    burst: int
    cost: float
    cap: str


@dataclass(frozen=True, slots=True)
class Outcome:
    admitted: bool
    limit: int
    remaining: float
    reset: float
    retry_after: float


class BackendUnavailable(Exception):
    """The shared store could not be reached in time; the filter applies `on_backend_error`."""


class Backend(Protocol):
    async def start(self) -> None: ...
    async def close(self) -> None: ...

    async def acquire(self, checks: Sequence[Check], lease: str) -> list[Outcome]:
        """Evaluate every check; commit all of them only if all admit (nothing is consumed otherwise)."""

    async def settle(self, debits: Sequence[tuple[Check, float]], releases: Sequence[Check], lease: str) -> None:
        """Debit (or credit, when negative) token buckets after the call and free concurrency slots."""

    def describe(self) -> str: ...


def gcra(tat: float | None, now: float, c: Check) -> tuple[Outcome, float | None]:
    """Generic cell rate: the theoretical arrival time moves by window/limit per request; returns the new TAT."""
    interval = c.window / c.limit
    tolerance = interval * c.burst + _EPSILON  # N intervals of window/N must fit the window despite rounding
    tat = now if tat is None or tat < now else tat
    new_tat = tat + interval * c.cost
    if new_tat - now <= tolerance:
        return Outcome(True, c.limit, math.floor((tolerance - (new_tat - now)) / interval), new_tat - now, 0.0), new_tat
    return Outcome(False, c.limit, max(0, math.floor((tolerance - (tat - now)) / interval)), tat - now,
                   new_tat - now - tolerance), None


def refill(level: float | None, since: float, now: float, c: Check) -> float:
    return float(c.limit) if level is None else min(float(c.limit), level + max(0.0, now - since) * c.limit / c.window)


def bucket(level: float, c: Check) -> tuple[Outcome, float | None]:
    """Token bucket: admits while the level covers the cost (capped at the size); the level may go negative."""
    rate = c.limit / c.window
    need = min(c.cost, c.limit)
    if level >= need:
        new = level - c.cost
        return Outcome(True, c.limit, new, (c.limit - new) / rate, 0.0), new
    return Outcome(False, c.limit, level, (c.limit - level) / rate, (need - level) / rate), None


class MemoryBackend:
    """Per-process state; atomic because the whole check-and-commit runs without awaiting."""

    def __init__(self, clock: Any = time.monotonic, max_keys: int = 100_000) -> None:
        self.clock = clock
        self.max_keys = max_keys
        self.tats: dict[str, float] = {}
        #: key -> (level, when it was measured, when it is full again)
        self.levels: dict[str, tuple[float, float, float]] = {}
        self.active: dict[str, int] = {}

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    def describe(self) -> str:
        return "memory"

    async def acquire(self, checks: Sequence[Check], lease: str) -> list[Outcome]:
        now = self.clock()
        results: list[tuple[Outcome, Any]] = []
        for c in checks:
            if c.kind == "requests":
                results.append(gcra(self.tats.get(c.key), now, c))
            elif c.kind == "tokens":
                level, since, _ = self.levels.get(c.key, (None, now, now))
                results.append(bucket(refill(level, since, now, c), c))
            else:
                active = self.active.get(c.key, 0)
                ok = active < c.limit
                results.append((Outcome(ok, c.limit, max(0, c.limit - active - int(ok)), 0.0 if ok else 1.0,
                                        0.0 if ok else 1.0), ok))
        if all(outcome.admitted for outcome, _ in results):
            for c, (_, new) in zip(checks, results):
                if c.kind == "requests":
                    self.tats[c.key] = new
                elif c.kind == "tokens":
                    self._set_level(c, new, now)
                else:
                    self.active[c.key] = self.active.get(c.key, 0) + 1
            if len(self.tats) + len(self.levels) > self.max_keys:
                self._sweep(now)
        return [outcome for outcome, _ in results]

    async def settle(self, debits: Sequence[tuple[Check, float]], releases: Sequence[Check], lease: str) -> None:
        now = self.clock()
        for c, amount in debits:
            level, since, _ = self.levels.get(c.key, (None, now, now))
            self._set_level(c, min(float(c.limit), refill(level, since, now, c) - amount), now)
        for c in releases:
            left = self.active.get(c.key, 0) - 1
            if left > 0:
                self.active[c.key] = left
            else:
                self.active.pop(c.key, None)

    def _set_level(self, c: Check, level: float, now: float) -> None:
        self.levels[c.key] = (level, now, now + (c.limit - level) * c.window / c.limit)

    def _sweep(self, now: float) -> None:
        """Forget keys whose state equals a fresh one: TAT passed, bucket full again."""
        self.tats = {k: tat for k, tat in self.tats.items() if tat > now}
        self.levels = {k: v for k, v in self.levels.items() if v[2] > now}
