"""The runtime: everything built once from a loaded config and shared by all requests of one worker process."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from core.asgi import Scope
from core.balancing import Balancers
from core.chain import Chain
from core.config import Config, FilterSpec, Listener
from core.errors import ConfigError, RequestError
from core.filter import FilterContext
from core.flow import Flow
from core.plugins import Registry
from core.providers import Adapter
from core.providers.anthropic_upstream import (
    AnthropicClientOpenAIUpstream,
    OpenAIClientAnthropicUpstream,
    anthropic_count_tokens,
    anthropic_passthrough,
)
from core.providers.openai import openai_embeddings, openai_passthrough
from core.providers.responses_upstream import ChatClientResponsesUpstream
from core.responses_api.call import NativeResponses, ResponsesOverChat
from core.responses_api.store import build_store
from core.state import State
from core.upstream import Upstreams

if TYPE_CHECKING:
    from opentelemetry.trace import TracerProvider

    from core.hookspecs import ListenerEndpoint, Observer
    from core.target import Target


#: What a model without an adapter for the endpoint cannot do, in the 400's words.
_CANNOT = {"embeddings": "cannot make embeddings (they need an OpenAI-shaped model)",
           "count_tokens": "cannot count tokens (counting needs an Anthropic model)"}


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
            ("embeddings", "openai"): openai_embeddings(),
            ("embeddings", "demo"): openai_embeddings(),
            ("count_tokens", "anthropic"): anthropic_count_tokens(),
        }
        # A Responses client is a chat client to the filters: the chat adapters serve it, but natively.
        for interface in ("openai", "demo", "anthropic"):
            self._adapters[("responses", interface)] = ResponsesOverChat(self._adapters[("chat", interface)])
        self._adapters[("responses", "responses")] = NativeResponses()
        self._adapters[("chat", "responses")] = ChatClientResponsesUpstream()
        #: Stored Responses API responses (`responses.store`: this process's memory, or Redis).
        self.responses_store = build_store(config.responses)
        #: Endpoints of listeners that do not serve models (``type: agent``), by port, from the plugin serving
        #: the type (``outerloop_listener_endpoint``); built last, as they use the rest of the runtime.
        self.listener_endpoints: dict[int, ListenerEndpoint] = {}
        for i, listener in enumerate(config.listeners):
            if listener.type == "model":
                continue
            endpoint = registry.manager.hook.outerloop_listener_endpoint(runtime=self, listener=listener)
            if endpoint is None:
                raise ConfigError([f"{config.source}: listeners[{i}].type: no plugin serves {listener.type} "
                                   "listeners"])
            self.listener_endpoints[listener.port] = endpoint

    def _build_chain(self, listener: Listener) -> Chain:
        return self.build_chain(listener, listener.filters)

    def build_chain(self, listener: Listener, specs: Sequence[FilterSpec]) -> Chain:
        """A chain of ``specs`` (a listener's filters, or an agent's on an agent listener) built for ``listener``."""
        filters = []
        for spec in specs:
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

    def listener_endpoint(self, scope: Scope) -> ListenerEndpoint | None:
        """The endpoint of the non-model listener a request arrived on, None on a model listener."""
        server = scope.get("server")
        return self.listener_endpoints.get(server[1]) if server is not None else None

    def adapter(self, flow: Flow, target: Target) -> Adapter:
        """The adapter between the flow's endpoint and the target's interface; a 400 where there is none (an
        embedding asked of an Anthropic model)."""
        found = self._adapters.get((flow.endpoint, target.upstream.api))
        if found is None:
            cannot = _CANNOT.get(flow.endpoint, f"cannot serve {flow.path}")
            raise RequestError(400, f"the model {target.model} ({target.upstream.api} API) {cannot}",
                               "model.unsupported_endpoint", "model")
        return found

    async def startup(self) -> None:
        await self.registry.startup(self.config, self.state)
        for item in self.chains:
            await item.chain.start()
        for endpoint in self.listener_endpoints.values():
            await endpoint.start()

    async def shutdown(self) -> None:
        await self.responses_store.close()
        for endpoint in self.listener_endpoints.values():
            await endpoint.close()
        for item in self.chains:
            await item.chain.close()
        await self.upstreams.aclose()
        await self.registry.shutdown(self.config, self.state)
