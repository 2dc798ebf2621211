"""Serving with hypercorn: one Config per listener built here, all listeners in one loop, N worker processes."""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import signal
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from multiprocessing.synchronize import Event as ProcessEvent
from typing import Any

from hypercorn.asyncio.run import worker_serve
from hypercorn.config import Sockets
from hypercorn.utils import wrap_app

from core import connection
from core.config import Config, Listener
from core.connection import ServerConfig
from core.observe import close_access_log, open_access_log
from core.plugins import Registry, build_registry

log = logging.getLogger("outerloop.server")


def configure_logging(level: str = "info") -> None:
    """Log lines to stderr at `level`, for the CLI and for each worker process."""
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # httpx logs every request at INFO: one line per proxied call is the access log's job, not httpx's.
    logging.getLogger("httpx").setLevel(logging.WARNING)


def hypercorn_config(listener: Listener, config: Config) -> ServerConfig:
    """The one place a listener's YAML becomes hypercorn settings: bind, TLS + ALPN, HTTP/2, drain time,
    keep-alive and the header deadline (core/connection.py enforces it)."""
    hc = ServerConfig()
    host = f"[{listener.address}]" if ":" in listener.address else listener.address
    hc.bind = [f"{host}:{listener.port}"]
    if listener.tls is not None:
        hc.certfile = listener.tls.cert
        hc.keyfile = listener.tls.key
    # h2c with prior knowledge needs no setting: hypercorn recognises the HTTP/2 preface on plaintext.
    hc.alpn_protocols = ["h2", "http/1.1"] if listener.http2 else ["http/1.1"]
    hc.graceful_timeout = config.server.drain_seconds
    hc.keep_alive_timeout = config.server.keep_alive_seconds
    hc.header_timeout = config.server.header_timeout_seconds
    hc.backlog = 1024
    # The access log is outerloop's own JSON line per request (core/observe.py), not hypercorn's.
    hc.accesslog = None
    hc.errorlog = logging.getLogger("hypercorn.error")
    return hc


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


async def serve_listeners(
    app: Any, config: Config, shutdown_trigger: Callable[[], Awaitable[Any]],
    sockets: list[Sockets] | None = None,
) -> None:
    """Serve every listener of `config` with one app until `shutdown_trigger` returns, then drain."""
    connection.install()
    # Outermost, so a trickled body is cut off whoever reads it.
    deadline: Any = connection.BodyDeadline(app, config.server.body_timeout_seconds)
    wrapped = wrap_app(deadline, wsgi_max_body_size=0, mode="asgi")
    servers = []
    for i, listener in enumerate(config.listeners):
        hc = hypercorn_config(listener, config)
        servers.append(worker_serve(wrapped, hc, sockets=sockets[i] if sockets else None,
                                    shutdown_trigger=shutdown_trigger))
    await asyncio.gather(*servers)


def _signal_trigger() -> tuple[asyncio.Event, Callable[[], Awaitable[Any]]]:
    event = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, event.set)
    return event, event.wait


def serve(config_path: str, workers: int | None = None, registry: Registry | None = None) -> int:
    """Run the proxy in the foreground: in-process for one worker, else N spawned workers sharing sockets."""
    from core.app import build_app
    from core.config_loader import load_config
    registry = registry or build_registry()
    config = load_config(config_path, registry)
    count = workers or config.server.workers
    for listener in config.listeners:
        scheme = "https" if listener.tls else "http"
        log.info("listener %s on %s://%s:%d (%s)", listener.name, scheme, listener.address, listener.port,
                 ", ".join(spec.name for spec in listener.filters) or "no filters")
    if count == 1:
        app = build_app(config, registry)

        async def main() -> None:
            _, trigger = _signal_trigger()
            await serve_listeners(app, config, trigger)

        with _access_log(config), asyncio.Runner(loop_factory=_loop_factory()) as runner:
            runner.run(main())
        return 0
    return _serve_workers(config_path, config, count)


@contextmanager
def _access_log(config: Config) -> Iterator[None]:
    """The access log opened where the config says, for as long as this process serves."""
    if config.server.access_log is None:
        yield
        return
    handler = open_access_log(config.server.access_log)
    try:
        yield
    finally:
        close_access_log(handler)


def _serve_workers(config_path: str, config: Config, count: int) -> int:
    sockets = [hypercorn_config(listener, config).create_sockets() for listener in config.listeners]
    ctx = multiprocessing.get_context("spawn")
    stop = ctx.Event()
    processes = [
        ctx.Process(target=_worker, args=(config_path, sockets, stop), name=f"outerloop-worker-{i}")
        for i in range(count)
    ]
    for process in processes:
        process.start()

    def on_signal(*_: Any) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    for process in processes:
        process.join()
    for group in sockets:
        for sock in [*group.secure_sockets, *group.insecure_sockets]:
            sock.close()
    return max((p.exitcode or 0) for p in processes)


def _worker(config_path: str, sockets: list[Sockets], stop: ProcessEvent) -> None:
    from core.app import build_app
    from core.config_loader import load_config
    # The parent handles signals and tells workers through `stop`; a worker ignores SIGINT from the tty.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    registry = build_registry()
    config = load_config(config_path, registry)
    configure_logging(config.server.log_level)
    app = build_app(config, registry)

    async def stopped() -> None:
        while not stop.is_set():
            await asyncio.sleep(0.2)

    with _access_log(config), asyncio.Runner(loop_factory=_loop_factory()) as runner:
        runner.run(serve_listeners(app, config, stopped, sockets))
