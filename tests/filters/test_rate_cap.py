from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from types import SimpleNamespace
from typing import Any

import anthropic
import httpx
import openai
import pytest

from core.config import ModelProvider
from core.config_loader import parse_config
from core.errors import ConfigError
from core.filter import LocalReply
from core.flow import Flow, RouteDecision
from core.plugins import build_registry
from core.target import Target
from filters.rate_cap.config import RateCapConfig
from filters.rate_cap.filter import RateCapFilter
from filters.rate_cap.memory import BackendUnavailable, MemoryBackend
from filters.rate_cap.usage import estimate_input_tokens
from tests.conftest import proxy_config
from tests.faults import serve_faults
from tests.harness import eventually, run_proxy
from tests.upstream import Upstream


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_filter(caps: list[dict[str, Any]], clock: Clock | None = None, **settings: Any) -> RateCapFilter:
    config = RateCapConfig.model_validate({"caps": caps, **settings})
    flt = RateCapFilter(config, MemoryBackend(clock=clock or Clock()), "test")
    flt.name = "rate_cap"
    return flt


def make_flow(principal: str | None = "alice", headers: dict[str, str] | None = None, stream: bool = False,
              content: str = "hi", client: tuple[str, int] | None = ("10.0.0.1", 5000),
              model: str = "test/test-model", **body: Any) -> Flow:
    json_body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": content}], **body}
    if stream:
        json_body["stream"] = True
    flow = Flow(request_id="r", listener="test", api="openai", method="POST", path="/v1/chat/completions",
                headers=dict(headers or {}), body=json.dumps(json_body).encode(), json_body=json_body, client=client)
    flow.targets = [Target(ModelProvider(model=model, base_url="http://127.0.0.1:1/v1"), None)]  # type: ignore[arg-type]
    if principal is not None:
        flow.principal = SimpleNamespace(name=principal)
    return flow


def request(flt: RateCapFilter, flow: Flow | None = None) -> LocalReply | None:
    """The request phases as the core runs them: on_request, then (after routing) the first upstream attempt."""
    flow = flow or make_flow()

    async def phases() -> LocalReply | None:
        reply = await flt.on_request(flow)
        if reply is None and flow.targets:
            reply = await flt.on_upstream_request(flow, flow.targets[0])
        return reply

    return asyncio.run(phases())


def complete(flt: RateCapFilter, flow: Flow, error: BaseException | None = None) -> None:
    asyncio.run(flt.on_complete(flow, error))


# --- requests (GCRA) ----------------------------------------------------------------------------------

def test_requests_cap_admits_exactly_n_then_429_with_headers() -> None:
    clock = Clock()
    flt = make_filter([{"requests": 3, "window": "1m"}], clock)
    flows = [make_flow() for _ in range(3)]
    assert [request(flt, f) for f in flows] == [None, None, None]
    assert [f.extra_headers["x-ratelimit-remaining"] for f in flows] == ["2", "1", "0"]
    assert flows[0].extra_headers["x-ratelimit-limit"] == "3"
    reply = request(flt)
    assert isinstance(reply, LocalReply)
    assert (reply.status, reply.details) == (429, "rate_cap.exceeded")
    assert reply.headers["retry-after"] == "20"  # one request every 60/3 s
    assert reply.headers["x-ratelimit-remaining"] == "0" and reply.headers["x-ratelimit-limit"] == "3"
    assert reply.headers["x-ratelimit-reset"] == "60"
    assert "requests-per-60s-by-principal" in str(reply.body)
    clock.now += 19.5
    assert request(flt) is not None
    clock.now += 0.5
    assert request(flt) is None
    assert request(flt) is not None


def test_burst_spreads_requests_over_the_window() -> None:
    clock = Clock()
    flt = make_filter([{"requests": 60, "window": 60, "burst": 2}], clock)
    assert request(flt) is None and request(flt) is None
    reply = request(flt)
    assert reply is not None and reply.headers["retry-after"] == "1"
    clock.now += 1.0
    assert request(flt) is None


def test_retry_after_rounds_up_to_whole_seconds() -> None:
    clock = Clock()
    flt = make_filter([{"requests": 7, "window": 10}], clock)
    for _ in range(7):
        assert request(flt) is None
    reply = request(flt)
    assert reply is not None and reply.headers["retry-after"] == "2"  # 10/7 = 1.43 s


