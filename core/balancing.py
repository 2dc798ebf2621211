"""Deployments of a model: which one takes the next attempt, and which are ejected for failing (per process).

Several ``model_providers`` entries with the same ``model`` are its deployments. A :class:`Balancer` spreads
attempts over them (smooth weighted round robin as nginx does it, or least outstanding) and runs Envoy's
consecutive-failure outlier detection: after N connect errors or 5xx in a row a deployment is ejected for
``base_ejection_seconds`` times its number of ejections (capped); the first pick after that tries it again
(a probe), which restores it on success and ejects it again on failure. The last healthy deployment of a model
is never ejected.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

from core.config import Config, LoadBalancing, OutlierDetection, RetryPolicy
from core.target import Target

log = logging.getLogger("outerloop.balancing")


@dataclass(eq=False, slots=True)
class Deployment:
    """One ``model_providers`` entry of a model, and what this process knows of its health."""

    target: Target
    weight: int
    #: Smooth weighted round robin's running score.
    current: int = 0
    #: Attempts sent to it and not finished yet.
    outstanding: int = 0
    #: Connect errors or 5xx in a row.
    failures: int = 0
    ejections: int = 0
    #: `time.monotonic()` until which it is ejected; 0 when it is not.
    ejected_until: float = 0.0
    #: Picked after an ejection ended; its next outcome decides.
    probing: bool = False

    @property
    def host(self) -> str:
        """The deployment's base URL host (and port), for logs, spans and /healthz."""
        url = self.target.upstream.base_url
        return url.partition("://")[2].partition("/")[0] or url


@dataclass(frozen=True, slots=True)
class Event:
    """An ejection or a probe, for the request's annotations and the metrics."""

    kind: str  # "ejected", "probe", "restored"
    model: str
    host: str


@dataclass(eq=False)
class Balancer:
    """The deployments of one model, its balancing and its retry policy."""

    model: str
    deployments: list[Deployment]
    balancing: LoadBalancing
    policy: RetryPolicy
    outlier: OutlierDetection
    clock: Callable[[], float] = time.monotonic
    _turn: int = field(default=0, repr=False)

    def pick(self, exclude: Iterable[Deployment] = ()) -> tuple[Deployment | None, Event | None]:
        """The deployment for the next attempt (None when every healthy one is excluded), and the probe
        event when it is one whose ejection just ended."""
        now = self.clock()
        skip = set(exclude)
        candidates: list[Deployment] = []
        for dep in self.deployments:
            if dep in skip:
                continue
            if dep.ejected_until:
                if dep.ejected_until > now:
                    continue
                # The ejection is over: this request probes it.
                dep.ejected_until = 0.0
                dep.probing = True
                log.info("model %s: deployment %s: ejection over, probing it", self.model, dep.host)
                return dep, Event("probe", self.model, dep.host)
            candidates.append(dep)
        if not candidates:
            return None, None
        if len(candidates) == 1:
            return candidates[0], None
        if self.balancing == "least_outstanding":
            self._turn += 1
            start = self._turn % len(candidates)
            rotated = candidates[start:] + candidates[:start]
            return min(rotated, key=lambda d: d.outstanding / d.weight), None
        # nginx's smooth weighted round robin: spread, not bursts, and exact over a cycle of the weights' sum.
        total = 0
        best = candidates[0]
        for dep in candidates:
            dep.current += dep.weight
            total += dep.weight
            if dep.current > best.current:
                best = dep
        best.current -= total
        return best, None

    def succeeded(self, dep: Deployment) -> Event | None:
        """An answer that was not a 5xx: the failure streak ends, a probe restores the deployment."""
        dep.failures = 0
        if not dep.probing:
            return None
        dep.probing = False
        dep.ejections = 0
        log.info("model %s: deployment %s: probe succeeded, back in", self.model, dep.host)
        return Event("restored", self.model, dep.host)

    def failed(self, dep: Deployment) -> Event | None:
        """A connect error or a 5xx: ejects the deployment after enough of them in a row (a failed probe at once)."""
        dep.failures += 1
        if not dep.probing and dep.failures < self.outlier.consecutive_failures:
            return None
        now = self.clock()
        if not any(other is not dep and other.ejected_until <= now for other in self.deployments):
            # The last healthy one: ejecting it would leave the model with nothing to try.
            dep.probing = False
            return None
        dep.ejections += 1
        seconds = min(self.outlier.base_ejection_seconds * dep.ejections, self.outlier.max_ejection_seconds)
        dep.ejected_until = now + seconds
        dep.probing = False
        log.warning("model %s: deployment %s ejected for %gs after %d consecutive failures (ejection %d)",
                    self.model, dep.host, seconds, dep.failures, dep.ejections)
        dep.failures = 0
        return Event("ejected", self.model, dep.host)

    def health(self) -> list[dict[str, Any]]:
        now = self.clock()
        return [{
            "base_url": dep.target.upstream.base_url,
            "weight": dep.weight,
            "state": "ejected" if dep.ejected_until > now else "probing" if dep.probing else "healthy",
            "ejected_for_seconds": round(max(0.0, dep.ejected_until - now), 3),
            "ejections": dep.ejections,
            "consecutive_failures": dep.failures,
            "outstanding": dep.outstanding,
        } for dep in self.deployments]


class Balancers:
    """Every model's balancer, built once per runtime (so per worker process, as Envoy's outlier state)."""

    def __init__(self, config: Config, deployments: dict[str, list[Target]]) -> None:
        self._by_model: dict[str, Balancer] = {}
        for model, targets in deployments.items():
            first = targets[0].provider
            self._by_model[model] = Balancer(
                model, [Deployment(t, t.provider.weight) for t in targets],
                first.load_balancing or config.load_balancing, first.retry_policy or config.retry_policy,
                config.outlier_detection)

    def __getitem__(self, model: str) -> Balancer:
        return self._by_model[model]

    def fallbacks(self, model: str) -> list[str]:
        """The names a model's retry policy falls back to, in order."""
        balancer = self._by_model.get(model)
        return balancer.policy.fallback_models if balancer is not None else []

    def health(self) -> dict[str, list[dict[str, Any]]]:
        return {model: balancer.health() for model, balancer in self._by_model.items()}


def backoff_seconds(policy: RetryPolicy, retry: int) -> float:
    """The wait before the `retry`-th retry: exponential, capped, with full jitter unless turned off."""
    backoff = policy.backoff
    cap = min(backoff.max_ms, backoff.base_ms * 2 ** (retry - 1)) / 1000
    return random.uniform(0, cap) if backoff.jitter else cap


def retry_after_seconds(value: str | None) -> float | None:
    """A Retry-After header (delay-seconds or an HTTP date) as seconds from now; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())
