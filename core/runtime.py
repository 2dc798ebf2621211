"""The runtime: everything built once from a loaded config and shared by all requests of one worker process."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from core.asgi import Scope
from core.balancing import Balancers
from core.chain import Chain
from core.config import Config, Listener
from core.errors import ConfigError, RequestError
from core.filter import FilterContext
from core.flow import Flow
from core.plugins import Registry
from core.providers import Adapter
from core.providers.anthropic_upstream import (
    AnthropicClientOpenAIUpstream,
    OpenAIClientAnthropicUpstream,
    anthropic_passthrough,
)
from core.providers.openai import openai_passthrough
from core.state import State
from core.upstream import Upstreams

if TYPE_CHECKING:
    from opentelemetry.trace import TracerProvider

    from core.hookspecs import Observer
    from core.target import Target


@dataclass(frozen=True)
class ListenerChain:
    listener: str
    chain: Chain


class Runtime:
    """Everything built once from a config and shared by all requests of one worker process."""

    def __init__(self, config: Config, registry: Registry) -> None:
        if registry.problems:
            raise ConfigError([f"{config.source}: plugins: {p}" for p in registry.problems])
        self.config = config
        self.registry = registry
        self.upstreams = Upstreams(config)
        #: Balancing and outlier state of every model's deployments, for this process.
        self.balancers = Balancers(config, self.upstreams.deployments)
        # What plugins build for this config (a model, a tracer provider, counters), shared by their hooks
        # and filters and gone with the runtime; the config itself stays frozen data.
        self.state = State()
        self.tracer_provider: TracerProvider | None = registry.manager.hook.outerloop_tracer_provider(
            config=config, state=self.state)
        self.tracer = self.tracer_provider.get_tracer("outerloop") if self.tracer_provider is not None else None
        self.access_log = config.server.access_log
        self.observers: list[Observer] = []
        registry.manager.hook.outerloop_register_observers(register=self.observers.append, config=config,
                                                           state=self.state)
        self.chains = [ListenerChain(listener.name, self._build_chain(listener)) for listener in config.listeners]
        self._by_port = {listener.port: chain for listener, chain in zip(config.listeners, self.chains)}
        openai = openai_passthrough()
        #: (the client's endpoint, the upstream's interface) -> the adapter between them.
        self._adapters: dict[tuple[str, str], Adapter] = {
            ("chat", "openai"): openai,
            ("chat", "demo"): openai,
            ("chat", "anthropic"): OpenAIClientAnthropicUpstream(),
            ("messages", "anthropic"): anthropic_passthrough(),
            ("messages", "openai"): AnthropicClientOpenAIUpstream(),
            ("messages", "demo"): AnthropicClientOpenAIUpstream(),
        }

    def _build_chain(self, listener: Listener) -> Chain:
        filters = []
        for spec in listener.filters:
            entry = self.registry.filters[spec.name]
            context = FilterContext(self.config, listener, self.upstreams.resolve, self.state)
            flt = entry.factory(spec.config, context)
            flt.name = spec.name
            filters.append(flt)
        return Chain(filters, self.tracer)

    def chain_for(self, scope: Scope) -> ListenerChain:
        """The listener a request arrived on, by local port; the first one under a foreign bind."""
        server = scope.get("server")
        if server is not None:
            found = self._by_port.get(server[1])
            if found is not None:
                return found
        return self.chains[0]

    def adapter(self, flow: Flow, target: Target) -> Adapter:
        """The adapter between the flow's endpoint and the target's interface; a 400 where there is none (an
        embedding asked of an Anthropic model)."""
        found = self._adapters.get((flow.endpoint, target.upstream.api))
        if found is None:
            raise RequestError(400, f"the model {target.model} ({target.upstream.api} API) cannot serve {flow.path}",
                               "model.unsupported_endpoint", "model")
        return found

    async def startup(self) -> None:
        await self.registry.startup(self.config, self.state)
        for item in self.chains:
            await item.chain.start()

    async def shutdown(self) -> None:
        for item in self.chains:
            await item.chain.close()
        await self.upstreams.aclose()
        await self.registry.shutdown(self.config, self.state)
