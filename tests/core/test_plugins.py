"""The plugin host: hooks at startup and shutdown, filter lifecycle, registration conflicts, built-ins."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from core.runtime import Runtime
from core.config import Config
from core.config_loader import parse_config
from core.errors import ConfigError
from core.filter import Filter
from core.hookspecs import hookimpl
from core.plugins import BUILTIN_PLUGINS, build_registry
from tests.conftest import proxy_config
from tests.harness import run_proxy
from tests.upstream import Upstream


class LifecyclePlugin:
    def __init__(self) -> None:
        self.events: list[str] = []

    @hookimpl
    def outerloop_register_filters(self, register: Any) -> None:
        events = self.events

        class Tracked(Filter):
            async def start(self) -> None:
                events.append("filter.start")

            async def close(self) -> None:
                events.append("filter.close")

        register("tracked", lambda config, context: Tracked())

    @hookimpl
    def outerloop_startup(self, config: Config) -> Any:
        async def opened() -> None:
            await asyncio.sleep(0)
            self.events.append(f"startup:{config.listeners[0].name}")
        return opened()

    @hookimpl
    def outerloop_shutdown(self, config: Config) -> None:
        self.events.append("shutdown")


def test_startup_and_shutdown_hooks_wrap_serving(upstream: tuple[Upstream, str]) -> None:
    server, base = upstream
    plugin = LifecyclePlugin()
    with run_proxy(proxy_config(base, filters=["tracked"]), plugins=(plugin,)) as proxy:
        assert plugin.events == ["startup:test", "filter.start"]
        assert httpx.post(proxy.url + "/v1/chat/completions",
                          json={"messages": [{"role": "user", "content": "x"}]}).status_code == 200
    assert plugin.events == ["startup:test", "filter.start", "filter.close", "shutdown"]


def test_two_plugins_registering_one_name_is_an_error() -> None:
    class One:
        @hookimpl
        def outerloop_register_filters(self, register: Any) -> None:
            register("same", lambda config, context: Filter())

    class Two(One):
        pass

    registry = build_registry(extra_plugins=(One(), Two()), entry_points=False)
    config = parse_config({"listeners": [{"name": "a", "port": 1}]}, registry, source="c.yaml")
    with pytest.raises(ConfigError) as caught:
        Runtime(config, registry)
    assert "filter 'same' registered by both" in str(caught.value)


def test_builtin_plugins_register_like_third_party_ones() -> None:
    registry = build_registry(entry_points=False)
    names = {entry.plugin for entry in registry.filters.values()}
    assert names <= set(BUILTIN_PLUGINS)
    assert registry.filters["router"].terminal
    assert all(entry.package == "outerloop (built-in)" for entry in registry.filters.values())
