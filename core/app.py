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
from core.observe import open_access_log
from core.plugins import Registry, build_registry
from core.proxy import ProxyEndpoint
from core.responses import send_body
from core.runtime import Runtime

if TYPE_CHECKING:
    from core.hookspecs import Middleware

log = logging.getLogger("outerloop")


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
            Route("/v1/models", _get_only(self.models)),
            Route("/healthz", _get_only(self.healthz)),
        ]
        for entry in runtime.registry.routes(runtime.config, runtime.state):
            routes.append(Route(entry.path, entry.endpoint, methods=list(entry.methods) or None))
        self.router = Router(routes=routes, default=_not_found)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        scope["outerloop.runtime"] = self.runtime
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
        upstreams = self.runtime.upstreams
        data = []
        for name in [*upstreams.names(), *self.runtime.config.model_aliases]:
            # An alias is owned by the provider of the model it points to.
            target = upstreams.resolve(name)
            owner = target.provider.provider if target is not None else name.partition("/")[0]
            data.append({"id": name, "object": "model", "created": 0, "owned_by": owner})
        return JSONResponse({"object": "list", "data": data})

    async def healthz(self, request: Request) -> Response:
        return JSONResponse({"status": "ok", "listeners": [c.listener for c in self.runtime.chains]})


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
