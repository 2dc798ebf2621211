"""Built-in routing plugin: the `router` filter, its config sections, the decision API and CLI commands."""

from __future__ import annotations

import argparse

from core.asgi import Receive, Scope, Send
from core.errors import error_body
from core.hookspecs import RegisterConfig, RegisterFilter, RegisterRoute, hookimpl
from core.proxy import ProxyEndpoint
from core.responses import send_body
from plugins.routing.config import Routing, RoutingPreferences
from plugins.routing.filter import DECISION_PATH, RouterFilter, build_router


@hookimpl
def outerloop_register_config(register: RegisterConfig) -> None:
    register("routing", Routing)
    register("routing_preferences", RoutingPreferences)


@hookimpl
def outerloop_register_filters(register: RegisterFilter) -> None:
    register("router", build_router, None, True)


class DecisionEndpoint:
    """`POST /routing/v1/chat/completions`: the listener's chain runs (auth, session...) and the router
    answers with its decision instead of calling a model."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        runtime = scope["outerloop.runtime"]
        chain = runtime.chain_for(scope).chain
        if not any(isinstance(f, RouterFilter) for f in chain.filters):
            body = error_body("openai", 404, "routing is not enabled on this listener (add the router filter)",
                              "router.not_enabled")
            await send_body(send, 404, body)
            return
        await ProxyEndpoint(runtime, "openai")(scope, receive, send)


@hookimpl
def outerloop_register_routes(register: RegisterRoute) -> None:
    # No method filter here: the endpoint answers other methods itself, in the API's error shape.
    register(DECISION_PATH, DecisionEndpoint(), methods=())


@hookimpl
def outerloop_register_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from plugins.routing.commands import add_commands

    add_commands(subparsers)
