from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
import redis

from core.config import Config, Listener, ModelProvider
from core.filter import FilterContext, LocalReply
from core.flow import Flow
from core.resolve import resolve_targets
from core.upstream import Upstreams
from filters.session.filter import SessionConfig, SessionFilter
from filters.session.store import MemoryPinStore, RedisPinStore, StoreUnavailable
from tests.conftest import proxy_config
from tests.harness import free_port, proxy_process, run_proxy
from tests.upstream import Upstream

SYSTEM = {"role": "system", "content": "You are an agent."}
ASK = {"role": "user", "content": "Find the weather in Paris"}
CALL = {"role": "assistant", "content": None, "tool_calls": [
    {"id": "c1", "type": "function", "function": {"name": "weather", "arguments": "{}"}}]}
RESULT = {"role": "tool", "tool_call_id": "c1", "content": "18C"}


def run(coro: Any) -> Any:
    return asyncio.run(coro)


CONFIG = Config(listeners=[Listener(name="t", port=0)], model_providers=[
    ModelProvider(model="test/a", base_url="http://127.0.0.1:9/v1", default=True),
    ModelProvider(model="test/b", base_url="http://127.0.0.1:9/v1")])
UPSTREAMS = Upstreams(CONFIG)


def context() -> FilterContext:
    return FilterContext(CONFIG, CONFIG.listeners[0], UPSTREAMS.resolve)


def targets(flow: Flow) -> list[str]:
    """Where the core sends the flow after the filters ran (core.resolve applies the pin)."""
    assert resolve_targets(flow, UPSTREAMS, authenticates=False) is None
    return [t.model for t in flow.targets]


def make_filter(**settings: Any) -> SessionFilter:
    flt = SessionFilter.from_config(SessionConfig.model_validate(settings), context())
    flt.name = "session"
    return flt


def make_flow(*messages: dict[str, Any], headers: dict[str, str] | None = None, model: str = "auto",
              principal: Any = None) -> Flow:
    body = {"model": model, "messages": list(messages)}
    flow = Flow(request_id="r", listener="t", api="openai", method="POST", path="/v1/chat/completions",
                headers=headers or {}, body=json.dumps(body).encode(), json_body=body)
    flow.principal = principal
    return flow


async def serve(flt: SessionFilter, flow: Flow, served: str | None) -> LocalReply | None:
    """One request through the filter: on_request, then as if `served` answered 200."""
    reply = await flt.on_request(flow)
    if reply is None and served is not None:
        flow.served_by = UPSTREAMS.resolve(served)
        flow.response_status = 200
        assert await flt.on_response(flow) is None
    return reply


# --- session ids --------------------------------------------------------------------------------------------

def test_header_id_is_used_and_echoed() -> None:
    flt = make_filter()
    flow = make_flow(ASK, headers={"x-session-id": " abc-123 "})
    assert run(flt.on_request(flow)) is None
    assert flow.session_id == "abc-123" and flow.extra_headers["x-session-id"] == "abc-123"
    assert flow.state["session"]["derived"] is False


@pytest.mark.parametrize("bad", ["", "a b", "x" * 129, "é"])
def test_malformed_header_is_rejected(bad: str) -> None:
    reply = run(make_filter().on_request(make_flow(ASK, headers={"x-session-id": bad})))
    assert isinstance(reply, LocalReply) and reply.status == 400 and reply.details == "session.invalid_id"


def test_derived_id_is_stable_across_turns_and_scoped_by_principal() -> None:
    flt = make_filter(header="X-Conversation")
    ids = []
    for messages in ([SYSTEM, ASK], [SYSTEM, ASK, CALL, RESULT], [SYSTEM, ASK, CALL, RESULT, ASK]):
        flow = make_flow(*messages)
        run(flt.on_request(flow))
        ids.append(flow.session_id)
        assert flow.extra_headers["x-conversation"] == flow.session_id
    assert len(set(ids)) == 1 and ids[0] is not None and ids[0].startswith("s-")
    other = make_flow(SYSTEM, {"role": "user", "content": "Something else"})
    run(flt.on_request(other))
    assert other.session_id != ids[0]
    alice = make_flow(SYSTEM, ASK, principal=SimpleNamespace(name="alice"))
    run(flt.on_request(alice))
    assert alice.session_id not in (ids[0], None)


def test_no_header_and_no_derivation_means_no_session() -> None:
    flow = make_flow(ASK)
    assert run(make_filter(derive=False).on_request(flow)) is None
    assert flow.session_id is None and not flow.extra_headers


# --- pinning ---------------------------------------------------------------------------------------------------

