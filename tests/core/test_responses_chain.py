"""Stored conversations as chains of turns (core.responses_api.store, call): storage grows linearly with the
turns, the upstream still gets the whole conversation, a missing earlier turn makes a continuation a 404."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

import httpx
import openai
import pytest
import redis

from core.responses_api.store import MemoryResponseStore, StoredResponse, _encode
from tests.harness import Proxy, proxy_process, run_proxy, serve_app
from tests.scripted import ScriptedUpstream, Text

T = TypeVar("T")
#: The translated upstreams (a native one keeps the conversation itself): model entry, the path it is called on.
SHAPES = {
    "chat": ({"model": "test/chat"}, "/v1/chat/completions"),
    "anthropic": ({"model": "anthropic/claude", "interface": "anthropic"}, "/v1/messages"),
}
TURNS = 5


@pytest.fixture()
def scripted() -> Iterator[tuple[ScriptedUpstream, str]]:
    upstream = ScriptedUpstream()
    with serve_app(upstream.app()) as port:
        yield upstream, f"http://127.0.0.1:{port}/v1"


def _config(base: str, shape: str, **top: Any) -> dict[str, Any]:
    return {"listeners": [{"name": "test", "port": 0, "filters": []}],
            "model_providers": [{**SHAPES[shape][0], "base_url": base, "default": True}], **top}


def _client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key="sk-client", max_retries=0)


def _model(shape: str) -> str:
    return str(SHAPES[shape][0]["model"])


def _texts(messages: list[dict[str, Any]]) -> list[str]:
    """The text of each chat or Anthropic message."""
    return [message["content"] if isinstance(message["content"], str) else message["content"][0]["text"]
            for message in messages]


def _question(turn: int) -> str:
    return f"Question {turn}: " + "q" * 2000


def _answer(turn: int) -> str:
    return f"Answer {turn}: " + "a" * 2000


def _on(proxy: Proxy, work: Coroutine[Any, Any, T]) -> T:
    assert proxy.loop is not None
    return asyncio.run_coroutine_threadsafe(work, proxy.loop).result(10)


def _talk(client: openai.OpenAI, model: str, turns: int, previous: str | None = None) -> list[str]:
    ids: list[str] = []
    for turn in range(turns):
        answer = client.responses.create(model=model, input=_question(turn), previous_response_id=previous,
                                         instructions="Be brief." if turn == 0 else openai.omit)
        assert answer.output_text == _answer(turn)
        previous = answer.id
        ids.append(answer.id)
    return ids


@pytest.mark.parametrize("shape", list(SHAPES))
def test_a_five_turn_conversation_is_stored_linearly_and_sent_whole(
        scripted: tuple[ScriptedUpstream, str], shape: str) -> None:
    upstream, base = scripted
    upstream.script.extend(Text(_answer(turn)) for turn in range(TURNS))
    with run_proxy(_config(base, shape)) as proxy, _client(proxy.url) as client:
        store = proxy.runtime.responses_store
        assert isinstance(store, MemoryResponseStore)
        ids = _talk(client, _model(shape), TURNS)
        stored = _on(proxy, store.get_many(ids))
        held = store.size
    # The upstream got the whole conversation each turn; only the first turn's instructions, and only then.
    for turn, seen in enumerate(upstream.seen):
        assert seen.path == SHAPES[shape][1]
        expected = [text for earlier in range(turn) for text in (_question(earlier), _answer(earlier))]
        messages = seen.json["messages"]
        assert _texts([m for m in messages if m["role"] != "system"]) == [*expected, _question(turn)]
        system = seen.json.get("system") or [m["content"] for m in messages if m["role"] == "system"]
        assert bool(system) == (turn == 0)
    # Each stored response holds its own turn, linked to every turn before it.
    entries = [entry for entry in stored if isinstance(entry, StoredResponse)]
    assert len(entries) == TURNS
    for turn, entry in enumerate(entries):
        assert entry.messages == [{"role": "user", "content": _question(turn)},
                                  {"role": "assistant", "content": _answer(turn)}]
        assert entry.chain == ids[:turn] and entry.previous == (ids[turn - 1] if turn else None)
    sizes = [len(_encode(entry)) for entry in entries]
    assert held == sum(sizes)
    # Linear: every turn costs about the same (the whole conversation in each would make the fifth ~5x the first).
    assert max(sizes) < 1.2 * min(sizes)
    assert held < TURNS * 1.2 * sizes[0]


@pytest.mark.parametrize("shape", list(SHAPES))
def test_a_deleted_middle_turn_makes_the_next_continuation_a_404(
        scripted: tuple[ScriptedUpstream, str], shape: str) -> None:
    upstream, base = scripted
    upstream.script.extend(Text(_answer(turn)) for turn in range(3))
    with run_proxy(_config(base, shape)) as proxy, _client(proxy.url) as client:
        first, middle, last = _talk(client, _model(shape), 3)
        client.responses.delete(middle)
        seen = len(upstream.seen)
        with pytest.raises(openai.NotFoundError) as caught:
            client.responses.create(model=_model(shape), input="more", previous_response_id=last)
        assert caught.value.code == "responses.not_found"
        assert "no longer complete" in caught.value.message and len(upstream.seen) == seen
        # The turns left still read one by one.
        assert client.responses.retrieve(last).output_text == _answer(2)
        assert client.responses.retrieve(first).output_text == _answer(0)
        assert [item.type for item in client.responses.input_items.list(last).data] == ["message"]
        # A continuation of the turn before the deleted one still works.
        upstream.script.append(Text("again"))
        assert client.responses.create(model=_model(shape), input="x", previous_response_id=first).output_text \
            == "again"


@pytest.mark.parametrize("shape", list(SHAPES))
def test_a_chain_in_redis_continues_across_replicas_and_stays_alive(
        scripted: tuple[ScriptedUpstream, str], redis_url: str, shape: str) -> None:
    upstream, base = scripted
    upstream.script.extend(Text(_answer(turn)) for turn in range(4))
    prefix = f"t:chain:{shape}:"
    raw = _config(base, shape, responses={"store": redis_url, "key_prefix": prefix})
    direct = redis.Redis.from_url(redis_url, decode_responses=True)
    with proxy_process(raw) as (_, one), proxy_process(raw) as (_, two):
        with _client(one) as first_client, _client(two) as second_client:
            ids: list[str] = []
            for turn in range(4):
                client = (first_client, second_client)[turn % 2]
                answer = client.responses.create(model=_model(shape), input=_question(turn),
                                                 previous_response_id=ids[-1] if ids else None)
                assert answer.output_text == _answer(turn)
                ids.append(answer.id)
                if turn == 2:
                    direct.pexpire(prefix + ids[0], 5_000)    # the first turn about to expire
            # The continuation read the first turn again: it lives as long as the conversation's latest.
            assert direct.pttl(prefix + ids[0]) > 60_000
            expected = [text for earlier in range(3) for text in (_question(earlier), _answer(earlier))]
            assert _texts(upstream.seen[-1].json["messages"]) == [*expected, _question(3)]
            values = [json.loads(direct.get(prefix + response_id) or "null") for response_id in ids]
            assert [len(value["messages"]) for value in values] == [2, 2, 2, 2]
            assert [value["chain"] for value in values] == [ids[:turn] for turn in range(4)]
            # What the previous release wrote (the whole conversation, no chain) reads as absent: a 404.
            old = {k: v for k, v in values[3].items() if k not in ("previous", "chain")}
            direct.set(prefix + "resp_old", json.dumps(old))
            reply = httpx.post(f"{two}/v1/responses", timeout=10, headers={"authorization": "Bearer sk-client"},
                               json={"model": _model(shape), "input": "x", "previous_response_id": "resp_old"})
            assert reply.status_code == 404 and reply.json()["error"]["code"] == "responses.not_found"
            # An ancestor gone from Redis (evicted under maxmemory) is a 404 too, on either replica.
            direct.delete(prefix + ids[1])
            for client in (first_client, second_client):
                with pytest.raises(openai.NotFoundError, match="no longer complete"):
                    client.responses.create(model=_model(shape), input="x", previous_response_id=ids[3])
    direct.close()
