"""Test harness: real hypercorn servers on 127.0.0.1 in background threads, free ports, a Redis server."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml
from hypercorn.asyncio import serve as hypercorn_serve
from hypercorn.config import Config as HypercornConfig
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from core.app import build_app
from core.config import Config
from core.config_loader import load_config
from core.flow import Flow
from core.hookspecs import RegisterObserver, hookimpl
from core.plugins import Registry, build_registry
from core.server import serve_listeners


def eventually(check: Any, timeout: float = 5.0) -> Any:
    """The first truthy result of ``check()`` within ``timeout`` seconds (for work a proxy finishes after the
    client has its last byte: settling, logging, counting); the last result if none came."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(0.01)


class FlowRecorder:
    """A plugin keeping every finished request's flow, as the metrics observer sees it."""

    def __init__(self) -> None:
        self.flows: list[Flow] = []

    @hookimpl
    def outerloop_register_observers(self, register: RegisterObserver) -> None:
        register(lambda flow, error: self.flows.append(flow))

    def wait(self, count: int) -> list[Flow]:
        """The flows, once ``count`` requests have finished."""
        assert eventually(lambda: len(self.flows) >= count), f"{len(self.flows)} of {count} requests finished"
        return self.flows


class MemoryTracing:
    """A plugin handing the core a tracer provider that keeps finished spans in ``exporter``."""

    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.provider = TracerProvider()
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))

    @hookimpl
    def outerloop_tracer_provider(self, config: Config) -> Any:
        return self.provider


def open_sockets() -> int:
    """Sockets this process holds open (the proxies under test run in it): for "back to baseline" checks."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            count += os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
        except OSError:
            pass
    return count


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


class LoopThread:
    """An asyncio loop in a daemon thread, so sync clients (openai's sync SDK) can call servers in tests."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Any, timeout: float = 30.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@contextmanager
def serve_app(app: Any, port: int | None = None, certfile: str | None = None,
              keyfile: str | None = None) -> Iterator[int]:
    """Serve any ASGI app with a real hypercorn on 127.0.0.1; yields the port."""
    port = port or free_port()
    config = HypercornConfig()
    config.bind = [f"127.0.0.1:{port}"]
    config.graceful_timeout = 1.0
    if certfile:
        config.certfile, config.keyfile = certfile, keyfile
    runner = LoopThread()
    stop = asyncio.Event()
    future = asyncio.run_coroutine_threadsafe(hypercorn_serve(app, config, shutdown_trigger=_waiter(stop)),
                                              runner.loop)
    try:
        wait_for_port(port)
        yield port
    finally:
        runner.loop.call_soon_threadsafe(stop.set)
        future.result(10)
        runner.stop()


def _waiter(event: asyncio.Event) -> Any:
    async def wait() -> None:
        await event.wait()
    return wait


class Proxy:
    """A running outerloop: its config, the ports of its listeners, and the URL of the first."""

    def __init__(self, config: Config, ports: list[int], app: Any,
                 loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.config = config
        self.ports = ports
        self.app = app
        #: The loop the proxy runs on (in its own thread).
        self.loop = loop
        self.url = f"http://127.0.0.1:{ports[0]}"

    def tasks(self) -> int:
        """How many asyncio tasks the proxy's loop holds (this count's own task not included)."""
        assert self.loop is not None

        async def count() -> int:
            return len(asyncio.all_tasks()) - 1

        return asyncio.run_coroutine_threadsafe(count(), self.loop).result(5)

    @property
    def runtime(self) -> Any:
        app = self.app
        while not hasattr(app, "runtime"):
            app = app.app
        return app.runtime


def write_config(raw: dict[str, Any], directory: str | Path | None = None) -> Path:
    directory = Path(directory or tempfile.mkdtemp(prefix="outerloop-test-"))
    path = directory / "config.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


@contextmanager
def run_proxy(raw: dict[str, Any], plugins: tuple[object, ...] = (), registry: Registry | None = None,
              shutdown_wait: float = 10.0) -> Iterator[Proxy]:
    """Start outerloop on a config dict (listener ports of 0 get free ports) with a real hypercorn."""
    raw = {**raw, "listeners": [dict(listener) for listener in raw["listeners"]]}
    for listener in raw["listeners"]:
        if not listener.get("port"):
            listener["port"] = free_port()
    path = write_config(raw)
    registry = registry or build_registry(extra_plugins=plugins)
    config = load_config(path, registry)
    app = build_app(config, registry)
    runner = LoopThread()
    stop = asyncio.Event()
    future = asyncio.run_coroutine_threadsafe(serve_listeners(app, config, _waiter(stop)), runner.loop)
    ports = [listener.port for listener in config.listeners]
    try:
        for port in ports:
            wait_for_port(port)
        yield Proxy(config, ports, app, runner.loop)
    finally:
        runner.loop.call_soon_threadsafe(stop.set)
        try:
            future.result(shutdown_wait)
        finally:
            runner.stop()


class RedisServer:
    """A real redis-server on a free loopback port, no persistence."""

    def __init__(self) -> None:
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        if not os.path.exists(binary):
            raise RuntimeError("redis-server is not installed: `make test` installs it from Debian's packages")
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="outerloop-redis-")
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", self.dir],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        wait_for_port(self.port)
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


ROOT = Path(__file__).resolve().parents[1]


@contextmanager
def proxy_process(raw: dict[str, Any], directory: str | Path | None = None, env: dict[str, str] | None = None,
                  args: tuple[str, ...] = ()) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """`python -m core.cli serve` as a real separate process on a config dict; yields (process, base URL).

    The first listener's port is chosen here when the config leaves it at 0.
    """
    raw = {**raw, "listeners": [dict(listener) for listener in raw["listeners"]]}
    if not raw["listeners"][0].get("port"):
        raw["listeners"][0]["port"] = free_port()
    port = raw["listeners"][0]["port"]
    path = write_config(raw, directory)
    environment = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    process = subprocess.Popen([sys.executable, "-m", "core.cli", "serve", "-c", str(path), *args], cwd=ROOT,
                               env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, timeout=30)
        yield process, f"http://127.0.0.1:{port}"
    finally:
        if process.poll() is None:
            process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
