from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import openai
import pytest
import redis

from core.config import ModelProvider
from core.flow import Flow
from core.target import Target
from filters.rate_cap.config import RateCapConfig, RedisSettings
from filters.rate_cap.filter import RateCapFilter
from filters.rate_cap.memory import Check
from filters.rate_cap.redis_backend import RedisBackend
from tests.conftest import proxy_config
from tests.harness import free_port, proxy_process, run_proxy
from tests.upstream import Upstream



def settings(url: str, **extra: Any) -> RedisSettings:
    # A generous timeout where Redis is up: a loaded CI box must not turn a slow reply into a fail-open.
    return RedisSettings(url=url, key_prefix=f"test:{uuid.uuid4().hex[:8]}", **{"timeout_seconds": 2.0, **extra})


def check(kind: str, key: str, limit: int, window: float = 3600.0, cost: float = 1.0, burst: int | None = None) -> Check:
    return Check(kind, key, limit, window, burst or limit, cost, key)  # type: ignore[arg-type]


def make_flow(principal: str = "alice", content: str = "hi") -> Flow:
    body = {"model": "m", "messages": [{"role": "user", "content": content}]}
    flow = Flow(request_id=uuid.uuid4().hex, listener="test", api="openai", method="POST",
                path="/v1/chat/completions", headers={}, body=json.dumps(body).encode(), json_body=body)
    flow.principal = SimpleNamespace(name=principal)
    return flow


def make_filter(url: str, caps: list[dict[str, Any]], **extra: Any) -> RateCapFilter:
    config = RateCapConfig.model_validate({
        "caps": caps, "backend": "redis",
        "redis": {"url": url, "key_prefix": f"test:{uuid.uuid4().hex[:8]}", **extra.pop("redis", {})}, **extra,
    })

    assert config.redis is not None
    flt = RateCapFilter(config, RedisBackend(config.redis, config.concurrency_lease_seconds), "test")
    flt.name = "rate_cap"
    return flt


def test_gcra_admits_n_and_reports_retry_after(redis_url: str) -> None:
    async def scenario() -> None:
        backend = RedisBackend(settings(redis_url), 900)
        await backend.start()
        try:
            results = [await backend.acquire([check("requests", "k", 4, window=60)], f"l{i}") for i in range(6)]
        finally:
            await backend.close()
        assert [r[0].admitted for r in results] == [True] * 4 + [False] * 2
        assert [r[0].remaining for r in results[:4]] == [3, 2, 1, 0]
        assert 13 < results[4][0].retry_after <= 15.0  # one request every 15 s (less the time the calls took)
        assert 58 < results[4][0].reset <= 60
    asyncio.run(scenario())


def test_rejecting_cap_commits_nothing(redis_url: str) -> None:
    base = settings(redis_url)
    direct = redis.Redis.from_url(redis_url)

    async def scenario() -> None:
        backend = RedisBackend(base, 900)
        await backend.start()
        try:
            assert (await backend.acquire([check("requests", "g", 1)], "l0"))[0].admitted
            caps = [check("requests", "user", 5), check("tokens", "tok", 100, cost=10),
                    check("concurrent", "slots", 3), check("requests", "g", 1)]
            outcomes = await backend.acquire(caps, "l1")
            assert [o.admitted for o in outcomes] == [True, True, True, False]
        finally:
            await backend.close()
    asyncio.run(scenario())
    for key in ("user", "tok", "slots"):
        assert not direct.exists(f"{base.key_prefix}:{key}")
    assert direct.exists(f"{base.key_prefix}:g")
    direct.close()


def test_tokens_debit_after_the_call_and_concurrency_leases(redis_url: str) -> None:
    base = settings(redis_url)
    direct = redis.Redis.from_url(redis_url)

    async def scenario() -> None:
        backend = RedisBackend(base, lease_seconds=1.0)
        await backend.start()
        try:
            tokens = check("tokens", "t", 1000, window=3600, cost=100)
            assert (await backend.acquire([tokens], "a"))[0].remaining == pytest.approx(900, abs=0.1)
            await backend.settle([(tokens, 1500.0)], [], "a")
            level = float(direct.hget(f"{base.key_prefix}:t", "level") or 0)
            assert level == pytest.approx(-600, abs=1)
            refused = (await backend.acquire([tokens], "b"))[0]
            assert not refused.admitted and refused.retry_after == pytest.approx(700 * 3.6, rel=0.01)
            slots = check("concurrent", "c", 1)
            assert (await backend.acquire([slots], "lease-1"))[0].admitted
            assert not (await backend.acquire([slots], "lease-2"))[0].admitted
            await backend.settle([], [slots], "lease-1")
            assert (await backend.acquire([slots], "lease-3"))[0].admitted
            await asyncio.sleep(1.2)  # a proxy that died holding lease-3: its slot expires
            assert (await backend.acquire([slots], "lease-4"))[0].admitted
        finally:
            await backend.close()
    asyncio.run(scenario())
    direct.close()


