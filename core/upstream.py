"""Upstream pools and model names: one httpx client per (API, base URL), names resolved to targets."""

from __future__ import annotations

import logging
from collections.abc import Iterable

import httpx

from core.config import Config, ModelProvider
from core.providers.demo import DemoTransport
from core.target import Target, Upstream
from core.transport import AiohttpTransport

log = logging.getLogger("outerloop.upstream")

# Statuses after which the next candidate is tried: nothing reached the client yet, and another model
# may well succeed (rate limited, overloaded, or broken upstream).
RETRYABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504, 529})


class Upstreams:
    """Builds the pools and resolves model names (exact provider/id, bare id, alias, default) to targets."""

    def __init__(self, config: Config) -> None:
        self._pools: dict[tuple[str, str], Upstream] = {}
        self.targets: dict[str, Target] = {}
        self._by_name: dict[str, Target] = {}
        self.default: Target | None = None
        for provider in config.model_providers:
            target = Target(provider, self._pool(provider))
            self.targets[provider.model] = target
            if provider.default:
                self.default = target
        # Bare ids resolve only where unambiguous; the full provider/id always does.
        bare: dict[str, list[Target]] = {}
        for target in self.targets.values():
            bare.setdefault(target.model_id, []).append(target)
        for model_id, found in bare.items():
            if len(found) == 1:
                self._by_name[model_id] = found[0]
        self._by_name.update(self.targets)
        for alias, name in config.model_aliases.items():
            self._by_name[alias] = self._by_name.get(name) or bare[name][0]

    def _pool(self, provider: ModelProvider) -> Upstream:
        key = (provider.api, provider.url)
        pool = self._pools.get(key)
        if pool is not None:
            return pool
        limits_of = provider.timeouts
        timeout = httpx.Timeout(limits_of.first_byte, connect=limits_of.connect, pool=limits_of.connect)
        limits = httpx.Limits(max_connections=provider.max_connections)
        transport: httpx.AsyncBaseTransport
        if provider.api == "demo":
            transport = DemoTransport()
            base_url = "http://demo.outerloop.invalid/v1"
        else:
            transport = AiohttpTransport(max_connections=provider.max_connections)
            base_url = provider.url
        client = httpx.AsyncClient(transport=transport, timeout=timeout, limits=limits, trust_env=False)
        pool = Upstream(provider.api, base_url, client, transport)
        self._pools[key] = pool
        return pool

    def resolve(self, name: str | None) -> Target | None:
        """The target a model name means, or the default for no name / "auto"; None if unknown."""
        if name is None or name == "auto":
            return self.default
        return self._by_name.get(name)

    def names(self) -> Iterable[str]:
        return self.targets.keys()

    async def aclose(self) -> None:
        for pool in self._pools.values():
            await pool.client.aclose()
