"""The model side of routing: prompt profiles, ONNX Runtime engine, trie decoder, prefix KV cache, backends."""

from __future__ import annotations

from router_model.backend import Decision, RouterBackend, RouterError, RouterModelMissing, RouterUpstreamError
from router_model.routes import OTHER, Route, RouteSet

__all__ = [
    "OTHER",
    "Decision",
    "Route",
    "RouteSet",
    "RouterBackend",
    "RouterError",
    "RouterModelMissing",
    "RouterUpstreamError",
]
