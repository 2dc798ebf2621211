"""The plugin API: the pluggy hooks outerloop calls at startup and shutdown. These docstrings are the reference.

A plugin is any module or object with functions decorated by ``core.hookspecs.hookimpl`` (or
``pluggy.HookimplMarker("outerloop")``). Built-in plugins and third-party packages register the same way;
a package is discovered through the ``outerloop`` entry-point group::

    [project.entry-points.outerloop]
    my_filter = "my_package.plugin"

Hooks run at startup and shutdown only: pluggy calls are synchronous, and per-request work happens in the
async methods of the filters that plugins register.

The host calls every hook through pluggy (``pm.hook.<name>(**kwargs)``), so everything pluggy documents holds:
a hookimpl may take any subset of the spec's arguments (``def outerloop_startup(): ...``), and new arguments
can be added to a spec without breaking old plugins; ``@hookimpl(tryfirst=True)`` / ``trylast=True`` order
the calls (otherwise the plugin registered last runs first); ``@hookimpl(wrapper=True)`` wraps the other
implementations and may change their result.

``state`` (a :class:`core.state.State`) belongs to the running config, like starlette's ``app.state``: what
a plugin builds from the config (a model, a tracer provider, metric counters) is kept there, shared between
its hooks and its filters (``context.state``), and dropped with the runtime. The config itself is frozen data.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias

import pluggy

from core.state import State

if TYPE_CHECKING:
    import argparse

    from opentelemetry.trace import TracerProvider
    from pydantic import BaseModel
    from starlette.requests import Request
    from starlette.responses import Response

    from core.asgi import ASGIApp, Receive, Scope, Send
    from core.config import Config, Listener
    from core.filter import Filter, FilterContext
    from core.flow import Flow

__all__ = [
    "Endpoint", "FilterFactory", "ListenerEndpoint", "Middleware", "Observer", "RegisterConfig", "RegisterFilter", "RegisterObserver",
    "RegisterRoute", "State", "hookimpl", "hookspec",
]

hookspec = pluggy.HookspecMarker("outerloop")
hookimpl = pluggy.HookimplMarker("outerloop")

#: Builds a filter from its validated settings (an instance of the ``config_model`` it was registered with:
#: each factory takes its own model, hence ``Any``) and the :class:`core.filter.FilterContext`.
FilterFactory: TypeAlias = "Callable[[Any, FilterContext], Filter]"
#: An HTTP endpoint: an async function from a starlette ``Request`` to a ``Response``, or a pure ASGI app.
Endpoint: TypeAlias = "Callable[[Request], Awaitable[Response]] | ASGIApp"
#: Watches a finished request: ``observer(flow, error)``, ``error`` None when the request went well.
Observer: TypeAlias = "Callable[[Flow, BaseException | None], None]"
#: Wraps the app in ASGI middleware: ``middleware(app)`` returns the wrapped app.
Middleware: TypeAlias = "Callable[[ASGIApp], ASGIApp]"


class ListenerEndpoint(Protocol):
    """What serves the proxy paths (chat completions, messages) of a listener that is not a model listener."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None: ...

    async def start(self) -> None:
        """Once per worker before serving (after the listeners' chains started)."""

    async def close(self) -> None:
        """Once per worker after draining."""


class RegisterFilter(Protocol):
    """The ``register`` of :func:`outerloop_register_filters`."""

    def __call__(
        self, name: str, factory: FilterFactory, config_model: type[BaseModel] | None = None,
        terminal: bool = False,
    ) -> None: ...


class RegisterConfig(Protocol):
    """The ``register`` of :func:`outerloop_register_config`."""

    def __call__(self, name: str, model: type[BaseModel]) -> None: ...


class RegisterRoute(Protocol):
    """The ``register`` of :func:`outerloop_register_routes`."""

    def __call__(self, path: str, endpoint: Endpoint, methods: Iterable[str] = ("POST",)) -> None: ...


class RegisterObserver(Protocol):
    """The ``register`` of :func:`outerloop_register_observers`."""

    def __call__(self, observer: Observer) -> None: ...


