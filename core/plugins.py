"""The plugin manager and the registry of what plugins contribute: filters, config sections, endpoints."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import pluggy
from pydantic import BaseModel, ConfigDict

from core import hookspecs

if TYPE_CHECKING:
    from core.config import Config
    from core.filter import Filter, FilterContext

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
    "plugins.telemetry",
    "plugins.metrics",
)

FilterFactory = Callable[[Any, "FilterContext"], "Filter"]


class RegisterFilter(Protocol):
    def __call__(
        self, name: str, factory: FilterFactory, config_model: type[BaseModel] | None = None,
        terminal: bool = False,
    ) -> None: ...


class RegisterConfig(Protocol):
    def __call__(self, name: str, model: type[BaseModel]) -> None: ...


class RegisterRoute(Protocol):
    def __call__(self, path: str, endpoint: Callable[..., Any], methods: Iterable[str] = ("POST",)) -> None: ...


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
    endpoint: Callable[..., Any]
    methods: tuple[str, ...]
    plugin: str


@dataclass
class Registry:
    """Everything the loaded plugins registered, gathered once at startup."""

    manager: pluggy.PluginManager
    filters: dict[str, FilterEntry] = field(default_factory=dict)
    config_sections: dict[str, type[BaseModel]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def routes(self, config: Config) -> list[RouteEntry]:
        entries: list[RouteEntry] = []
        for impl in self.manager.hook.outerloop_register_routes.get_hookimpls():
            def register(path: str, endpoint: Callable[..., Any], methods: Iterable[str] = ("POST",),
                         _plugin: str = impl.plugin_name) -> None:
                entries.append(RouteEntry(path, endpoint, tuple(methods), _plugin))
            impl.function(register=register, config=config)
        return entries

    async def startup(self, config: Config) -> None:
        await _await_all(self.manager.hook.outerloop_startup(config=config))

    async def shutdown(self, config: Config) -> None:
        await _await_all(self.manager.hook.outerloop_shutdown(config=config))


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
    packages = {id(plugin): dist.project_name for plugin, dist in manager.list_plugin_distinfo()}
    for impl in manager.hook.outerloop_register_filters.get_hookimpls():
        package = packages.get(id(impl.plugin), "outerloop (built-in)" if _builtin(impl.plugin_name) else "-")

        def register_filter(
            name: str, factory: FilterFactory, config_model: type[BaseModel] | None = None,
            terminal: bool = False, _plugin: str = impl.plugin_name, _package: str = package,
        ) -> None:
            if name in registry.filters:
                other = registry.filters[name]
                registry.problems.append(
                    f"filter {name!r} registered by both {other.plugin} ({other.package}) and {_plugin} ({_package})"
                )
                return
            registry.filters[name] = FilterEntry(
                name, factory, config_model or NoConfig, terminal, _plugin, _package
            )

        impl.function(register=register_filter)

    def register_config(name: str, model: type[BaseModel]) -> None:
        registry.config_sections[name] = model

    manager.hook.outerloop_register_config(register=register_config)
    return registry


def _builtin(plugin_name: str) -> bool:
    return plugin_name in BUILTIN_PLUGINS