def test_continuation_is_pinned_and_new_user_turn_is_not() -> None:
    flt = make_filter()

    async def go() -> None:
        await flt.start()
        first = make_flow(SYSTEM, ASK, model="test/b")
        await serve(flt, first, "test/b")
        assert first.state["session"]["pinned"] is False and first.pin is None
        loop = make_flow(SYSTEM, ASK, CALL, RESULT)
        await serve(flt, loop, None)
        assert loop.pin == "test/b" and targets(loop) == ["test/b", "test/a"]
        assert loop.state["session"]["pinned"] is True
        assert loop.annotations["session.pinned"] is True and loop.annotations["session.pinned_model"] == "test/b"
        new_turn = make_flow(SYSTEM, ASK, CALL, RESULT, {"role": "assistant", "content": "18C"}, ASK)
        await serve(flt, new_turn, None)
        assert new_turn.pin is None and targets(new_turn) == ["test/a"]
        assert "session.pinned" not in new_turn.annotations
        await flt.close()

    run(go())


def test_explicit_model_may_override_the_pin() -> None:
    async def go(respect: bool) -> list[str]:
        flt = make_filter(respect_explicit_model=respect)
        await flt.start()
        await serve(flt, make_flow(SYSTEM, ASK), "test/b")
        flow = make_flow(SYSTEM, ASK, CALL, RESULT, model="test/a")
        await flt.on_request(flow)
        await flt.close()
        return targets(flow)

    assert run(go(False)) == ["test/b", "test/a"]
    assert run(go(True)) == ["test/a"]


def test_failed_responses_do_not_pin_and_unknown_models_are_ignored() -> None:
    async def go() -> None:
        flt = make_filter()
        await flt.start()
        flow = make_flow(SYSTEM, ASK)
        await flt.on_request(flow)
        flow.served_by, flow.response_status = UPSTREAMS.resolve("test/b"), 502
        await flt.on_response(flow)
        assert flt.store is not None and await flt.store.get(flow.state["session"]["id"]) is None
        await flt.store.set(flow.state["session"]["id"], "gone/model")
        loop = make_flow(SYSTEM, ASK, CALL, RESULT)
        await flt.on_request(loop)
        # A pin to a model no longer configured is stated, and the core passes over it.
        assert loop.pin == "gone/model" and targets(loop) == ["test/a"]
        await flt.close()

    run(go())