@hookspec
def outerloop_register_filters(register: RegisterFilter) -> None:
    """Register named filter factories.

    Call ``register(name, factory, config_model=None, terminal=False)`` once per filter:

    - ``name`` is what users write in a listener's ``filters:`` list (``rate_cap``).
    - ``factory(settings, context)`` builds the filter once per listener that enables it; ``settings`` is the
      validated instance of ``config_model`` (a pydantic model; its JSON Schema is part of
      ``outerloop schema``), ``context`` a :class:`core.filter.FilterContext` with the whole config and the
      runtime's ``state`` (for objects every listener's filter shares, like a loaded model).
    - ``terminal=True`` marks a filter that must come last in a chain (the router).

    Registering does not enable: YAML decides which filters run and in which order. A name registered by two
    plugins is a startup error naming both; the first registration (in pluggy's call order) is the one listed.
    """


@hookspec
def outerloop_register_config(register: RegisterConfig) -> None:
    """Register top-level config sections: ``register("routing", RoutingConfig)``.

    The section is validated by the model (errors name file, path and reason) and reaches plugins and
    filters as ``config.section("routing")``; an absent section gets the model's defaults.
    """


@hookspec
def outerloop_register_routes(register: RegisterRoute, config: Config, state: State) -> None:
    """Add HTTP endpoints beside the proxy's own: ``register(path, endpoint, methods=("POST",))``.

    ``endpoint`` is an async function taking a starlette ``Request`` and returning a ``Response``, or a
    pure ASGI app. Endpoints run on every listener, outside the filter chains; on a listener with
    authenticating filters (``auth``) those run first and answer an unauthenticated caller themselves (the
    endpoint finds the flow, with ``principal``, in ``scope["outerloop.flow"]``). Called once per runtime,
    after ``outerloop_register_observers``.
    """


@hookspec
def outerloop_register_observers(register: RegisterObserver, config: Config, state: State) -> None:
    """Watch finished requests: ``register(observer)`` with ``observer(flow, error) -> None``.

    Observers run once per request, after every filter's ``on_complete``, synchronously on the event loop:
    they must be cheap (count, record) and must not raise. Metrics are built this way: the counters live in
    ``state``, where the metrics endpoint (``outerloop_register_routes``) finds the same object.
    """


@hookspec
def outerloop_register_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``outerloop`` CLI subcommands. Each parser sets ``func=callable(args) -> int`` as its default."""


@hookspec(firstresult=True)
def outerloop_tracer_provider(config: Config, state: State) -> TracerProvider | None:
    """Return an OpenTelemetry ``TracerProvider`` to trace requests with, or None (the default: no tracing).

    With a provider, the core wraps the app in OpenTelemetry's ASGI middleware (outermost) and opens child
    spans for each filter phase and for the upstream call, with GenAI semantic-convention attributes.
    The first plugin returning one wins (``tryfirst`` to go ahead of the others). The built-in telemetry
    plugin returns one when ``tracing.enabled``, kept in ``state`` and shut down with it.
    """


@hookspec(firstresult=True)
def outerloop_listener_endpoint(runtime: Any, listener: Listener) -> ListenerEndpoint | None:
    """Serve a listener whose ``type`` is not ``model``: return its :class:`ListenerEndpoint`, or None when the
    type is another plugin's.

    Called once per such listener when the runtime is built; ``runtime`` is the :class:`core.runtime.Runtime`
    (typed loosely: the runtime imports this module). The endpoint gets the listener's requests to the proxy
    paths (``/v1/chat/completions``, ``/chat/completions``, ``/v1/messages``, ``/v1/responses``,
    ``/responses``); the listener's own chain
    (``runtime.chain_for(scope)``) is built and started as any listener's. The built-in agents plugin serves
    ``type: agent``. A listener type no plugin serves is a config error.
    """


@hookspec
def outerloop_startup(config: Config, state: State) -> Awaitable[None] | None:
    """Called once per worker process before serving, with the validated config.

    Open shared resources here. Return an awaitable to do async work; the server awaits it before
    accepting requests. Filters also get ``start()`` / ``close()`` calls of their own.
    """


@hookspec
def outerloop_shutdown(config: Config, state: State) -> Awaitable[None] | None:
    """Called once per worker process after the last request drained. Close what startup opened."""


@hookspec
def outerloop_wrap_app(config: Config, state: State) -> Middleware | None:
    """Return ASGI middleware to wrap the app in, ``middleware(app) -> app``, or None to leave it.

    Every result wraps the app: pluggy's first result is the outermost, so ``@hookimpl(tryfirst=True)``
    puts a middleware outside the others and ``trylast=True`` next to the proxy's own routes. OpenTelemetry's
    middleware, when tracing is on, sits outside them all, so its server span covers every middleware.
    A ``wrapper=True`` hookimpl receives the list of middleware and may return it changed.
    """
