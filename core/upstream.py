"""Upstream pools and model names: one httpx client per (API, base URL), names resolved to targets."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable

import httpx

from core.config import Config, ModelProvider
from core.providers.demo import DemoTransport
from core.target import Target, Upstream
from core.transport import AiohttpTransport

log = logging.getLogger("outerloop.upstream")


class Upstreams:
    """Builds the pools and resolves model names (exact provider/id, bare id, alias, default) to targets."""

    def __init__(self, config: Config) -> None:
        self._pools: dict[tuple[str, str], Upstream] = {}
        #: Each model's first entry: names resolve to it; dispatch picks among ``deployments`` (core.balancing).
        self.targets: dict[str, Target] = {}
        #: Every entry of each model: entries with the same model are its deployments.
        self.deployments: dict[str, list[Target]] = {}
        self._by_name: dict[str, Target] = {}
        self.default: Target | None = None
        for provider in config.model_providers:
            target = Target(provider, self._pool(provider))
            self.deployments.setdefault(provider.model, []).append(target)
            target = self.targets.setdefault(provider.model, target)
            if provider.default:
                self.default = target
        #: Agents (top-level `agents:`) by id, as `agent/<id>` entries: deployments for dispatch and balancing,
        #: never resolved by name, so a model listener cannot reach them.
        self.agents: dict[str, Target] = {}
        for agent in config.agents:
            provider = agent.provider()
            target = self.agents[agent.id] = Target(provider, self._pool(provider))
            self.deployments[provider.model] = [target]
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
        found = self._by_name.get(name)
        if found is None:
            found = self._wildcard(name)
        return found

    def _wildcard(self, name: str) -> Target | None:
        """`provider/<any id>` served by a `model: provider/*` entry, the client's id passed through."""
        provider, _, model_id = name.partition("/")
        wildcard = self._by_name.get(provider + "/*") if model_id else None
        return dataclasses.replace(wildcard, served_id=model_id) if wildcard is not None else None

    def names(self) -> Iterable[str]:
        return self.targets.keys()

    async def aclose(self) -> None:
        for pool in self._pools.values():
            await pool.client.aclose()