@pytest.mark.parametrize(("key", "same", "other"), [
    (["principal"], make_flow("alice"), make_flow("bob")),
    (["model"], make_flow(model="test/a"), make_flow(model="test/b")),
    (["client_ip"], make_flow(client=("10.0.0.1", 1)), make_flow(client=("10.0.0.2", 1))),
    (["header:x-team"], make_flow(headers={"x-team": "a"}), make_flow(headers={"x-team": "b"})),
    (["principal", "model"], make_flow("alice", model="test/a"), make_flow("alice", model="test/b")),
])
def test_caps_are_counted_per_key(key: list[str], same: Flow, other: Flow) -> None:
    flt = make_filter([{"requests": 1, "key": key}])
    assert request(flt, make_flow(**_like(same))) is None
    assert request(flt, make_flow(**_like(same))) is not None
    assert request(flt, other) is None


def _like(flow: Flow) -> dict[str, Any]:
    return {"principal": getattr(flow.principal, "name", None), "headers": flow.headers, "client": flow.client,
            "model": flow.targets[0].model}


def test_route_and_global_and_missing_values() -> None:
    flt = make_filter([{"requests": 1, "key": ["route"]}, {"name": "all", "requests": 3, "key": "global"}])

    def routed(route: str | None) -> Flow:
        flow = make_flow(principal=None)
        flow.route = RouteDecision(route, ("test/test-model",)) if route is not None else None
        return flow

    assert request(flt, routed("code")) is None
    assert request(flt, routed(None)) is None  # no route: the shared "-" bucket
    assert "'requests-per-60s-by-route'" in str(request(flt, routed(None)))
    assert request(flt, routed("chat")) is None
    assert "'all'" in str(request(flt, routed("fresh")))  # the third admitted request spent the global cap


def test_header_values_do_not_appear_in_keys() -> None:
    flt = make_filter([{"requests": 5, "key": "header:x-secret"}])
    assert request(flt, make_flow(headers={"x-secret": "tok-very-secret"})) is None
    backend = flt.backend
    assert isinstance(backend, MemoryBackend)
    assert not any("tok-very-secret" in key for key in backend.tats)


def test_a_rejecting_cap_consumes_nothing_from_the_others() -> None:
    clock = Clock()
    flt = make_filter([
        {"name": "per-user", "requests": 5, "key": "principal"},
        {"name": "tokens", "tokens": 1000, "key": "principal"},
        {"name": "slots", "concurrent": 5},
        {"name": "global", "requests": 1, "key": "global"},
    ], clock)
    first = make_flow("alice")
    assert request(flt, first) is None
    for name in ("bob", "carol", "dave"):
        reply = request(flt, make_flow(name))
        assert reply is not None and "'global'" in str(reply.body)
    backend = flt.backend
    assert isinstance(backend, MemoryBackend)
    assert [k for k in backend.tats if ":per-user:" in k] == ["test:per-user:alice"]
    assert [k for k in backend.levels] == ["test:tokens:alice"]
    assert backend.active == {"test:slots:alice": 1}


def test_most_restrictive_cap_sets_the_headers() -> None:
    flt = make_filter([{"requests": 100}, {"name": "tight", "requests": 4, "key": "global"}])
    flow = make_flow()
    assert request(flt, flow) is None
    assert flow.extra_headers == {"x-ratelimit-limit": "4", "x-ratelimit-remaining": "3", "x-ratelimit-reset": "15"}


# --- concurrency --------------------------------------------------------------------------------------

def test_concurrency_slots_are_released_on_complete_always() -> None:
    flt = make_filter([{"concurrent": 2}])
    a, b = make_flow(), make_flow()
    assert request(flt, a) is None and request(flt, b) is None
    reply = request(flt)
    assert isinstance(reply, LocalReply)
    assert (reply.status, reply.details) == (429, "rate_cap.concurrency")
    assert reply.headers["retry-after"] == "1"
    complete(flt, a, RuntimeError("upstream broke"))
    complete(flt, a)  # a second completion must not free a second slot
    c = make_flow()
    assert request(flt, c) is None
    assert request(flt) is not None
    complete(flt, b)
    complete(flt, c)
    backend = flt.backend
    assert isinstance(backend, MemoryBackend) and backend.active == {}