def test_scripts_run_by_sha_and_survive_a_script_flush(redis_url: str) -> None:
    direct = redis.Redis.from_url(redis_url)
    before = direct.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0)

    async def scenario() -> None:
        backend = RedisBackend(settings(redis_url), 900)
        await backend.start()
        try:
            assert (await backend.acquire([check("requests", "k", 2)], "a"))[0].admitted
            direct.script_flush()
            assert (await backend.acquire([check("requests", "k", 2)], "b"))[0].admitted
            assert not (await backend.acquire([check("requests", "k", 2)], "c"))[0].admitted
        finally:
            await backend.close()
    asyncio.run(scenario())
    assert direct.info("commandstats")["cmdstat_evalsha"]["calls"] >= before + 3
    direct.close()


def test_filter_against_redis_keeps_budget_across_instances(redis_url: str) -> None:
    """Two filter instances (two processes' worth) on one prefix share one budget."""
    async def scenario() -> None:
        config = {"caps": [{"requests": 3, "window": "1h"}], "backend": "redis",
                  "redis": {"url": redis_url, "key_prefix": f"test:{uuid.uuid4().hex[:8]}", "timeout_seconds": 2.0}}
        filters = []
        for _ in range(2):
            settings_ = RateCapConfig.model_validate(config)
            assert settings_.redis is not None
            flt = RateCapFilter(settings_, RedisBackend(settings_.redis, 900), "test")
            flt.name = "rate_cap"
            await flt.start()
            filters.append(flt)
        try:
            replies = [await filters[i % 2].on_request(make_flow()) for i in range(5)]
            assert [r is None for r in replies] == [True, True, True, False, False]
            assert await filters[0].on_request(make_flow("bob")) is None
        finally:
            for flt in filters:
                await flt.close()
    asyncio.run(scenario())


def test_each_model_tried_is_admitted_and_settled_in_redis(redis_url: str) -> None:
    """A request that failed over: one lease holds a slot per model; the failed model's estimate comes back."""
    flt = make_filter(redis_url, [{"name": "slots", "concurrent": 1, "key": "model"},
                                  {"name": "tokens", "tokens": 1000, "window": "1h", "key": "model"},
                                  {"name": "all", "requests": 10, "window": "1h", "key": "global"}])
    assert flt.settings.redis is not None
    prefix = f"{flt.settings.redis.key_prefix}:test"
    direct = redis.Redis.from_url(redis_url)

    def target(model: str) -> Target:
        return Target(ModelProvider(model=model, base_url="http://127.0.0.1:1/v1"), None)  # type: ignore[arg-type]

    async def scenario() -> None:
        await flt.start()
        try:
            flow = make_flow(content="x" * 400)  # estimate 107
            for model in ("test/a", "test/a", "test/b"):  # test/a retried, then test/b
                assert await flt.on_upstream_request(flow, target(model)) is None
            assert [direct.zcard(f"{prefix}:slots:{m}") for m in ("test/a", "test/b")] == [1, 1]
            other = make_flow()
            assert await flt.on_upstream_request(other, target("test/b")) is not None  # test/b's slot is taken
            flow.attempts, flow.response_status, flow.served_by = 3, 200, target("test/b")
            flow.usage = {"prompt_tokens": 100, "completion_tokens": 200, "total_tokens": 300}
            await flt.on_complete(flow, None)
            assert [direct.zcard(f"{prefix}:slots:{m}") for m in ("test/a", "test/b")] == [0, 0]
            levels = [float(direct.hget(f"{prefix}:tokens:{m}", "level") or 0) for m in ("test/a", "test/b")]
            assert levels == [pytest.approx(1000, abs=1), pytest.approx(700, abs=1)]
            assert await flt.on_upstream_request(other, target("test/b")) is None
            await flt.on_complete(other, None)
        finally:
            await flt.close()
    asyncio.run(scenario())
    direct.close()


@pytest.fixture
def dead_port() -> int:
    return free_port()


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts TCP connections and never answers (a wedged Redis)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        yield int(sock.getsockname()[1])


