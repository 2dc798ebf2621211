"""Route preferences as the router model sees them: a name and a natural-language description."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

# The label both prompt profiles use for "no route matched".
OTHER = "other"


@dataclass(frozen=True)
class Route:
    name: str
    description: str

    def as_json(self) -> dict[str, str]:
        return {"name": self.name, "description": self.description}


@dataclass(frozen=True)
class RouteSet:
    """An ordered, duplicate-free set of routes; its key identifies a prefix KV cache entry."""

    routes: tuple[Route, ...]

    def __post_init__(self) -> None:
        names = [r.name for r in self.routes]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate route names in {names}")
        if not self.routes:
            raise ValueError("a route set needs at least one route")

    @classmethod
    def of(cls, routes: Iterable[Route | Mapping[str, str]] | RouteSet) -> RouteSet:
        if isinstance(routes, RouteSet):
            return routes
        return cls(tuple(r if isinstance(r, Route) else Route(str(r["name"]), str(r["description"])) for r in routes))

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(r.name for r in self.routes)

    @property
    def key(self) -> str:
        blob = json.dumps([r.as_json() for r in self.routes], sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def __iter__(self) -> Iterator[Route]:
        return iter(self.routes)

    def __len__(self) -> int:
        return len(self.routes)
