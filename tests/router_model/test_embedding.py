from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from router_model.backend import RouterModelMissing
from router_model.embedding import NO_TASK_PHRASES, EmbeddingRouter, lead_in, phrasings
from router_model.routes import Route, RouteSet
from tests.conftest import export_tiny_encoder


@pytest.fixture(scope="session")
def tiny_encoder_dir(tmp_path_factory: pytest.TempPathFactory, routes: RouteSet) -> Path:
    """A tiny random BERT sentence encoder whose tokenizer knows the routes' words."""
    corpus = [r.description for r in routes] + [r.name.replace("_", " ") for r in routes] + ["hello there friend"]
    return export_tiny_encoder(tmp_path_factory.mktemp("encoder"), corpus, vocab_size=400, layers=2)


def test_description_text_routes_to_its_route(tiny_encoder_dir: Path, routes: RouteSet) -> None:
    router = EmbeddingRouter(tiny_encoder_dir, routes, threshold=0.0, use_names=False, providers=["CPUExecutionProvider"])
    for route in routes:
        decision = router.decide_sync([{"role": "user", "content": route.description}])
        assert decision.route == route.name
        assert decision.scores[route.name] == pytest.approx(1.0, abs=1e-5)


def test_threshold_gives_other_and_async_api(tiny_encoder_dir: Path, routes: RouteSet) -> None:
    router = EmbeddingRouter(tiny_encoder_dir, routes, threshold=1.01, providers=["CPUExecutionProvider"])

    async def main() -> None:
        decision = await router.decide([{"role": "user", "content": routes.routes[0].description}])
        assert decision.route is None and decision.backend == "embedding"
        assert max(decision.scores.values()) < 1.01
        empty = await router.decide([{"role": "system", "content": "only a system prompt"}])
        assert empty.route is None and not empty.scores
        await router.aclose()

    asyncio.run(main())


def test_follow_up_inherits_previous_user_turn(tiny_encoder_dir: Path, routes: RouteSet) -> None:
    router = EmbeddingRouter(tiny_encoder_dir, routes, threshold=0.0, use_names=False, context_weight=5.0)
    target = routes.routes[3]
    messages = [
        {"role": "user", "content": target.description},
        {"role": "assistant", "content": "done"},
        {"role": "user", "content": "hello there friend"},
    ]
    assert router.decide_sync(messages).route == target.name
    router.context_weight = 0.0
    assert router.decide_sync(messages).scores[target.name] < 0.999


def test_missing_encoder(tmp_path: Path, routes: RouteSet) -> None:
    with pytest.raises(RouterModelMissing):
        EmbeddingRouter(tmp_path, routes)


def test_phrasings_are_the_description_its_clauses_and_the_name() -> None:
    route = Route("creative_writing", "stories, poems, song lyrics or jokes and slogans")
    assert phrasings(route) == [
        "stories, poems, song lyrics or jokes and slogans",
        "creative writing: stories, poems, song lyrics or jokes and slogans",
        "creative writing",
        "stories", "poems", "song lyrics", "jokes", "slogans",
    ]
    assert phrasings(route, use_names=False)[1:] == ["stories", "poems", "song lyrics", "jokes", "slogans"]


def test_a_request_naming_one_listed_intent_matches_its_route(tiny_encoder_dir: Path, routes: RouteSet) -> None:
    router = EmbeddingRouter(tiny_encoder_dir, routes, threshold=0.0, use_names=False, providers=["CPUExecutionProvider"])
    for route in routes:
        clause = phrasings(route, use_names=False)[-1]  # one intent of the list, not the whole description
        decision = router.decide_sync([{"role": "user", "content": clause}])
        assert decision.scores[route.name] == pytest.approx(1.0, abs=1e-5)
        assert decision.route == route.name


def test_chit_chat_is_other_unless_the_phrases_are_turned_off(tiny_encoder_dir: Path, routes: RouteSet) -> None:
    chat = [{"role": "user", "content": NO_TASK_PHRASES[3]}]
    router = EmbeddingRouter(tiny_encoder_dir, routes, threshold=-1.0, providers=["CPUExecutionProvider"])
    decision = router.decide_sync(chat)
    assert decision.route is None and decision.scores  # scored, yet a no-task turn beats every route
    plain = EmbeddingRouter(tiny_encoder_dir, routes, threshold=-1.0, no_task_phrases=(),
                            providers=["CPUExecutionProvider"])
    assert plain.decide_sync(chat).route in routes.names


@pytest.mark.parametrize(("text", "lead"), [
    ("Summarize: The committee met twice and agreed on a budget.", "Summarize"),
    ("Explain this type\ntype Partialize<T> = { [K in keyof T]?: T[K] }", "Explain this type"),
    ("Key takeaways: none", None),                             # less follows than leads: not a payload
    ("Write a poem about the sea", None),                      # no payload at all
    ("Check https://example.com/a/very/long/path for dead links", None),  # a URL's colon is no separator
    ("x" * 90 + ": " + "y" * 200, None),                       # no short instruction in front
])
def test_lead_in_is_the_instruction_before_a_payload(text: str, lead: str | None) -> None:
    assert lead_in(text) == lead


def test_a_quoted_payload_does_not_pull_the_request_to_its_topic(tiny_encoder_dir: Path, routes: RouteSet) -> None:
    first, second = routes.routes[0], routes.routes[1]
    clause = phrasings(first, use_names=False)[-1]
    text = f"{clause}: {second.description}, {second.description}"  # an instruction, then a text about route 2
    router = EmbeddingRouter(tiny_encoder_dir, routes, threshold=0.0, use_names=False, providers=["CPUExecutionProvider"])
    decision = router.decide_sync([{"role": "user", "content": text}])
    assert decision.route == first.name and decision.scores[first.name] == pytest.approx(1.0, abs=1e-5)


def test_a_turn_with_a_payload_is_never_chit_chat(tiny_encoder_dir: Path, routes: RouteSet) -> None:
    """Its lead-in may read like a greeting ("Hi team: <text>"); the payload still makes it a task."""
    router = EmbeddingRouter(tiny_encoder_dir, routes, threshold=-1.0, providers=["CPUExecutionProvider"])
    greeting = NO_TASK_PHRASES[4]
    text = f"{greeting}: {routes.routes[2].description}"
    assert lead_in(text) == greeting
    assert router.decide_sync([{"role": "user", "content": text}]).route is not None