def test_rejected_request_holds_no_slot() -> None:
    flt = make_filter([{"concurrent": 1}, {"name": "r", "requests": 1, "key": "global"}])
    held = make_flow("alice")
    assert request(flt, held) is None
    refused = make_flow("bob")
    assert request(flt, refused) is not None
    complete(flt, refused)
    complete(flt, held)
    backend = flt.backend
    assert isinstance(backend, MemoryBackend) and backend.active == {}


# --- tokens (token bucket) ----------------------------------------------------------------------------

def test_estimate_counts_text_messages_and_extras() -> None:
    assert estimate_input_tokens({"messages": [{"role": "user", "content": "a" * 400}]}) == 100 + 4 + 3
    parts = [{"type": "text", "text": "b" * 40}, {"type": "image_url", "image_url": {"url": "data:..."}}]
    assert estimate_input_tokens({"messages": [{"role": "user", "content": parts}]}) == 10 + 85 + 4 + 3
    with_tools = {"messages": [], "tools": [{"type": "function", "function": {"name": "f" * 100}}]}
    assert estimate_input_tokens(with_tools) > 25
    assert estimate_input_tokens({"messages": "junk", "system": "s" * 8}) == 2 + 3


def test_token_bucket_debits_output_after_the_call_and_may_go_negative() -> None:
    clock = Clock()
    flt = make_filter([{"tokens": 1000, "window": 100}], clock)  # refills 10 tokens/s
    flow = make_flow(content="x" * 400)  # estimate 107
    assert request(flt, flow) is None
    assert flow.extra_headers["x-ratelimit-remaining"] == "893"
    flow.attempts = 1
    flow.response_status = 200
    # The core recorded the response's usage (core.usage); rate_cap settles the estimate against it.
    flow.usage = {"prompt_tokens": 100, "completion_tokens": 1200, "total_tokens": 1300}
    complete(flt, flow)
    backend = flt.backend
    assert isinstance(backend, MemoryBackend)
    assert backend.levels["test:tokens-per-100s-by-principal:alice"][0] == pytest.approx(1000 - 1300)
    reply = request(flt)
    assert isinstance(reply, LocalReply) and reply.details == "rate_cap.exceeded"
    assert reply.headers["retry-after"] == str(-(-(300 + 10) // 10))  # back above the next estimate
    clock.now += 31
    assert request(flt) is None


def test_request_larger_than_the_bucket_is_admitted_when_full() -> None:
    flt = make_filter([{"tokens": 50}])
    assert request(flt, make_flow(content="y" * 1000)) is None
    assert request(flt) is not None


def test_estimate_is_given_back_when_no_upstream_call_happened() -> None:
    flt = make_filter([{"tokens": 200}])
    flow = make_flow(content="z" * 400)
    assert request(flt, flow) is None
    complete(flt, flow)  # e.g. a later filter answered with a local reply: attempts == 0
    backend = flt.backend
    assert isinstance(backend, MemoryBackend)
    assert backend.levels["test:tokens-per-60s-by-principal:alice"][0] == pytest.approx(200)


# --- each model tried ---------------------------------------------------------------------------------

def _target(model: str) -> Target:
    return Target(ModelProvider(model=model, base_url="http://127.0.0.1:1/v1"), None)  # type: ignore[arg-type]


def attempts(flt: RateCapFilter, flow: Flow, *models: str) -> list[LocalReply | None]:
    """The phases of a request whose attempts went to ``models`` in turn (a retry repeats a model)."""
    async def phases() -> list[LocalReply | None]:
        replies = [await flt.on_request(flow)]
        return replies + [await flt.on_upstream_request(flow, _target(model)) for model in models]

    return asyncio.run(phases())


MODEL_CAPS: list[dict[str, Any]] = [
    {"name": "per-model", "requests": 60, "window": 60, "key": "model"},  # one request a second: TAT - now
    {"name": "all", "requests": 60, "window": 60, "key": "global"},
    {"name": "model-tokens", "tokens": 1000, "window": 100, "key": "model"},
    {"name": "tokens", "tokens": 1000, "window": 100, "key": "principal"},
    {"name": "model-slots", "concurrent": 5, "key": "model"},
]


def test_each_model_tried_counts_once_in_its_model_caps_and_the_request_once_in_the_others() -> None:
    clock = Clock()
    flt = make_filter(MODEL_CAPS, clock)
    flow = make_flow(content="x" * 400)  # estimate 107
    flow.targets = [_target("test/a"), _target("test/b")]
    assert attempts(flt, flow, "test/a", "test/a", "test/b", "test/b") == [None] * 5  # each model retried once
    backend = flt.backend
    assert isinstance(backend, MemoryBackend)
    assert {k: tat - clock.now for k, tat in backend.tats.items()} == {
        "test:per-model:test/a": 1.0, "test:per-model:test/b": 1.0, "test:all:*": 1.0}
    assert {k: v[0] for k, v in backend.levels.items()} == {
        "test:model-tokens:test/a": 893, "test:model-tokens:test/b": 893, "test:tokens:alice": 893}
    assert backend.active == {"test:model-slots:test/a": 1, "test:model-slots:test/b": 1}
    # test/a answered 503, test/b served: its admission settles against the usage, test/a's estimate comes back.
    flow.attempts, flow.response_status, flow.served_by = 4, 200, _target("test/b")
    flow.usage = {"prompt_tokens": 100, "completion_tokens": 200, "total_tokens": 300}
    complete(flt, flow)
    assert {k: v[0] for k, v in backend.levels.items()} == {
        "test:model-tokens:test/a": 1000, "test:model-tokens:test/b": 700, "test:tokens:alice": 700}
    assert backend.active == {}


def test_a_fallback_refused_by_its_model_cap_consumes_nothing_and_keeps_the_request_admitted() -> None:
    clock = Clock()
    flt = make_filter([{"name": "per-model", "requests": 1, "key": "model"},
                       {"name": "slots", "concurrent": 2, "key": "global"}], clock)
    assert attempts(flt, make_flow(), "test/b") == [None, None]  # test/b's one request of the minute
    flow = make_flow()
    replies = attempts(flt, flow, "test/a", "test/b", "test/c")
    assert replies[:2] == [None, None] and replies[3] is None
    refused = replies[2]
    assert isinstance(refused, LocalReply) and (refused.status, refused.details) == (429, "rate_cap.exceeded")
    backend = flt.backend
    assert isinstance(backend, MemoryBackend)
    assert sorted(backend.tats) == ["test:per-model:test/a", "test:per-model:test/b", "test:per-model:test/c"]
    assert backend.tats["test:per-model:test/b"] == clock.now + 60  # counted once, by the first request
    assert backend.active == {"test:slots:*": 2}
    complete(flt, flow)
    assert backend.active == {"test:slots:*": 1}  # the first request's slot is still held


# --- config -------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("config", "problem"), [
    ({"caps": []}, "at least 1 item"),
    ({"caps": [{"requests": 1, "tokens": 5}]}, "exactly one of requests, tokens or concurrent"),
    ({"caps": [{"window": "1m"}]}, "exactly one of"),
    ({"caps": [{"requests": 0}]}, "positive"),
    ({"caps": [{"requests": 1, "window": "fortnight"}]}, "duration"),
    ({"caps": [{"requests": 1, "key": ["principal", "cookie"]}]}, "unknown key part 'cookie'"),
    ({"caps": [{"tokens": 1, "burst": 3}]}, "burst applies to requests caps only"),
    ({"caps": [{"requests": 1}, {"requests": 2}]}, "two caps are named"),
    ({"caps": [{"requests": 1}], "backend": "redis"}, "needs a redis section"),
    ({"caps": [{"requests": 1}], "backend": "redis", "redis": {"url": "http://x"}}, "redis://"),
    ({"caps": [{"requests": 1}], "on_backend_error": "shrug"}, "fail_open"),
])
def test_bad_config_is_a_startup_error(config: dict[str, Any], problem: str) -> None:
    raw = {"listeners": [{"name": "l", "port": 1, "filters": [{"name": "rate_cap", "config": config}]}]}
    with pytest.raises(ConfigError) as caught:
        parse_config(raw, build_registry(entry_points=False), source="x.yaml")
    assert "x.yaml: listeners[0].filters[0].config" in str(caught.value) and problem in str(caught.value)