def test_anthropic_tool_result_turn_is_a_continuation() -> None:
    from filters.session.filter import _is_continuation

    assert _is_continuation([{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t"}]}])
    assert not _is_continuation([{"role": "user", "content": [{"type": "text", "text": "hi"}]}])
    assert _is_continuation([ASK, CALL]) and not _is_continuation([ASK])


# --- stores ------------------------------------------------------------------------------------------------------

def test_memory_store_lru_and_idle_ttl() -> None:
    now = [0.0]
    store = MemoryPinStore(ttl=10, max_sessions=2, clock=lambda: now[0])

    async def go() -> None:
        await store.set("a", "m1")
        await store.set("b", "m2")
        now[0] = 8
        assert await store.get("a") == "m1"      # refreshes a: idle until 18
        await store.set("c", "m3")               # evicts b, the least recently used
        assert len(store) == 2 and await store.get("b") is None
        now[0] = 17
        assert await store.get("a") == "m1"
        now[0] = 27.5
        assert await store.get("a") is None and await store.get("c") is None

    run(go())


def test_redis_store_shares_and_refreshes_ttl(redis_url: str) -> None:
    async def go() -> None:
        one = RedisPinStore(redis_url, ttl=5, timeout=2.0, key_prefix="t:pin:")
        two = RedisPinStore(redis_url, ttl=5, timeout=2.0, key_prefix="t:pin:")
        await one.set("s1", "test/b")
        assert await two.get("s1") == "test/b" and await two.get("nope") is None
        await one.close()
        await two.close()

    run(go())
    client = redis.Redis.from_url(redis_url)
    client.pexpire("t:pin:s1", 100)
    run(_get_with_fresh_store(redis_url))
    assert 4000 < client.pttl("t:pin:s1") <= 5000   # GETEX refreshed the idle TTL
    client.close()


async def _get_with_fresh_store(url: str) -> None:
    store = RedisPinStore(url, ttl=5, timeout=2.0, key_prefix="t:pin:")
    assert await store.get("s1") == "test/b"
    await store.close()


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections (kernel backlog) but never answers: a hung Redis."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    try:
        yield int(sock.getsockname()[1])
    finally:
        sock.close()


@pytest.mark.parametrize("kind", ["refused", "silent"])
def test_redis_down_fails_open_fast_with_a_log_line(kind: str, silent_port: int,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    port = free_port() if kind == "refused" else silent_port
    flt = make_filter(backend="redis", redis_url=f"redis://:hunter2@127.0.0.1:{port}/0", redis_timeout_seconds=0.2)

    async def go() -> None:
        await flt.start()
        for _ in range(3):
            flow = make_flow(SYSTEM, ASK, CALL, RESULT)
            started = time.monotonic()
            assert await serve(flt, flow, "test/a") is None
            assert time.monotonic() - started < 2.0  # 0.2 s timeouts: fast, not a hang
            assert flow.annotations["session.store_error"] is True
        await flt.close()

    with caplog.at_level(logging.WARNING, logger="outerloop.session"):
        run(go())
    lines = [r.getMessage() for r in caplog.records]
    assert any("session store unavailable" in line and "fail_open" in line for line in lines)
    assert not any("hunter2" in line for line in lines)


def test_redis_down_fails_closed() -> None:
    flt = make_filter(backend="redis", redis_url=f"redis://127.0.0.1:{free_port()}/0", on_store_error="fail_closed")

    async def go() -> LocalReply | None:
        await flt.start()
        try:
            return await flt.on_request(make_flow(SYSTEM, ASK, CALL, RESULT))
        finally:
            await flt.close()

    reply = run(go())
    assert isinstance(reply, LocalReply) and reply.status == 503 and reply.details == "session.unavailable"


def test_store_unavailable_skips_calls_for_a_while() -> None:
    async def go() -> None:
        store = RedisPinStore(f"redis://127.0.0.1:{free_port()}/0", ttl=5, timeout=0.2, key_prefix="p:",
                              retry_after=30)
        with pytest.raises(StoreUnavailable):
            await store.get("x")
        with pytest.raises(StoreUnavailable, match="less than"):
            await store.get("x")
        await store.close()

    run(go())


def test_redis_backend_needs_url() -> None:
    with pytest.raises(ValueError, match="redis_url"):
        SessionConfig.model_validate({"backend": "redis"})


# --- two proxies sharing one Redis ----------------------------------------------------------------------------

def shared_config(base: str, url: str, prefix: str) -> dict[str, Any]:
    config = proxy_config(base, filters=[{"name": "session", "config": {
        "backend": "redis", "redis_url": url, "key_prefix": prefix, "redis_timeout_seconds": 2.0}}])
    config["model_providers"].append({"model": "test/pinned-model", "base_url": base})
    return config


def test_pin_set_through_one_proxy_is_honoured_by_another(upstream: tuple[Upstream, str], redis_url: str) -> None:
    server, base = upstream
    config = shared_config(base, redis_url, f"it:{time.time_ns()}:")
    headers = {"x-session-id": "trip-1"}
    # `one` is a separate process; `two` runs in this one: they share nothing but Redis.
    with proxy_process(config) as (_, one_url), run_proxy(config) as two:
        first = httpx.post(one_url + "/v1/chat/completions", headers=headers,
                           json={"model": "test/pinned-model", "messages": [SYSTEM, ASK]})
        assert first.status_code == 200 and first.headers["x-session-id"] == "trip-1"
        assert server.seen[-1].json["model"] == "pinned-model"
        loop = httpx.post(two.url + "/v1/chat/completions", headers=headers,
                          json={"model": "auto", "messages": [SYSTEM, ASK, CALL, RESULT]})
        assert loop.status_code == 200 and loop.headers["x-outerloop-model"] == "test/pinned-model"
        assert server.seen[-1].json["model"] == "pinned-model"
        fresh = httpx.post(two.url + "/v1/chat/completions", headers=headers,
                           json={"model": "auto", "messages": [SYSTEM, ASK, CALL, RESULT, ASK]})
        assert fresh.status_code == 200 and server.seen[-1].json["model"] == "test-model"
        other = httpx.post(two.url + "/v1/chat/completions", headers={"x-session-id": "trip-2"},
                           json={"model": "auto", "messages": [SYSTEM, ASK, CALL, RESULT]})
        assert other.status_code == 200 and server.seen[-1].json["model"] == "test-model"


def test_proxy_with_redis_down_still_serves(upstream: tuple[Upstream, str]) -> None:
    server, base = upstream
    config = shared_config(base, f"redis://127.0.0.1:{free_port()}/0", "down:")
    with run_proxy(config) as proxy:
        started = time.monotonic()
        answer = httpx.post(proxy.url + "/v1/chat/completions", headers={"x-session-id": "s"},
                            json={"model": "auto", "messages": [SYSTEM, ASK, CALL, RESULT]})
        assert answer.status_code == 200 and time.monotonic() - started < 2.0


def test_honoured_pin_is_not_written_again(upstream: tuple[Upstream, str]) -> None:
    """The continuation read the pin (refreshing its TTL); writing the same pin back would cost a store call."""
    server, base = upstream
    config = proxy_config(base, filters=["session"])
    config["model_providers"].append({"model": "test/pinned-model", "base_url": base})
    with run_proxy(config) as proxy:
        flt = proxy.runtime.chains[0].chain.filters[0]
        writes: list[tuple[str, str]] = []
        original = flt.store.set

        async def counting(session_id: str, model: str) -> None:
            writes.append((session_id, model))
            await original(session_id, model)

        flt.store.set = counting
        headers = {"x-session-id": "loop-1"}
        httpx.post(proxy.url + "/v1/chat/completions", headers=headers,
                   json={"model": "test/pinned-model", "messages": [SYSTEM, ASK]})
        for _ in range(3):
            loop = httpx.post(proxy.url + "/v1/chat/completions", headers=headers,
                              json={"model": "auto", "messages": [SYSTEM, ASK, CALL, RESULT]})
            assert loop.headers["x-outerloop-model"] == "test/pinned-model"
    assert writes == [("loop-1", "test/pinned-model")]
