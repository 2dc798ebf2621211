"""Route lists: parsing every route an answer names, and the backends that decide a sequence of routes."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route as HttpRoute

from router_model.backend import Decision
from router_model.decoder import score_full
from router_model.http_backend import HttpRouter
from router_model.onnx_router import OnnxRouter
from router_model.prompts import ArchRouterProfile, ListMove, PlanoOrchestratorProfile
from router_model.routes import RouteSet
from router_model.trie import TokenTrie
from tests.harness import serve_app

ABC = RouteSet.of([{"name": n, "description": f"does {n}"} for n in ("a", "b", "c")])


@pytest.mark.parametrize(
    ("answer", "routes"),
    [
        ('{"route": ["b", "a"]}', ("b", "a")),
        ('{"route": ["c", "a", "b"]}', ("c", "a", "b")),
        ('{"route": "b"}', ("b",)),
        ('{"route": []}', ()),
        ('{"route": ["x", "b", "y"]}', ("b",)),
        ('{"route": ["a", "b", "a", "b"]}', ("a", "b")),
        ('{"route": ["a", 3, null, ""]}', ("a",)),
        ('```json\n{"route": ["c"]}\n```', ("c",)),
        ('{"route": ["a", "b"', ()),
        ('{"route": {"a": 1}}', ()),
        ("not json at all", ()),
        ("", ()),
    ],
)
def test_orchestrator_parse_all(answer: str, routes: tuple[str, ...]) -> None:
    profile = PlanoOrchestratorProfile()
    assert profile.parse_all(answer, ABC) == routes
    assert profile.parse(answer, ABC) == (routes[0] if routes else None)


@pytest.mark.parametrize(
    ("answer", "routes"),
    [
        ('{"route": "b"}', ("b",)),
        ('{"route": ["c", "a"]}', ("c",)),
        ('{"route": "other"}', ()),
        ('{"route": "x"}', ()),
        ("garbage", ()),
    ],
)
def test_arch_router_parse_all_names_at_most_one(answer: str, routes: tuple[str, ...]) -> None:
    assert ArchRouterProfile().parse_all(answer, ABC) == routes


def test_decision_routes_default_to_the_single_route() -> None:
    assert Decision(route="a", latency_ms=1.0, backend="x").routes == ("a",)
    assert Decision(route=None, latency_ms=1.0, backend="x").routes == ()
    assert Decision(route="b", routes=("b", "a"), latency_ms=1.0, backend="x").route == "b"
    with pytest.raises(ValueError, match="not the first"):
        Decision(route="a", routes=("b", "a"), latency_ms=1.0, backend="x")


def test_list_items_read_back_as_the_list() -> None:
    profile = PlanoOrchestratorProfile()
    answer = profile.answer_prefix + profile.list_item("b", 0, False) + profile.list_item("a", 1, True)
    assert answer == '{"route": ["b", "a"]}'
    assert profile.parse_all(answer, ABC) == ("b", "a")
    with pytest.raises(ValueError):
        ArchRouterProfile().list_item("a", 0, True)


# -- the http backend --------------------------------------------------------------------------------------------


@pytest.fixture
def list_server() -> Iterator[str]:
    async def completions(request: Request) -> Response:
        await request.json()
        answer = '{"route": ["b", "a"]}'
        return JSONResponse({"choices": [{"message": {"role": "assistant", "content": answer}}]})

    app = Starlette(routes=[HttpRoute("/v1/chat/completions", completions, methods=["POST"])])
    with serve_app(app) as port:
        yield f"http://127.0.0.1:{port}/v1"


def http_decide(url: str, **kwargs: Any) -> Decision:
    async def main() -> Decision:
        router = HttpRouter(url, "plano-orchestrator", ABC, profile="plano-orchestrator", **kwargs)
        try:
            return await router.decide([{"role": "user", "content": "do b, then a"}])
        finally:
            await router.aclose()

    return asyncio.run(main())


def test_http_backend_keeps_the_whole_list(list_server: str) -> None:
    decision = http_decide(list_server)
    assert decision.routes == ("b", "a") and decision.route == "b"
    assert http_decide(list_server, max_routes=1).routes == ("b",)
    with pytest.raises(ValueError, match="max_routes"):
        HttpRouter(list_server, "m", ABC, max_routes=0)


# -- the onnx backend --------------------------------------------------------------------------------------------

CONVERSATIONS = [
    [{"role": "user", "content": "Write a JavaScript debounce function, then review it."}],
    [{"role": "user", "content": "Summarize this thread and translate it into German."}],
    [{"role": "user", "content": "hello"}],
    [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}, {"role": "user", "content": "a poem"}],
    [{"role": "user", "content": "why error the plan of bug test into story"}],
]


@pytest.fixture(scope="module")
def orchestrator(tiny_onnx_dir: Path, routes: RouteSet) -> OnnxRouter:
    return OnnxRouter(tiny_onnx_dir, routes, profile="plano-orchestrator", providers=["CPUExecutionProvider"], max_routes=2)


Keep = Callable[[ListMove], bool]


def every(move: ListMove) -> bool:
    return True


def named(move: ListMove) -> bool:
    return move.route is not None


def continued(move: ListMove) -> bool:
    return not move.closes


FirstMoves = Callable[[RouteSet], tuple[dict[str, ListMove], TokenTrie]]


def restricted(first_moves: FirstMoves, keep: Keep) -> FirstMoves:
    """`OnnxRouter.first_moves` offering only the first moves `keep` accepts."""

    def moves_kept(routes: RouteSet) -> tuple[dict[str, ListMove], TokenTrie]:
        moves = {text: m for text, m in first_moves(routes)[0].items() if keep(m)}
        return moves, TokenTrie({text: m.ids for text, m in moves.items()})

    return moves_kept


def reference_routes(
    router: OnnxRouter, messages: list[dict[str, str]], keep_first: Keep
) -> tuple[tuple[str, ...], dict[str, float]]:
    """The list the decoder must find, each step the exact argmax of uncached teacher-forced move scores, and
    the score of each step's move (keyed by its route, `other` for the empty list)."""
    routes = router.routes
    rendered = router.render(messages, routes)
    fed = router.tokenizer.encode(rendered.text + router.prompts.profile.answer_prefix)
    chosen: list[str] = []
    best: dict[str, float] = {}
    while True:
        moves = router.prompts.list_moves(routes, chosen, router.max_routes)
        if not chosen:
            moves = {text: m for text, m in moves.items() if keep_first(m)}
        scores = score_full(router.engine, fed, {text: m.ids for text, m in moves.items()})
        text = max(scores, key=lambda text: scores[text])
        move = moves[text]
        best[move.route or "other"] = scores[text]
        if move.route is not None:
            chosen.append(move.route)
        if move.closes:
            return tuple(chosen), best
        fed += list(move.ids)