@pytest.mark.parametrize(("window", "seconds"), [("10s", 10), ("1m", 60), ("2 hours", 7200), ("day", 86400),
                                                 (30, 30), ("1.5m", 90)])
def test_windows(window: Any, seconds: float) -> None:
    assert RateCapConfig.model_validate({"caps": [{"requests": 1, "window": window}]}).caps[0].window == seconds


# --- through a real hypercorn -------------------------------------------------------------------------

def test_openai_sdk_gets_rate_limit_error_with_headers(upstream: tuple[Upstream, str]) -> None:
    _, base = upstream
    filters = [{"name": "rate_cap", "config": {"caps": [{"requests": 2, "window": "1m", "key": "client_ip"}]}}]
    messages: Any = [{"role": "user", "content": "hi"}]
    with run_proxy(proxy_config(base, filters=filters)) as proxy:
        with openai.OpenAI(base_url=proxy.url + "/v1", api_key="sk", max_retries=0) as client:
            first = client.chat.completions.with_raw_response.create(model="test-model", messages=messages)
            assert first.headers["x-ratelimit-limit"] == "2" and first.headers["x-ratelimit-remaining"] == "1"
            client.chat.completions.create(model="test-model", messages=messages)
            with pytest.raises(openai.RateLimitError) as limited:
                client.chat.completions.create(model="test-model", messages=messages)
    error = limited.value
    assert error.status_code == 429 and error.code == "rate_cap.exceeded"
    assert error.response.headers["retry-after"] == "30"
    assert error.response.headers["x-ratelimit-remaining"] == "0"
    assert int(error.response.headers["x-ratelimit-reset"]) == 60


