"""Hooks go through pluggy: hookimpls taking a subset of the arguments, tryfirst/trylast and wrappers work.

Every registry here is built on a fresh plugin manager that the test drops, so no registration outlives it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Generator

import httpx
import pluggy
import pytest
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from core import hookspecs
from core.app import App, build_app
from core.asgi import ASGIApp, Receive, Scope, Send
from core.config import Config
from core.config_loader import parse_config
from core.filter import Filter, FilterContext
from core.hookspecs import Middleware, RegisterFilter, RegisterObserver, RegisterRoute, State, hookimpl
from core.plugins import PROJECT, Registry, build_registry, collect
from core.runtime import Runtime
from tests.conftest import proxy_config
from tests.harness import run_proxy
from tests.upstream import Upstream


def recording(name: str, calls: list[str]) -> Middleware:
    """Middleware that notes its name when a request passes through it, to see which one is outermost."""

    def middleware(app: ASGIApp) -> ASGIApp:
        async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] == "http":
                calls.append(name)
            await app(scope, receive, send)

        return wrapped

    return middleware


def registry_of(*plugins: tuple[str, object]) -> Registry:
    """A registry of only these (name, plugin) pairs, registered in this order."""
    manager = pluggy.PluginManager(PROJECT)
    manager.add_hookspecs(hookspecs)
    for name, plugin in plugins:
        manager.register(plugin, name=name)
    return collect(manager)


def get(app: ASGIApp, path: str) -> httpx.Response:
    async def call() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://proxy") as client:
            return await client.get(path)

    return asyncio.run(call())


def one_listener(registry: Registry, *filters: str) -> Config:
    return parse_config({"listeners": [{"name": "a", "port": 1, "filters": list(filters)}],
                         "model_providers": [{"model": "demo/demo-echo", "default": True}]},
                        registry, source="c.yaml")


class Partial:
    """Each hookimpl takes fewer arguments than its spec, or none: pluggy passes only what is asked for."""

    def __init__(self) -> None:
        self.events: list[str] = []
        self.calls: list[str] = []
        self.paths: list[str] = []

    @hookimpl
    def outerloop_register_routes(self, register: RegisterRoute) -> None:
        async def hello(request: Request) -> Response:
            return PlainTextResponse("hello")

        register("/hello", hello, methods=("GET",))

    @hookimpl
    def outerloop_register_observers(self, register: RegisterObserver) -> None:
        register(lambda flow, error: self.paths.append(flow.path))

    @hookimpl
    def outerloop_tracer_provider(self) -> None:
        return None

    @hookimpl
    def outerloop_wrap_app(self) -> Middleware:
        return recording("partial", self.calls)

    @hookimpl
    def outerloop_startup(self) -> None:
        self.events.append("startup")

    @hookimpl
    def outerloop_shutdown(self, state: State) -> None:
        self.events.append("shutdown")


def test_hookimpls_may_take_a_subset_of_the_arguments(upstream: tuple[Upstream, str]) -> None:
    server, base = upstream
    plugin = Partial()
    with run_proxy(proxy_config(base), plugins=(plugin,)) as proxy:
        assert plugin.events == ["startup"]
        assert httpx.get(proxy.url + "/hello").text == "hello"
        assert httpx.post(proxy.url + "/v1/chat/completions",
                          json={"messages": [{"role": "user", "content": "x"}]}).status_code == 200
    assert plugin.events == ["startup", "shutdown"]
    assert plugin.calls == ["partial", "partial"]
    assert plugin.paths == ["/v1/chat/completions"]


class Wraps:
    def __init__(self, name: str, calls: list[str]) -> None:
        self.name = name
        self.calls = calls

    @hookimpl
    def outerloop_wrap_app(self) -> Middleware:
        return recording(self.name, self.calls)


class WrapsFirst(Wraps):
    @hookimpl(tryfirst=True)
    def outerloop_wrap_app(self) -> Middleware:
        return recording(self.name, self.calls)


class WrapsLast(Wraps):
    @hookimpl(trylast=True)
    def outerloop_wrap_app(self) -> Middleware:
        return recording(self.name, self.calls)


def test_tryfirst_middleware_is_outermost_and_trylast_innermost() -> None:
    calls: list[str] = []
    # Registered against the order they must run in: without tryfirst/trylast pluggy calls the last first.
    registry = registry_of(("first", WrapsFirst("first", calls)), ("one", Wraps("one", calls)),
                           ("two", Wraps("two", calls)), ("last", WrapsLast("last", calls)))
    app = build_app(one_listener(registry), registry)
    assert get(app, "/healthz").status_code == 200
    assert calls == ["first", "two", "one", "last"]


class Registers:
    def __init__(self, factory_tag: str) -> None:
        self.tag = factory_tag

    def build(self, settings: object, context: FilterContext) -> Filter:
        return Filter()

    @hookimpl
    def outerloop_register_filters(self, register: RegisterFilter) -> None:
        register("same", self.build)


class RegistersFirst(Registers):
    @hookimpl(tryfirst=True)
    def outerloop_register_filters(self, register: RegisterFilter) -> None:
        register("same", self.build)


def test_the_tryfirst_registration_of_a_duplicate_name_is_the_one_kept() -> None:
    first, other = RegistersFirst("first"), Registers("other")
    registry = registry_of(("first", first), ("other", other))
    assert registry.filters["same"].factory == first.build
    assert registry.filters["same"].plugin == "first"
    assert registry.problems == ["filter 'same' registered by both first (-) and other (-)"]


def test_a_duplicate_of_a_built_in_names_both_plugins_and_packages() -> None:
    class Auth:
        @hookimpl
        def outerloop_register_filters(self, register: RegisterFilter) -> None:
            register("auth", lambda settings, context: Filter())

    registry = build_registry(extra_plugins=(Auth(),), entry_points=False)
    [problem] = registry.problems
    assert problem.startswith("filter 'auth' registered by both ")
    assert problem.endswith(" (-) and filters.auth (outerloop (built-in))")


class WrapsAll:
    """New-style pluggy wrappers: they run around the other hookimpls and may change their result."""

    def __init__(self, calls: list[str]) -> None:
        self.calls = calls

    @hookimpl(wrapper=True)
    def outerloop_wrap_app(self) -> Generator[None, list[Middleware], list[Middleware]]:
        middlewares = yield
        return [recording("wrapper", self.calls), *middlewares]

    @hookimpl(wrapper=True)
    def outerloop_register_filters(self, register: RegisterFilter) -> Generator[None, None, None]:
        yield
        register("added_after_the_others", lambda settings, context: Filter())


def test_a_hook_wrapper_wraps_the_other_hookimpls() -> None:
    calls: list[str] = []
    registry = registry_of(("wrapper", WrapsAll(calls)), ("first", WrapsFirst("first", calls)),
                           ("one", Wraps("one", calls)))
    assert registry.filters["added_after_the_others"].plugin == "wrapper"
    app = build_app(one_listener(registry), registry)
    assert get(app, "/healthz").status_code == 200
    assert calls == ["wrapper", "first", "one"]


class Shares:
    """A plugin whose filters and hooks share one object per runtime through ``state``."""

    def __init__(self) -> None:
        self.states: list[State] = []

    @hookimpl
    def outerloop_register_filters(self, register: RegisterFilter) -> None:
        register("shares", self.build)

    def build(self, settings: object, context: FilterContext) -> Filter:
        flt = Filter()
        flt.shared = context.state.get("shares.list", list)  # type: ignore[attr-defined]
        return flt

    @hookimpl
    def outerloop_register_observers(self, state: State) -> None:
        self.states.append(state)

    @hookimpl
    def outerloop_register_routes(self, state: State) -> None:
        self.states.append(state)


def test_state_belongs_to_the_runtime_not_to_the_config() -> None:
    plugin = Shares()
    registry = registry_of(("shares", plugin))
    config = parse_config({"listeners": [{"name": "a", "port": 1, "filters": ["shares"]},
                                         {"name": "b", "port": 2, "filters": ["shares"]}]},
                          registry, source="c.yaml")
    assert not hasattr(config, "state")
    one, two = Runtime(config, registry), Runtime(config, registry)
    assert plugin.states == [one.state, two.state]
    assert one.state is not two.state
    shared = [item.chain.filters[0].shared for item in one.chains]  # type: ignore[attr-defined]
    assert shared[0] is shared[1]
    assert two.chains[0].chain.filters[0].shared is not shared[0]  # type: ignore[attr-defined]
    app = build_app(config, registry)
    assert isinstance(app, App)
    assert plugin.states[2:] == [app.runtime.state, app.runtime.state]  # observers, then routes


def test_state_builds_once_and_checks_the_kind_it_gives_back() -> None:
    state = State()
    assert state.get("x.list", list) is state.get("x.list", dict)
    with pytest.raises(TypeError, match="state 'x.list' holds a list, not a dict"):
        state.pop("x.list", dict)
    state.get("x.dict", dict)
    assert state.pop("x.dict", dict) == {}
    assert state.pop("x.dict", dict) is None
