"""The plugin manager and the registry of what plugins contribute: filters, config sections, endpoints."""

from __future__ import annotations

import importlib
import inspect
import sys
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from types import FrameType
from typing import TYPE_CHECKING

import pluggy
from pydantic import BaseModel, ConfigDict

from core import hookspecs

if TYPE_CHECKING:
    from core.config import Config
    from core.hookspecs import Endpoint, FilterFactory
    from core.state import State

PROJECT = "outerloop"

# Built-in plugins, by module name: core meets them through pluggy exactly as it meets a third-party
# package, and never imports them directly.
BUILTIN_PLUGINS: tuple[str, ...] = (
    "filters.auth",
    "filters.rate_cap",
    "filters.guardrails",
    "filters.session",
    "filters.http_filter",
    "plugins.routing",
    "plugins.agents",
    "plugins.telemetry",
    "plugins.metrics",
)


class NoConfig(BaseModel):
    """Config model of filters that take no settings."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True)
class FilterEntry:
    name: str
    factory: FilterFactory
    config_model: type[BaseModel]
    terminal: bool
    plugin: str
    package: str


@dataclass(frozen=True)
class RouteEntry:
    path: str
    endpoint: Endpoint
    methods: tuple[str, ...]
    plugin: str


@dataclass
class Registry:
    """Everything the loaded plugins registered, gathered once at startup."""

    manager: pluggy.PluginManager
    filters: dict[str, FilterEntry] = field(default_factory=dict)
    config_sections: dict[str, type[BaseModel]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def routes(self, config: Config, state: State) -> list[RouteEntry]:
        hook = self.manager.hook.outerloop_register_routes
        entries: list[RouteEntry] = []

        def register(path: str, endpoint: Endpoint, methods: Iterable[str] = ("POST",)) -> None:
            entries.append(RouteEntry(path, endpoint, tuple(methods), _calling_plugin(hook) or "-"))

        hook(register=register, config=config, state=state)
        return entries

    async def startup(self, config: Config, state: State) -> None:
        await _await_all(self.manager.hook.outerloop_startup(config=config, state=state))

    async def shutdown(self, config: Config, state: State) -> None:
        await _await_all(self.manager.hook.outerloop_shutdown(config=config, state=state))


async def _await_all(results: list[Awaitable[None] | None]) -> None:
    for result in results:
        if inspect.isawaitable(result):
            await result


def build_registry(extra_plugins: Iterable[object] = (), entry_points: bool = True) -> Registry:
    """Load built-in plugins, installed packages' entry points, and any extra plugin objects (tests)."""
    manager = pluggy.PluginManager(PROJECT)
    manager.add_hookspecs(hookspecs)
    for module_name in BUILTIN_PLUGINS:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            # A built-in whose optional dependency is absent is skipped; a missing built-in is not.
            if exc.name and module_name.startswith(exc.name):
                continue
            raise
        manager.register(module, name=module_name)
    if entry_points:
        manager.load_setuptools_entrypoints(PROJECT)
    for plugin in extra_plugins:
        manager.register(plugin)
    return collect(manager)


def collect(manager: pluggy.PluginManager) -> Registry:
    registry = Registry(manager)
    hook = manager.hook.outerloop_register_filters
    packages = {id(plugin): dist.project_name for plugin, dist in manager.list_plugin_distinfo()}

    def register_filter(name: str, factory: FilterFactory, config_model: type[BaseModel] | None = None,
                        terminal: bool = False) -> None:
        plugin = _calling_plugin(hook) or "-"
        obj = manager.get_plugin(plugin)
        package = packages.get(id(obj), "outerloop (built-in)" if plugin in BUILTIN_PLUGINS else "-")
        if name in registry.filters:
            other = registry.filters[name]
            registry.problems.append(
                f"filter {name!r} registered by both {other.plugin} ({other.package}) and {plugin} ({package})"
            )
            return
        registry.filters[name] = FilterEntry(name, factory, config_model or NoConfig, terminal, plugin, package)

    hook(register=register_filter)

    def register_config(name: str, model: type[BaseModel]) -> None:
        registry.config_sections[name] = model

    manager.hook.outerloop_register_config(register=register_config)
    return registry


def _calling_plugin(hook: pluggy.HookCaller) -> str | None:
    """The name of the plugin whose hookimpl of ``hook`` is calling a ``register`` callback right now.

    pluggy calls the hookimpls itself (that is what makes partial arguments, ordering and wrappers work), so
    the callback finds its caller on the stack: the nearest frame running one of the hook's implementations
    (for a method, on that plugin object: two plugins may be instances of one class).
    """
    impls = hook.get_hookimpls()
    frame: FrameType | None = sys._getframe(1)
    while frame is not None:
        for impl in impls:
            if _runs(frame, impl.function):
                return impl.plugin_name
        frame = frame.f_back
    return None


def _runs(frame: FrameType, function: Callable[..., object]) -> bool:
    target = inspect.unwrap(getattr(function, "__func__", function))
    if getattr(target, "__code__", None) is not frame.f_code:
        return False
    owner = getattr(function, "__self__", None)
    if owner is None:
        return True
    names = frame.f_code.co_varnames
    return bool(names) and frame.f_locals.get(names[0]) is owner
