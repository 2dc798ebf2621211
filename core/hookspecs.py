"""The plugin API: the pluggy hooks outerloop calls at startup and shutdown. These docstrings are the reference.

A plugin is any module or object with functions decorated by ``core.hookspecs.hookimpl`` (or
``pluggy.HookimplMarker("outerloop")``). Built-in plugins and third-party packages register the same way;
a package is discovered through the ``outerloop`` entry-point group::

    [project.entry-points.outerloop]
    my_filter = "my_package.plugin"

Hooks run at startup and shutdown only: pluggy calls are synchronous, and per-request work happens in the
async methods of the filters that plugins register.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    import argparse

    from core.config import Config
    from core.plugins import RegisterConfig, RegisterFilter, RegisterRoute

hookspec = pluggy.HookspecMarker("outerloop")
hookimpl = pluggy.HookimplMarker("outerloop")


@hookspec
def outerloop_register_filters(register: RegisterFilter) -> None:
    """Register named filter factories.

    Call ``register(name, factory, config_model=None, terminal=False)`` once per filter:

    - ``name`` is what users write in a listener's ``filters:`` list (``rate_cap``).
    - ``factory(settings, context)`` builds the filter once per listener that enables it; ``settings`` is the
      validated instance of ``config_model`` (a pydantic model; its JSON Schema is part of
      ``outerloop schema``), ``context`` a :class:`core.filter.FilterContext` with the whole config.
    - ``terminal=True`` marks a filter that must come last in a chain (the router).

    Registering does not enable: YAML decides which filters run and in which order.
    """


@hookspec
def outerloop_register_config(register: RegisterConfig) -> None:
    """Register top-level config sections: ``register("routing", RoutingConfig)``.

    The section is validated by the model (errors name file, path and reason) and reaches plugins and
    filters as ``config.section("routing")``; an absent section gets the model's defaults.
    """


@hookspec
def outerloop_register_routes(register: RegisterRoute, config: Config) -> None:
    """Add HTTP endpoints beside the proxy's own: ``register(path, endpoint, methods=("POST",))``.

    ``endpoint`` is an async function taking a starlette ``Request`` and returning a ``Response``, or a
    pure ASGI app. Endpoints run on every listener, outside the filter chains.
    """


@hookspec
def outerloop_register_observers(register: Any, config: Config) -> None:
    """Watch finished requests: ``register(observer)`` with ``observer(flow, error) -> None``.

    Observers run once per request, after every filter's ``on_complete``, synchronously on the event loop:
    they must be cheap (count, record) and must not raise. Metrics are built this way.
    """


@hookspec
def outerloop_register_commands(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add ``outerloop`` CLI subcommands. Each parser sets ``func=callable(args) -> int`` as its default."""


@hookspec(firstresult=True)
def outerloop_tracer_provider(config: Config) -> Any:
    """Return an OpenTelemetry ``TracerProvider`` to trace requests with, or None (the default: no tracing).

    With a provider, the core wraps the app in OpenTelemetry's ASGI middleware (outermost) and opens child
    spans for each filter phase and for the upstream call, with GenAI semantic-convention attributes.
    The first plugin returning one wins. The built-in telemetry plugin returns one when `tracing.enabled`.
    """


@hookspec
def outerloop_startup(config: Config) -> Awaitable[None] | None:
    """Called once per worker process before serving, with the validated config.

    Open shared resources here. Return an awaitable to do async work; the server awaits it before
    accepting requests. Filters also get ``start()`` / ``close()`` calls of their own.
    """


@hookspec
def outerloop_shutdown(config: Config) -> Awaitable[None] | None:
    """Called once per worker process after the last request drained. Close what startup opened."""


@hookspec
def outerloop_wrap_app(app: Any, config: Config) -> Any:
    """Return ``app`` wrapped in ASGI middleware, or None to leave it. Telemetry uses this to sit outermost.

    Wrappers are applied one after another, each around the result of the previous.
    """