def assert_valid_list(router: OnnxRouter, decision: Decision) -> None:
    assert len(decision.routes) <= router.max_routes
    assert len(set(decision.routes)) == len(decision.routes)
    assert set(decision.routes) <= set(router.routes.names)
    assert decision.route == (decision.routes[0] if decision.routes else None)
    # The forced answer is the list it names, written as the model writes it.
    assert decision.raw is not None
    assert router.prompts.profile.parse_all(decision.raw, router.routes) == decision.routes


@pytest.mark.parametrize("keep_first", [every, named, continued])
@pytest.mark.parametrize("tree", [True, False], ids=["tree", "batched"])
def test_list_decoding_equals_stepwise_full_scoring(
    orchestrator: OnnxRouter, tree: bool, keep_first: Keep, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A random model answers the short empty list (`other`) and seldom continues a list by itself: restricting
    the first step to naming a route, or to continuing the list, exercises the choice between closing and
    continuing and the continuation on the KV cache, whose choices must still be the exact ones."""
    monkeypatch.setattr(orchestrator, "tree_scoring", tree)
    monkeypatch.setattr(orchestrator, "first_moves", restricted(orchestrator.first_moves, keep_first))
    decisions = []
    for messages in CONVERSATIONS:
        decision = orchestrator.decide_sync(messages)
        assert_valid_list(orchestrator, decision)
        routes, scores = reference_routes(orchestrator, messages, keep_first)
        assert decision.routes == routes, messages
        assert decision.scores == pytest.approx(scores, abs=1e-3)
        decisions.append(decision.routes)
    if keep_first is named:
        assert all(decisions)
    if keep_first is continued:
        assert all(len(d) == 2 for d in decisions)
        assert len({d[1] for d in decisions}) > 1  # the second choice depends on the conversation


def test_a_list_never_exceeds_max_routes_nor_repeats(tiny_onnx_dir: Path, routes: RouteSet) -> None:
    router = OnnxRouter(tiny_onnx_dir, routes, profile="plano-orchestrator", providers=["CPUExecutionProvider"], max_routes=3)
    moves = router.prompts.list_moves(routes, ("code_review", "translation"), 3)
    assert {m.route for m in moves.values()} == set(routes.names) - {"code_review", "translation"}
    assert all(m.closes for m in moves.values())  # the third item must close the list
    for messages in CONVERSATIONS:
        assert_valid_list(router, router.decide_sync(messages))


def test_max_routes_one_keeps_the_single_route_decoder(tiny_onnx_dir: Path, routes: RouteSet, orchestrator: OnnxRouter) -> None:
    single = OnnxRouter(tiny_onnx_dir, routes, profile="plano-orchestrator", providers=["CPUExecutionProvider"])
    assert single.max_routes == 1
    arch = OnnxRouter(tiny_onnx_dir, routes, providers=["CPUExecutionProvider"], max_routes=3)
    assert arch.max_routes == 1  # arch-router answers with one route
    for messages in CONVERSATIONS:
        decision = single.decide_sync(messages)
        assert decision.steps == 1 and decision.routes == ((decision.route,) if decision.route else ())
    with pytest.raises(ValueError, match="max_routes"):
        OnnxRouter(tiny_onnx_dir, routes, max_routes=0)


def test_bound_router_decides_lists_like_the_host_router(
    tiny_onnx_dir: Path, routes: RouteSet, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The device code path (KV as OrtValues, exercised here on the CPU) continues a list like the host path."""
    bound = OnnxRouter(tiny_onnx_dir, routes, profile="plano-orchestrator", providers=["CPUExecutionProvider"],
                       max_routes=3, io_binding=True)
    host = OnnxRouter(tiny_onnx_dir, routes, profile="plano-orchestrator", providers=["CPUExecutionProvider"],
                      max_routes=3)
    for router in (bound, host):
        router.tree_scoring = False
        monkeypatch.setattr(router, "first_moves", restricted(router.first_moves, continued))
    for messages in CONVERSATIONS:
        b, h = bound.decide_sync(messages), host.decide_sync(messages)
        assert len(b.routes) >= 2 and b.routes == h.routes
        assert b.scores == pytest.approx(h.scores, abs=1e-4)


def test_free_generation_keeps_the_parsed_list(orchestrator: OnnxRouter) -> None:
    decision = orchestrator.decide_sync(CONVERSATIONS[0], mode="free")
    assert decision.raw is not None
    assert decision.routes == orchestrator.prompts.profile.parse_all(decision.raw, orchestrator.routes)[:2]
