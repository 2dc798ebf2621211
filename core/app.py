"""The ASGI app: listeners' chains built from config, the proxy and info endpoints, lifespan of plugins."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route, Router

from core.asgi import ASGIApp, Receive, Scope, Send
from core.config import Config
from core.config_loader import load_config
from core.errors import error_body
from core.exchange import Exchange
from core.flow import Flow, repeated_header
from core.observe import open_access_log
from core.plugins import Registry, build_registry
from core.proxy import ProxyEndpoint
from core.resolve import usable_models
from core.responses_api.endpoint import StoredResponses
from core.responses import send_body
from core.runtime import Runtime

if TYPE_CHECKING:
    from core.hookspecs import Middleware

log = logging.getLogger("outerloop")


#: The proxy paths a non-model listener's endpoint serves (``core.hookspecs.ListenerEndpoint``).
LISTENER_PATHS = frozenset({"/v1/chat/completions", "/chat/completions", "/v1/messages", "/v1/responses",
                            "/responses"})
#: The proxy paths only model listeners serve: on another listener they are a 404, not a way to its models.
MODEL_PATHS = frozenset({"/v1/embeddings", "/embeddings", "/v1/messages/count_tokens"})
_OWN_PATHS = LISTENER_PATHS | MODEL_PATHS


class App:
    """The ASGI application: starlette routing, proxy endpoints in pure ASGI, lifespan for plugins."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        # Each listener's server runs the lifespan protocol; the runtime starts on the first and stops
        # after the last, so every listener waits for one shared startup.
        self._lifespans = 0
        self._started: asyncio.Future[None] | None = None
        routes: list[BaseRoute] = [
            Route("/v1/chat/completions", ProxyEndpoint(runtime, "openai")),
            Route("/chat/completions", ProxyEndpoint(runtime, "openai")),
            Route("/v1/messages", ProxyEndpoint(runtime, "anthropic")),
            Route("/v1/responses", ProxyEndpoint(runtime, "openai", "responses")),
            Route("/responses", ProxyEndpoint(runtime, "openai", "responses")),
            Route("/v1/responses/{response_id}", Authenticated(runtime, StoredResponses(runtime))),
            Route("/v1/responses/{response_id}/input_items",
                  Authenticated(runtime, StoredResponses(runtime, items=True))),
            Route("/responses/{response_id}", Authenticated(runtime, StoredResponses(runtime))),
            Route("/responses/{response_id}/input_items", Authenticated(runtime, StoredResponses(runtime, items=True))),
            Route("/v1/embeddings", ProxyEndpoint(runtime, "openai", "embeddings")),
            Route("/embeddings", ProxyEndpoint(runtime, "openai", "embeddings")),
            Route("/v1/messages/count_tokens", ProxyEndpoint(runtime, "anthropic", "count_tokens")),
            Route("/v1/models", Authenticated(runtime, _get_only(self.models))),
            # Open, for load balancers: it says nothing but that this process serves. `?verbose=1` adds the
            # deployments' health (core.balancing), guarded like the other endpoints.
            Route("/healthz", _Verbose(_get_only(self.healthz),
                                       Authenticated(runtime, _get_only(self.healthz_verbose)))),
        ]
        for entry in runtime.registry.routes(runtime.config, runtime.state):
            route = Route(entry.path, entry.endpoint, methods=list(entry.methods) or None)
            # Plugin endpoints (/metrics) are guarded by the listener's auth like the proxy's own.
            route.app = Authenticated(runtime, route.app)
            routes.append(route)
        # No trailing-slash redirects: starlette builds their Location from the client's Host header. A path
        # with a slash more is another path, so a 404.
        self.router = Router(routes=routes, default=_not_found, redirect_slashes=False)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        scope["outerloop.runtime"] = self.runtime
        if self.runtime.listener_endpoints and scope["type"] == "http" and scope["path"] in _OWN_PATHS:
            # An agent listener's chat and messages paths are its endpoint's; /healthz, /metrics stay shared.
            endpoint = self.runtime.listener_endpoint(scope)
            if endpoint is not None:
                await (endpoint if scope["path"] in LISTENER_PATHS else _not_found)(scope, receive, send)
                return
        await self.router(scope, receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self._lifespans += 1
                try:
                    if self._started is None:
                        self._started = asyncio.get_running_loop().create_future()
                        try:
                            await self.runtime.startup()
                        except BaseException as exc:
                            self._started.set_exception(exc)
                            raise
                        self._started.set_result(None)
                    else:
                        await asyncio.shield(self._started)
                except Exception as exc:
                    log.exception("startup failed")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                self._lifespans -= 1
                try:
                    if self._lifespans == 0:
                        await self.runtime.shutdown()
                finally:
                    await send({"type": "lifespan.shutdown.complete"})
                return

    async def models(self, request: Request) -> Response:
        """The models and aliases the caller may use (all on a listener without auth)."""
        upstreams = self.runtime.upstreams
        flow: Flow | None = request.scope.get("outerloop.flow")
        names = [*upstreams.names(), *self.runtime.config.model_aliases]
        if flow is not None and flow.principal is not None:
            names = usable_models(flow.principal, upstreams, names)
        elif self.runtime.chain_for(request.scope).chain.authenticates:
            names = []
        data = []
        for name in names:
            # An alias is owned by the provider of the model it points to.
            target = upstreams.resolve(name)
            owner = target.provider.provider if target is not None else name.partition("/")[0]
            data.append({"id": name, "object": "model", "created": 0, "owned_by": owner})
        return JSONResponse({"object": "list", "data": data})

    async def healthz(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def healthz_verbose(self, request: Request) -> Response:
        """This process's view of every model's deployments: healthy, ejected (for how long) or probing."""
        return JSONResponse({"status": "ok", "models": self.runtime.balancers.health()})


class _Verbose:
    """`plain` for a bare request, `verbose` when the query asks for details (`?verbose=1`)."""

    def __init__(self, plain: ASGIApp, verbose: ASGIApp) -> None:
        self.plain = plain
        self.verbose = verbose

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        query = scope.get("query_string", b"").decode("latin-1")
        verbose = any(part.partition("=")[0] == "verbose" and part.partition("=")[2] not in ("0", "false")
                      for part in query.split("&"))
        await (self.verbose if verbose else self.plain)(scope, receive, send)


class Authenticated:
    """An endpoint beside the proxy's, guarded by the listener's authenticating filters (``auth``).

    They run on a flow built for this request, and their LocalReply (a 401) is the answer as they wrote it.
    The endpoint finds the flow, with its ``principal``, in ``scope["outerloop.flow"]``. On a listener that
    does not authenticate, the endpoint is open.
    """

    def __init__(self, runtime: Runtime, endpoint: ASGIApp) -> None:
        self.runtime = runtime
        self.endpoint = endpoint

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        listener = self.runtime.chain_for(scope)
        if not listener.chain.authenticates:
            await self.endpoint(scope, receive, send)
            return
        api = "anthropic" if scope["path"].startswith("/v1/messages") else "openai"
        flow = Flow.of_request(scope, listener.listener, api)
        exchange = Exchange(flow, send)
        repeated = repeated_header(scope["headers"], flow.headers)
        if repeated is not None:
            await exchange.reply(400, f"header {repeated} is given more than once", "request.duplicate_header")
            return
        reply = await listener.chain.authenticate(flow)
        if reply is not None:
            await exchange.local_reply(reply)
            return
        scope["outerloop.flow"] = flow
        await self.endpoint(scope, receive, send)


class _get_only:  # noqa: N801 - used like a decorator
    """A GET endpoint answering other methods with a 405 in OpenAI's error shape (starlette's is plain text)."""

    def __init__(self, endpoint: Callable[[Request], Any]) -> None:
        self.endpoint = endpoint

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] not in ("GET", "HEAD"):
            body = error_body("openai", 405, f"method {scope['method']} not allowed on {scope['path']}; use GET",
                              "request.method_not_allowed")
            await send_body(send, 405, body, [(b"allow", b"GET, HEAD")])
            return
        response = await self.endpoint(Request(scope, receive))
        await response(scope, receive, send)


async def _not_found(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return
    api = "anthropic" if scope["path"].startswith("/v1/messages") else "openai"
    await send_body(send, 404, error_body(api, 404, f"no endpoint {scope['path']}", "request.not_found"))


def build_app(config: Config, registry: Registry) -> ASGIApp:
    runtime = Runtime(config, registry)
    app: ASGIApp = App(runtime)
    middlewares: list[Middleware] = registry.manager.hook.outerloop_wrap_app(config=config, state=runtime.state)
    # pluggy's first result is the outermost, so it is applied last (pluggy leaves out None results).
    for middleware in reversed(middlewares):
        app = middleware(app)
    if runtime.tracer_provider is not None:
        from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware

        # Outermost, so the server span covers every plugin middleware, filter and upstream call.
        app = cast(ASGIApp, OpenTelemetryMiddleware(app, tracer_provider=runtime.tracer_provider,
                                                    exclude_spans=["receive", "send"]))
    return app


def create_app(config_path: str | None = None) -> ASGIApp:
    """Factory for ASGI servers: `hypercorn 'core.app:create_app()'` reads OUTERLOOP_CONFIG."""
    path = config_path or os.environ.get("OUTERLOOP_CONFIG", "configs/default.yaml")
    registry = build_registry()
    config = load_config(path, registry)
    if config.server.access_log is not None:
        # Under another server's CLI this process serves until it exits: the log stays open as long.
        open_access_log(config.server.access_log)
    return build_app(config, registry)