def test_streamed_usage_is_counted_and_hidden_from_the_client(upstream: tuple[Upstream, str]) -> None:
    server, base = upstream
    filters = [{"name": "rate_cap", "config": {"caps": [{"tokens": 1000, "window": "1h", "key": "global"}]}}]
    messages: Any = [{"role": "user", "content": "count me"}]
    with run_proxy(proxy_config(base, filters=filters)) as proxy:
        with openai.OpenAI(base_url=proxy.url + "/v1", api_key="sk", max_retries=0) as client:
            chunks = list(client.chat.completions.create(model="test-model", messages=messages, stream=True))
            assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == \
                "Hello from the test upstream."
            assert all(c.usage is None for c in chunks) and all(c.choices for c in chunks)
            assert server.seen[-1].json["stream_options"] == {"include_usage": True}
            asked = list(client.chat.completions.create(model="test-model", messages=messages, stream=True,
                                                        stream_options={"include_usage": True}))
            assert asked[-1].usage is not None and asked[-1].usage.total_tokens == 12
            client.chat.completions.create(model="test-model", messages=messages)
            # Three calls of 7 + 5 tokens each; the estimates were replaced by the real counts.
            after = client.chat.completions.with_raw_response.create(model="test-model", messages=messages)
            estimate = estimate_input_tokens({"messages": messages})
            assert after.headers["x-ratelimit-remaining"] == str(1000 - 3 * 12 - estimate)


def test_concurrency_cap_through_the_proxy(upstream: tuple[Upstream, str]) -> None:
    _, base = upstream
    filters = [{"name": "rate_cap", "config": {"caps": [{"concurrent": 1, "key": "global"}]}}]
    body = {"model": "test/slow", "stream": True, "messages": [{"role": "user", "content": "x"}]}
    with run_proxy(proxy_config(base, filters=filters)) as proxy:
        with httpx.Client(base_url=proxy.url, timeout=10) as client:
            with client.stream("POST", "/v1/chat/completions", json=body) as streaming:
                assert streaming.status_code == 200
                chunks = streaming.iter_bytes()
                next(chunks)
                refused = client.post("/v1/chat/completions", json={**body, "stream": False})
                assert refused.status_code == 429 and refused.json()["error"]["code"] == "rate_cap.concurrency"
                assert b"[DONE]" in b"".join(chunks)
            deadline = time.monotonic() + 2
            while (status := client.post("/v1/chat/completions", json={**body, "model": "test-model"}).status_code) \
                    != 200 and time.monotonic() < deadline:
                time.sleep(0.02)
            assert status == 200
            # A client that walks away mid-stream frees its slot as well.
            with client.stream("POST", "/v1/chat/completions", json=body) as streaming:
                chunks = streaming.iter_bytes()
                next(chunks)
                assert client.post("/v1/chat/completions", json=body).status_code == 429
            deadline = time.monotonic() + 2
            while (status := client.post("/v1/chat/completions", json={**body, "model": "test-model"}).status_code) \
                    != 200 and time.monotonic() < deadline:
                time.sleep(0.02)
            assert status == 200


