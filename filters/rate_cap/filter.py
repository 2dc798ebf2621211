"""The rate_cap filter: admits a request (and each model it tries) if every cap admits it, settles when it completes."""

from __future__ import annotations

import hashlib
import logging
import math
import time
import uuid
from collections import deque
from dataclasses import dataclass, field

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
    """What one request holds: one lease for its slots, its token estimate, and each check admitted with the
    model it counts (None for a cap not keyed by model: those are admitted once per request)."""

    lease: str
    estimate: int
    checks: list[tuple[str | None, Check]] = field(default_factory=list)
    models: set[str] = field(default_factory=set)
    share: float = math.inf  # the smallest share left of any cap admitted: the response headers describe it
    settled: bool = False


class RateCapFilter(Filter):
    """Admits a request only if every configured cap admits it; settles tokens and slots when it completes."""

    def __init__(self, settings: RateCapConfig, backend: Backend, listener: str) -> None:
        self.settings = settings
        self.backend = backend
        self.listener = listener
        self.counts_tokens = any(cap.kind == "tokens" for cap in settings.caps)
        self.model_caps = [cap for cap in settings.caps if "model" in cap.key]
        # Caps keyed by model or route must see the routed request: then admission waits for the first
        # upstream attempt (after the router), and stays one all-or-nothing decision over every cap.
        self.after_routing = bool(self.model_caps) or any("route" in cap.key for cap in settings.caps)
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

    def key_of(self, flow: Flow, cap: Cap, model: str | None = None) -> str:
        values = [_part(flow, part, model).replace("\\", "\\\\").replace("|", "\\|") for part in cap.key]
        return f"{self.listener}:{cap.label}:{'|'.join(values)}"

    async def on_request(self, flow: Flow) -> LocalReply | None:
        return None if self.after_routing else await self._admit(flow, None, self.settings.caps)

    async def on_upstream_request(self, flow: Flow, target: Target) -> LocalReply | None:
        if not self.after_routing:
            return None
        admission = flow.state.get(self.name)
        if admission is None:
            return await self._admit(flow, target.model, self.settings.caps)
        # A retry or failover is the same request: only a model not tried yet is counted, by its model caps.
        # Refused, the core skips that model and tries the next target (core.dispatch).
        if target.model in admission.models or not self.model_caps:
            return None
        return await self._admit(flow, target.model, self.model_caps)

    async def _admit(self, flow: Flow, model: str | None, caps: list[Cap]) -> LocalReply | None:
        """One all-or-nothing decision over ``caps`` for ``model``; nothing is consumed when one refuses."""
        admission = flow.state.get(self.name)
        if admission is None:
            # Counting tokens spends none: a count_tokens request is a request, not tokens.
            spends = self.counts_tokens and flow.endpoint != "count_tokens"
            estimate = estimate_input_tokens(flow.json) if spends else 0
            admission = _Admission(f"{flow.request_id}:{uuid.uuid4().hex[:12]}", estimate)
        checks = [
            Check(cap.kind, self.key_of(flow, cap, model), cap.limit, cap.window, cap.burst or cap.limit,
                  float(admission.estimate) if cap.kind == "tokens" else 1.0, cap.label)
            for cap in caps
        ]
        try:
            if self._unsettled:
                await self._flush()
            outcomes = await self.backend.acquire(checks, admission.lease)
        except BackendUnavailable as exc:
            reply = self._backend_failed(flow, exc)
            if reply is None:  # admitted without caps, and decided: a retry of this model does not ask again
                flow.state[self.name] = admission
                if model is not None:
                    admission.models.add(model)
            return reply
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
        flow.state[self.name] = admission
        if model is not None:
            admission.models.add(model)
        admission.checks += [(model if "model" in cap.key else None, check) for cap, check in zip(caps, checks)]
        tightest = min(outcomes, key=lambda o: o.remaining / o.limit)
        if tightest.remaining / tightest.limit < admission.share:
            admission.share = tightest.remaining / tightest.limit
            flow.extra_headers.update(_headers(tightest))
        return None

    def _backend_failed(self, flow: Flow, exc: BackendUnavailable) -> LocalReply | None:
        closed = self.settings.on_backend_error == "fail_closed"
        self._warn(exc, "refusing requests with 503 (fail_closed)" if closed
                   else "admitting requests without caps (fail_open)")
        flow.annotations["rate_cap.backend_unavailable"] = True
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
        releases = [c for _, c in admission.checks if c.kind == "concurrent"]
        debits: list[tuple[Check, float]] = []
        if self.counts_tokens:
            # The core records usage from every response (core.usage); the estimate is corrected by it.
            usage = flow.usage
            if usage is not None:
                spent = float(usage["total_tokens"] - admission.estimate)
            elif flow.attempts == 0 or (flow.response_status or 0) >= 400:
                spent = -float(admission.estimate)  # no tokens were spent: give the estimate back
            else:
                spent = 0.0
            served = flow.served_by.model if flow.served_by is not None else None
            # A model tried but not served (its attempts failed) spent nothing: its estimate is given back.
            debits = [(c, spent if model is None or model == served else -float(admission.estimate))
                      for model, c in admission.checks if c.kind == "tokens"]
            debits = [(c, amount) for c, amount in debits if amount]
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


def _part(flow: Flow, part: str, model: str | None) -> str:
    if part == "principal":
        return flow.principal.name if flow.principal is not None else "-"
    if part == "model":
        return model or "-"
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
