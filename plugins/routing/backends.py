"""Builds the configured router backend once per process and shares it across listeners' router filters."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import httpx

from core.transport import AiohttpTransport
from router_model.backend import RouterBackend, RouterModelMissing
from router_model.routes import RouteSet

from plugins.routing.config import Routing

log = logging.getLogger("outerloop.routing")


def build_backend(routing: Routing, routes: RouteSet, max_routes: int = 1) -> RouterBackend:
    """The backend `routing` names. Raises RouterModelMissing when its files are not there.

    ``max_routes``: how many routes a list answer (the plano-orchestrator profile) may name, in order (an agent
    listener's sequence); model routing uses the first.
    """
    if routing.backend == "http":
        if routing.http is None:
            raise RouterModelMissing("routing.backend is http but routing.http is not configured")
        from router_model.http_backend import HttpRouter

        key = routing.http.access_key.get_secret_value() if routing.http.access_key else None
        # The proxy's measured transport, as for upstreams (httpx's own pool costs ~0.3 ms more per decision).
        client = httpx.AsyncClient(
            transport=AiohttpTransport(max_connections=64), trust_env=False,
            headers={"authorization": f"Bearer {key}"} if key else {},
            timeout=httpx.Timeout(routing.http.timeout, connect=min(1.0, routing.http.timeout)))
        return HttpRouter(routing.http.url, routing.http.model, routes, profile=routing.profile,
                          max_conversation_tokens=routing.max_conversation_tokens, client=client,
                          max_routes=max_routes)
    if routing.backend == "embedding":
        if routing.embedding is None:
            raise RouterModelMissing("routing.backend is embedding but routing.embedding is not configured")
        _require_dir(routing.embedding.model_path)
        from router_model.embedding import EmbeddingRouter

        return EmbeddingRouter(routing.embedding.model_path, routes, threshold=routing.embedding.threshold,
                               providers=routing.execution_providers)
    if routing.model_path is None:
        raise RouterModelMissing("routing.model_path is not set (export one with `outerloop router export`)")
    _require_dir(routing.model_path)
    from router_model.onnx_router import OnnxRouter

    return OnnxRouter(routing.model_path, routes, profile=routing.profile, providers=routing.execution_providers,
                      max_conversation_tokens=routing.max_conversation_tokens, max_routes=max_routes)


def fallback_reason(exc: BaseException) -> str:
    """The fallback a failure to build or warm up the backend means: `model_missing` or `engine_error`."""
    return "model_missing" if isinstance(exc, RouterModelMissing) else "engine_error"


def _require_dir(path: str) -> None:
    if not Path(path).is_dir():
        raise RouterModelMissing(f"router model directory {path} does not exist")


class SharedBackend:
    """One backend per worker process, built off the event loop at startup, closed with the last user."""

    def __init__(self, routing: Routing, routes: RouteSet, max_routes: int = 1) -> None:
        self.routing = routing
        self.routes = routes
        self.max_routes = max_routes
        self.backend: RouterBackend | None = None
        #: Why there is no backend, when building it failed; requests then go to the default model.
        self.unavailable: str | None = None
        self._users = 0
        self._lock = asyncio.Lock()
        self._logged: set[str] = set()

    async def acquire(self) -> None:
        async with self._lock:
            self._users += 1
            if self._users > 1:
                return
            try:
                loop = asyncio.get_running_loop()
                backend = await loop.run_in_executor(None, build_backend, self.routing, self.routes,
                                                     self.max_routes)
                started = time.perf_counter()
                try:  # before the listener serves: the first request must not pay for cold caches
                    await loop.run_in_executor(None, backend.warm_up)
                except Exception:
                    await backend.aclose()
                    raise
                self.backend = backend
                log.info("router backend %s ready (%d routes, warmed up in %.0f ms)", backend.name, len(self.routes),
                         (time.perf_counter() - started) * 1000)
            except Exception as exc:
                self.backend = None
                self.unavailable = fallback_reason(exc)
                log.error("router unavailable, every request goes to its requested or default model: %s", exc)

    async def release(self) -> None:
        async with self._lock:
            self._users -= 1
            if self._users == 0 and self.backend is not None:
                await self.backend.aclose()
                self.backend = None

    def log_once(self, reason: str, detail: str) -> None:
        """Fallbacks are logged the first time per reason; traces and metrics carry every one."""
        if reason not in self._logged:
            self._logged.add(reason)
            log.warning("router fell back to the default model (%s): %s; further ones are not logged",
                        reason, detail)
