"""The runtime's state: what plugins build once per loaded config and share between their hooks and filters."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar, cast

T = TypeVar("T")


class State:
    """Objects built for one loaded config (a router model, a tracer provider, metric counters), by name.

    Like starlette's ``app.state``: the runtime makes one, passes it to the hooks that take ``state`` and to
    filter factories as ``context.state``, and it goes away with the runtime. The config stays plain data.
    Name entries after the plugin that owns them (``"routing.backend"``).
    """

    def __init__(self) -> None:
        self._objects: dict[str, object] = {}

    def get(self, name: str, build: Callable[[], T]) -> T:
        """The object kept under ``name``, built by ``build()`` on first use."""
        if name not in self._objects:
            self._objects[name] = build()
        return cast(T, self._objects[name])

    def pop(self, name: str, kind: type[T]) -> T | None:
        """Forget ``name`` and return what was kept under it, or None when nothing was (at shutdown)."""
        value = self._objects.pop(name, None)
        if value is None or isinstance(value, kind):
            return value
        raise TypeError(f"state {name!r} holds a {type(value).__name__}, not a {kind.__name__}")
