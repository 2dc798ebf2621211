"""core.resolve: the one place that turns what filters stated (pin, route, model, principal) into targets."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pytest

from core.config import Config, Listener, ModelProvider
from core.filter import LocalReply
from core.flow import Flow, RouteDecision
from core.resolve import resolve_targets
from core.upstream import Upstreams

UPSTREAMS = Upstreams(Config(
    listeners=[Listener(name="t", port=0)],
    model_providers=[ModelProvider(model=name, base_url="http://127.0.0.1:1/v1", default=name == "p/default")
                     for name in ("p/default", "p/named", "p/pinned", "p/route-a", "p/route-b", "p/secret")],
    model_aliases={"nick": "p/named"},
))


@dataclass(frozen=True)
class Caller:
    name: str
    allowed: tuple[str, ...]

    def may_use(self, model: str) -> bool:
        return model in self.allowed


def flow(model: str | None = None, **intent: Any) -> Flow:
    body: dict[str, Any] = {"messages": [{"role": "user", "content": "hi"}]}
    if model is not None:
        body["model"] = model
    f = Flow(request_id="r", listener="t", api="openai", method="POST", path="/v1/chat/completions", headers={},
             body=json.dumps(body).encode(), json_body=body)
    for name, value in intent.items():
        setattr(f, name, value)
    return f


def targets(f: Flow, authenticates: bool = False) -> list[str]:
    assert resolve_targets(f, UPSTREAMS, authenticates) is None
    return [t.model for t in f.targets]


def refused(f: Flow, authenticates: bool = False) -> LocalReply:
    reply = resolve_targets(f, UPSTREAMS, authenticates)
    assert isinstance(reply, LocalReply) and f.targets == []
    return reply


ROUTE = RouteDecision("code", ("p/route-a", "p/route-b"))


@pytest.mark.parametrize(("f", "expected"), [
    (flow(), ["p/default"]),
    (flow("auto"), ["p/default"]),
    (flow("p/named"), ["p/named"]),
    (flow("named"), ["p/named"]),  # a bare id
    (flow("nick"), ["p/named"]),  # an alias
    (flow("p/named", route=ROUTE), ["p/route-a", "p/route-b"]),  # a route replaces the named model
    (flow("p/named", pin="p/pinned"), ["p/pinned", "p/named"]),  # a pin goes first
    (flow(route=ROUTE, pin="p/route-b"), ["p/route-b", "p/route-a"]),  # ... without repeating itself
    (flow("p/named", pin="gone/model"), ["p/named"]),  # a pin to a model no longer configured is passed over
    (flow("nope", route=ROUTE), ["p/route-a", "p/route-b"]),  # a route serves whatever name was asked
])
def test_precedence_pin_then_route_then_named_then_default(f: Flow, expected: list[str]) -> None:
    assert targets(f) == expected


def test_the_principal_is_checked_everywhere() -> None:
    caller = Caller("bob", ("p/named", "p/route-a"))
    assert targets(flow("p/named", principal=caller)) == ["p/named"]
    assert refused(flow(principal=caller)).details == "model.forbidden"  # the default is checked too
    assert refused(flow("p/secret", principal=caller)).body == "principal 'bob' may not use model 'p/secret'"
    assert refused(flow(route=ROUTE, principal=caller)).status == 403
    # A pin the caller may not use is passed over, not refused.
    assert targets(flow("p/named", pin="p/secret", principal=caller)) == ["p/named"]
    alias = Caller("carol", ("nick",))  # a grant of the alias covers the model it resolves to
    assert targets(flow("nick", principal=alias)) == ["p/named"]


def test_unknown_model_lists_only_what_the_caller_may_use() -> None:
    everyone = refused(flow("nope"))
    assert (everyone.status, everyone.details) == (404, "model.not_found")
    assert "p/secret" in str(everyone.body) and "p/default" in str(everyone.body)
    bob = refused(flow("nope", principal=Caller("bob", ("p/named",))), authenticates=True)
    assert "(available: p/named)" in str(bob.body)
    # A listener that authenticates, and no principal (a filter let the caller through anonymously).
    anonymous = refused(flow("nope"), authenticates=True)
    assert "(available: none)" in str(anonymous.body) and "p/" not in str(anonymous.body)


def test_no_model_and_no_default_is_a_400() -> None:
    bare = Upstreams(Config(listeners=[Listener(name="t", port=0)],
                            model_providers=[ModelProvider(model="p/m", base_url="http://127.0.0.1:1/v1")]))
    reply = resolve_targets(flow(), bare, authenticates=False)
    assert isinstance(reply, LocalReply) and (reply.status, reply.details) == (400, "model.required")