def test_concurrent_clients_never_exceed_the_cap(upstream: tuple[Upstream, str]) -> None:
    _, base = upstream
    filters = [{"name": "rate_cap", "config": {"caps": [{"requests": 7, "window": "1h", "key": "global"}]}}]
    statuses: list[int] = []
    with run_proxy(proxy_config(base, filters=filters)) as proxy:
        def call() -> None:
            response = httpx.post(proxy.url + "/v1/chat/completions", timeout=10,
                                  json={"model": "test-model", "messages": [{"role": "user", "content": "x"}]})
            statuses.append(response.status_code)
        threads = [threading.Thread(target=call) for _ in range(20)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert sorted(statuses) == [200] * 7 + [429] * 13


class FlakyBackend(MemoryBackend):
    def __init__(self) -> None:
        super().__init__()
        self.down = True

    def describe(self) -> str:
        return "flaky://store"

    async def acquire(self, checks: Any, lease: str) -> Any:
        if self.down:
            raise BackendUnavailable("ConnectionError: refused")
        return await super().acquire(checks, lease)


def test_backend_failure_policy_and_recovery_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="outerloop.rate_cap")
    backend = FlakyBackend()
    flt = RateCapFilter(RateCapConfig.model_validate({"caps": [{"requests": 5}], "on_backend_error": "fail_closed"}),
                        backend, "test")
    flt.name = "rate_cap"
    for _ in range(3):
        reply = request(flt)
        assert isinstance(reply, LocalReply)
        assert (reply.status, reply.details, reply.headers["retry-after"]) == (503, "rate_cap.backend_unavailable", "1")
    assert [r.getMessage() for r in caplog.records] == [
        "rate_cap: backend flaky://store unavailable: ConnectionError: refused; "
        "refusing requests with 503 (fail_closed)"]
    backend.down = False
    flow = make_flow()
    assert request(flt, flow) is None and flow.extra_headers["x-ratelimit-remaining"] == "4"
    assert caplog.records[-1].getMessage() == "rate_cap: backend flaky://store is reachable again; caps apply"
    flt._warned_at = -1e9  # the interval has passed: the next failure is reported with the count
    backend.down = True
    request(flt)
    assert caplog.records[-1].getMessage().endswith("(2 more since the last warning)")


class FlakySettleBackend(FlakyBackend):
    async def settle(self, debits: Any, releases: Any, lease: str) -> None:
        if self.down:
            raise BackendUnavailable("TimeoutError")
        await super().settle(debits, releases, lease)


def test_settlements_missed_while_down_are_replayed(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="outerloop.rate_cap")
    backend = FlakySettleBackend()
    backend.down = False
    flt = RateCapFilter(RateCapConfig.model_validate({"caps": [{"concurrent": 1}]}), backend, "test")
    flt.name = "rate_cap"
    held = make_flow()
    assert request(flt, held) is None
    backend.down = True
    complete(flt, held)
    assert "1 finished request(s) will be settled when it is back" in caplog.text
    backend.down = False
    assert request(flt) is None  # the missed release was replayed first, so the slot is free again
    assert backend.active == {"test:concurrent-by-principal:alice": 1}


