"""The rate_cap filter: admits a request if every cap admits it, settles tokens and slots when it completes."""

from __future__ import annotations

import hashlib
import logging
import math
import time
import uuid
from collections import deque
from dataclasses import dataclass

from core.filter import Filter, FilterContext, LocalReply
from core.flow import Flow
from core.target import Target
from filters.rate_cap.config import Cap, RateCapConfig
from filters.rate_cap.memory import Backend, BackendUnavailable, Check, MemoryBackend, Outcome
from filters.rate_cap.usage import estimate_input_tokens

log = logging.getLogger("outerloop.rate_cap")

_Settlement = tuple[list[tuple[Check, float]], list[Check], str]
_FLUSH_BATCH = 100


@dataclass
class _Admission:
    checks: list[Check]
    lease: str
    estimate: int = 0
    settled: bool = False


class RateCapFilter(Filter):
    """Admits a request only if every configured cap admits it; settles tokens and slots when it completes."""

    def __init__(self, settings: RateCapConfig, backend: Backend, listener: str) -> None:
        self.settings = settings
        self.backend = backend
        self.listener = listener
        self.counts_tokens = any(cap.kind == "tokens" for cap in settings.caps)
        # Caps keyed by model or route must see the routed request: then admission waits for the first
        # upstream attempt (after the router), and stays one all-or-nothing decision over every cap.
        self.after_routing = any(part in ("model", "route") for cap in settings.caps for part in cap.key)
        self._warned_at = -math.inf
        self._suppressed = 0
        self._down = False
        # Bounded: past it the oldest are dropped, and Redis' lease expiry frees their slots instead.
        self._unsettled: deque[_Settlement] = deque(maxlen=10_000)

    @classmethod
    def from_config(cls, settings: RateCapConfig, context: FilterContext) -> RateCapFilter:
        backend: Backend
        if settings.backend == "redis":
            from filters.rate_cap.redis_backend import RedisBackend

            assert settings.redis is not None
            backend = RedisBackend(settings.redis, settings.concurrency_lease_seconds)
        else:
            backend = MemoryBackend()
        return cls(settings, backend, context.listener.name)

    async def start(self) -> None:
        await self.backend.start()

    async def close(self) -> None:
        await self.backend.close()

    def key_of(self, flow: Flow, cap: Cap) -> str:
        values = [_part(flow, part).replace("\\", "\\\\").replace("|", "\\|") for part in cap.key]
        return f"{self.listener}:{cap.label}:{'|'.join(values)}"

    async def on_request(self, flow: Flow) -> LocalReply | None:
        return None if self.after_routing else await self._admit(flow)

    async def on_upstream_request(self, flow: Flow, target: Target) -> LocalReply | None:
        # Once per request: a failover to the next model is the same request, already admitted.
        if not self.after_routing or self.name in flow.state:
            return None
        return await self._admit(flow)

    async def _admit(self, flow: Flow) -> LocalReply | None:
        estimate = estimate_input_tokens(flow.json) if self.counts_tokens else 0
        checks = [
            Check(cap.kind, self.key_of(flow, cap), cap.limit, cap.window, cap.burst or cap.limit,
                  float(estimate) if cap.kind == "tokens" else 1.0, cap.label)
            for cap in self.settings.caps
        ]
        lease = f"{flow.request_id}:{uuid.uuid4().hex[:12]}"
        try:
            if self._unsettled:
                await self._flush()
            outcomes = await self.backend.acquire(checks, lease)
        except BackendUnavailable as exc:
            return self._backend_failed(flow, exc)
        if self._down:
            self._down = False
            log.warning("rate_cap: backend %s is reachable again; caps apply", self.backend.describe())
        rejected = [(c, o) for c, o in zip(checks, outcomes) if not o.admitted]
        if rejected:
            check, outcome = max(rejected, key=lambda item: item[1].retry_after)
            only_slots = all(c.kind == "concurrent" for c, _ in rejected)
            wait = max(1, math.ceil(outcome.retry_after))
            what = (f"{check.limit} concurrent requests" if check.kind == "concurrent"
                    else f"{check.limit} {check.kind} per {check.window:g}s")
            return LocalReply(429, f"rate cap {check.cap!r} exceeded ({what}); retry in {wait}s",
                              "rate_cap.concurrency" if only_slots else "rate_cap.exceeded",
                              {"retry-after": str(wait), **_headers(outcome)})
        admission = _Admission(checks, lease, estimate)
        flow.state[self.name] = admission
        tightest = min(outcomes, key=lambda o: o.remaining / o.limit)
        flow.extra_headers.update(_headers(tightest))
        return None

    def _backend_failed(self, flow: Flow, exc: BackendUnavailable) -> LocalReply | None:
        closed = self.settings.on_backend_error == "fail_closed"
        self._warn(exc, "refusing requests with 503 (fail_closed)" if closed
                   else "admitting requests without caps (fail_open)")
        flow.annotations["rate_cap.backend_unavailable"] = True
        flow.state[self.name] = None  # decided for this request: a failover attempt does not ask again
        if closed:
            return LocalReply(503, "rate caps cannot be checked right now (backend unavailable); retry shortly",
                              "rate_cap.backend_unavailable", {"retry-after": "1"})
        return None

    def _warn(self, exc: BackendUnavailable, consequence: str) -> None:
        """One warning per interval, however many requests fail in between (they are counted)."""
        self._down = True
        now = time.monotonic()
        if now - self._warned_at >= self.settings.warn_interval_seconds:
            also = f" ({self._suppressed} more since the last warning)" if self._suppressed else ""
            log.warning("rate_cap: backend %s unavailable: %s; %s%s", self.backend.describe(), exc, consequence, also)
            self._warned_at, self._suppressed = now, 0
        else:
            self._suppressed += 1

    async def on_complete(self, flow: Flow, error: BaseException | None) -> None:
        admission = flow.state.get(self.name)
        if not isinstance(admission, _Admission) or admission.settled:
            return
        admission.settled = True
        releases = [c for c in admission.checks if c.kind == "concurrent"]
        debits: list[tuple[Check, float]] = []
        if self.counts_tokens:
            # The core records usage from every response (core.usage); the estimate is corrected by it.
            usage = flow.usage
            if usage is not None:
                amount = float(usage["total_tokens"] - admission.estimate)
            elif flow.attempts == 0 or (flow.response_status or 0) >= 400:
                amount = -float(admission.estimate)  # no tokens were spent: give the estimate back
            else:
                amount = 0.0
            if amount:
                debits = [(c, amount) for c in admission.checks if c.kind == "tokens"]
        if debits or releases:
            await self._settle((debits, releases, admission.lease))

    async def _settle(self, settlement: _Settlement) -> None:
        """Settle this request, and first those that found the backend down (else their slots stay held)."""
        try:
            await self._flush()
            await self.backend.settle(*settlement)
        except BackendUnavailable as exc:
            self._unsettled.append(settlement)
            self._warn(exc, f"{len(self._unsettled)} finished request(s) will be settled when it is back")

    async def _flush(self) -> None:
        for _ in range(min(len(self._unsettled), _FLUSH_BATCH)):
            await self.backend.settle(*self._unsettled[0])
            self._unsettled.popleft()


def _part(flow: Flow, part: str) -> str:
    if part == "principal":
        return flow.principal.name if flow.principal is not None else "-"
    if part == "model":
        return flow.targets[0].model if flow.targets else flow.model or "-"
    if part == "route":
        return flow.route.name if flow.route is not None else "-"
    if part == "client_ip":
        return flow.client[0] if flow.client else "-"
    if part == "global":
        return "*"
    value = flow.headers.get(part[7:])
    # Header values may be long or sensitive: the key holds a digest, never the value.
    return hashlib.blake2b(value.encode(), digest_size=8).hexdigest() if value else "-"


def _headers(outcome: Outcome) -> dict[str, str]:
    return {
        "x-ratelimit-limit": str(outcome.limit),
        "x-ratelimit-remaining": str(max(0, math.floor(outcome.remaining))),
        "x-ratelimit-reset": str(max(0, math.ceil(outcome.reset))),
    }