@pytest.mark.parametrize("where", ["dead_port", "silent_port"])
def test_redis_down_fail_open_admits_fast_and_warns_once(where: str, request: pytest.FixtureRequest,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    port = request.getfixturevalue(where)
    url = f"redis://:hunter2@127.0.0.1:{port}/0"

    async def scenario() -> list[Any]:
        flt = make_filter(url, [{"requests": 1}, {"concurrent": 1}, {"tokens": 100}],
                          redis={"retry_after_failure_seconds": 0})
        await flt.start()
        try:
            results = []
            for _ in range(3):
                flow = make_flow()
                started = time.monotonic()
                results.append((await flt.on_request(flow), time.monotonic() - started))
                await flt.on_complete(flow, None)
            return results
        finally:
            await flt.close()
    caplog.set_level(logging.WARNING, logger="outerloop.rate_cap")
    results = asyncio.run(asyncio.wait_for(scenario(), 10))
    assert all(reply is None for reply, _ in results)
    assert all(elapsed < 2.0 for _, elapsed in results)
    warnings = [r.getMessage() for r in caplog.records if "unavailable" in r.getMessage()]
    assert len(warnings) == 1
    assert f"redis://127.0.0.1:{port}/0 unavailable" in warnings[0] and "fail_open" in warnings[0]
    assert "hunter2" not in caplog.text


def test_redis_down_fail_closed_is_503_through_the_sdk(upstream: tuple[Upstream, str], silent_port: int,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    server, base = upstream
    filters = [{"name": "rate_cap", "config": {
        "caps": [{"requests": 100}], "backend": "redis", "on_backend_error": "fail_closed",
        "redis": {"url": f"redis://127.0.0.1:{silent_port}/0", "timeout_seconds": 0.1}}}]
    caplog.set_level(logging.WARNING, logger="outerloop.rate_cap")
    with run_proxy(proxy_config(base, filters=filters)) as proxy:
        with openai.OpenAI(base_url=proxy.url + "/v1", api_key="sk", max_retries=0) as client:
            for _ in range(2):
                started = time.monotonic()
                with pytest.raises(openai.InternalServerError) as failed:
                    client.chat.completions.create(model="test-model", messages=[{"role": "user", "content": "x"}])
                assert time.monotonic() - started < 2.0
                assert failed.value.status_code == 503 and failed.value.code == "rate_cap.backend_unavailable"
                assert failed.value.response.headers["retry-after"] == "1"
    assert server.seen == []
    assert "fail_closed" in caplog.text and f"127.0.0.1:{silent_port}" in caplog.text


def test_openai_sdk_rate_limited_through_redis(upstream: tuple[Upstream, str], redis_url: str) -> None:
    _, base = upstream
    filters = [{"name": "rate_cap", "config": {
        "caps": [{"requests": 1, "window": "1h", "key": "global"}], "backend": "redis",
        "redis": {"url": redis_url, "key_prefix": f"test:{uuid.uuid4().hex[:8]}", "timeout_seconds": 2.0}}}]
    with run_proxy(proxy_config(base, filters=filters)) as proxy:
        with openai.OpenAI(base_url=proxy.url + "/v1", api_key="sk", max_retries=0) as client:
            client.chat.completions.create(model="test-model", messages=[{"role": "user", "content": "x"}])
            with pytest.raises(openai.RateLimitError) as limited:
                client.chat.completions.create(model="test-model", messages=[{"role": "user", "content": "x"}])
    assert limited.value.code == "rate_cap.exceeded"
    assert 3590 <= int(limited.value.response.headers["retry-after"]) <= 3600


@pytest.fixture
def separate_proxy(upstream: tuple[Upstream, str], redis_url: str, tmp_path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """An outerloop started as its own process (`python -m core.cli serve`), sharing Redis with the test."""
    _, base = upstream
    prefix = f"test:{uuid.uuid4().hex[:8]}"
    filters = [{"name": "rate_cap", "config": {
        "caps": [{"requests": 10, "window": "1h", "key": "global"}], "backend": "redis",
        # 30 requests at once on a 2-core box: a Redis reply must not time out into fail-open admissions.
        "redis": {"url": redis_url, "key_prefix": prefix, "timeout_seconds": 2.0}}}]
    raw = proxy_config(base, filters=filters, server={"drain_seconds": 1})
    with proxy_process(raw, tmp_path) as (_, url):
        yield url, raw


def test_two_proxy_processes_share_one_budget(separate_proxy: tuple[str, dict[str, Any]]) -> None:
    other_url, raw = separate_proxy
    statuses: list[int] = []
    lock = threading.Lock()
    with run_proxy(raw | {"listeners": [{**raw["listeners"][0], "port": 0}]}) as proxy:
        urls = [proxy.url, other_url]
        for url in urls:  # both are up and talking to the upstream before the race
            assert httpx.get(url + "/healthz").status_code == 200
        barrier = threading.Barrier(30)

        def call(i: int) -> None:
            barrier.wait()
            response = httpx.post(urls[i % 2] + "/v1/chat/completions", timeout=10,
                                  json={"model": "test-model", "messages": [{"role": "user", "content": "x"}]})
            with lock:
                statuses.append(response.status_code)
        threads = [threading.Thread(target=call, args=(i,)) for i in range(30)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert sorted(statuses) == [200] * 10 + [429] * 20