def test_usage_counted_across_api_shapes(upstream: tuple[Upstream, str]) -> None:
    server, base = upstream
    filters = [{"name": "rate_cap", "config": {"caps": [{"tokens": 1000, "window": "1h", "key": "global"}]}}]
    config = proxy_config(base, filters=filters)
    config["model_providers"].append({"model": "anthropic/claude-test", "base_url": base})
    messages: Any = [{"role": "user", "content": "hi"}]
    with run_proxy(config) as proxy:
        flt = proxy.runtime.chains[0].chain.filters[0]
        backend = flt.backend
        assert isinstance(backend, MemoryBackend)

        def level() -> float:
            return backend.levels["test:tokens-per-3600s-by-global:*"][0]
        with anthropic.Anthropic(base_url=proxy.url, api_key="sk", max_retries=0) as client:
            for model in ("anthropic/claude-test", "test-model"):  # Anthropic upstream, then OpenAI upstream
                with client.messages.stream(model=model, max_tokens=10, messages=messages) as stream:
                    assert stream.get_final_message().usage.output_tokens == 5
        # Settled once each request is over, just after the client has its last event.
        assert eventually(lambda: level() == pytest.approx(1000 - 2 * 12, abs=0.1))
        with openai.OpenAI(base_url=proxy.url + "/v1", api_key="sk", max_retries=0) as oai:
            chunks = list(oai.chat.completions.create(model="anthropic/claude-test", messages=messages, stream=True))
        assert chunks and all(c.usage is None and c.choices for c in chunks)
        # The SDK hangs up on [DONE]; the usage read before it is settled all the same.
        assert eventually(lambda: level() == pytest.approx(1000 - 3 * 12, abs=0.1))


def test_a_fallback_counts_in_its_own_model_caps_through_the_proxy() -> None:
    caps = [{"name": "per-model", "requests": 1, "window": "1h", "key": "model"},
            {"name": "all", "requests": 10, "window": "1h", "key": "global"},
            {"name": "model-tokens", "tokens": 1000, "window": "1h", "key": "model"}]
    messages: Any = [{"role": "user", "content": "hi"}]
    with serve_faults() as faults:
        rate_cap = {"name": "rate_cap", "config": {"caps": caps}}
        config = {"listeners": [{"name": "test", "port": 0, "filters": [rate_cap]}],
                  "model_providers": [
                      {"model": "test/a", "base_url": faults.url,
                       "retry_policy": {"max_attempts": 2, "backoff": {"base_ms": 1, "max_ms": 5},
                                        "fallback_models": ["test/b"]}},
                      {"model": "test/b", "base_url": faults.url},
                      {"model": "test/c", "base_url": faults.url},
                      {"model": "test/d", "base_url": faults.url,
                       "retry_policy": {"fallback_models": ["test/b", "test/c"]}},
                  ]}
        with run_proxy(config) as proxy:
            backend = proxy.runtime.chains[0].chain.filters[0].backend
            assert isinstance(backend, MemoryBackend)

            def counted(cap: str, limit: int) -> dict[str, int]:
                """Requests counted per key: a GCRA key's TAT is one interval (1h / limit) ahead per request."""
                now = time.monotonic()
                return {k.rpartition(":")[2]: round((tat - now) / (3600 / limit))
                        for k, tat in backend.tats.items() if f":{cap}:" in k}

            with openai.OpenAI(base_url=proxy.url + "/v1", api_key="sk", max_retries=0) as client:
                faults.queued[:] = ["503", "503"]  # test/a fails twice (a retry), test/b serves
                raw = client.chat.completions.with_raw_response.create(model="test/a", messages=messages)
                assert raw.headers["x-outerloop-model"] == "test/b" and raw.headers["x-outerloop-attempts"] == "3"
                assert counted("per-model", 1) == {"test/a": 1, "test/b": 1}
                assert counted("all", 10) == {"*": 1}
                # Settled when the request completes: test/a's estimate given back, test/b's usage (7) spent.
                assert eventually(lambda: {k.rpartition(":")[2]: round(v[0]) for k, v in backend.levels.items()}
                                  == {"test/a": 1000, "test/b": 1000 - 7})
                # test/d fails; test/b has had its request of the hour, so it is skipped and test/c serves.
                faults.queued[:] = ["503"]
                raw = client.chat.completions.with_raw_response.create(model="test/d", messages=messages)
                assert raw.headers["x-outerloop-model"] == "test/c" and raw.headers["x-outerloop-attempts"] == "2"
                assert counted("per-model", 1) == {"test/a": 1, "test/b": 1, "test/c": 1, "test/d": 1}
                assert counted("all", 10) == {"*": 2}
                with pytest.raises(openai.RateLimitError):  # refused at its first attempt: the client's 429
                    client.chat.completions.create(model="test/a", messages=messages)
    assert [json.loads(seen.body)["model"] for seen in faults.seen] == ["a", "a", "b", "d", "c"]
