"""Retries, fallbacks, deployments, balancing and outlier ejection (core.balancing, ProxyEndpoint._dispatch):
real hypercorn, the real SDKs as clients, tests/faults.py as the upstream."""

from __future__ import annotations

import asyncio

import logging
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import openai
import pytest

from core.balancing import Balancer, Deployment, retry_after_seconds
from core.config import ModelProvider, OutlierDetection, RetryPolicy
from core.config_loader import parse_config
from core.errors import ConfigError
from core.plugins import build_registry
from core.target import Target, Upstream
from tests.faults import FaultyUpstream, serve_faults
from tests.harness import Proxy, eventually, open_sockets, run_proxy

MESSAGES: Any = [{"role": "user", "content": "hi"}]
QUICK = {"max_attempts": 3, "backoff": {"base_ms": 1, "max_ms": 5}}


@pytest.fixture()
def faults() -> Iterator[FaultyUpstream]:
    with serve_faults() as upstream:
        yield upstream


def _baseline(proxy: Proxy) -> tuple[int, int]:
    return open_sockets(), proxy.tasks()


def _released(proxy: Proxy, faults: FaultyUpstream, before: tuple[int, int]) -> None:
    sockets, tasks = before
    assert eventually(lambda: open_sockets() <= sockets and proxy.tasks() <= tasks and faults.open == 0), \
        (open_sockets(), sockets, proxy.tasks(), tasks, faults.open)


def _config(providers: list[dict[str, Any]], **top: Any) -> dict[str, Any]:
    return {"listeners": [{"name": "test", "port": 0, "filters": top.pop("filters", [])}],
            "model_providers": providers, **top}


def _openai(proxy: Proxy) -> openai.OpenAI:
    return openai.OpenAI(base_url=proxy.url + "/v1", api_key="sk-client", max_retries=0)


def test_a_503_is_retried_then_served(faults: FaultyUpstream) -> None:
    with run_proxy(_config([{"model": "test/ok", "base_url": faults.url, "retry_policy": QUICK}])) as proxy:
        before = _baseline(proxy)
        faults.queued[:] = ["503"]
        with _openai(proxy) as client:
            raw = client.chat.completions.with_raw_response.create(model="test/ok", messages=MESSAGES)
        answer = raw.parse()
        assert answer.choices[0].message.content == faults.text
        assert raw.headers["x-outerloop-attempts"] == "2" and raw.headers["x-outerloop-model"] == "test/ok"
        assert len(faults.seen) == 2
        _released(proxy, faults, before)


def test_a_429_waits_what_retry_after_says(faults: FaultyUpstream) -> None:
    with run_proxy(_config([{"model": "anthropic/ok", "base_url": faults.url, "retry_policy": QUICK}])) as proxy:
        before = _baseline(proxy)
        faults.queued[:] = ["429-soon"]
        started = time.monotonic()
        with anthropic.Anthropic(base_url=proxy.url, api_key="sk-client", max_retries=0) as claude:
            raw = claude.messages.with_raw_response.create(model="anthropic/ok", max_tokens=5, messages=MESSAGES)
        elapsed = time.monotonic() - started
        assert raw.parse().content[0].text == faults.text  # type: ignore[union-attr]
        assert raw.headers["x-outerloop-attempts"] == "2"
        assert 0.9 <= elapsed < 3, elapsed
        _released(proxy, faults, before)


def test_a_retry_after_past_the_deadline_falls_back_at_once(faults: FaultyUpstream) -> None:
    policy = {**QUICK, "fallback_models": ["anthropic/ok"]}
    with run_proxy(_config([
        {"model": "test/ok", "base_url": faults.url, "retry_policy": policy, "timeouts": {"total": 3}},
        {"model": "anthropic/ok", "base_url": faults.url},
    ])) as proxy:
        faults.queued[:] = ["429"]  # Retry-After: 7, past the 3 s deadline
        started = time.monotonic()
        with _openai(proxy) as client:
            raw = client.chat.completions.with_raw_response.create(model="test/ok", messages=MESSAGES)
        assert time.monotonic() - started < 1
        assert raw.parse().choices[0].message.content == faults.text
        assert raw.headers["x-outerloop-model"] == "anthropic/ok" and raw.headers["x-outerloop-attempts"] == "2"


@pytest.mark.parametrize("stream", [False, True])
def test_fallback_to_another_model_and_provider_shape(faults: FaultyUpstream, stream: bool) -> None:
    # An OpenAI-shaped upstream that always fails, then a second OpenAI model, then an Anthropic one.
    with run_proxy(_config([
        {"model": "test/vllm-500", "base_url": faults.url,
         "retry_policy": {"fallback_models": ["test/html-503", "anthropic/ok"]}},
        {"model": "test/html-503", "base_url": faults.url},
        {"model": "anthropic/ok", "base_url": faults.url},
    ])) as proxy:
        before = _baseline(proxy)
        with _openai(proxy) as client:
            if stream:
                with client.chat.completions.with_streaming_response.create(
                        model="test/vllm-500", messages=MESSAGES, stream=True) as response:
                    assert response.headers["x-outerloop-model"] == "anthropic/ok"
                    assert response.headers["x-outerloop-attempts"] == "3"
                    text = "".join(chunk.choices[0].delta.content or "" for chunk in response.parse()
                                   if chunk.choices)
            else:
                raw = client.chat.completions.with_raw_response.create(model="test/vllm-500", messages=MESSAGES)
                assert raw.headers["x-outerloop-model"] == "anthropic/ok"
                text = raw.parse().choices[0].message.content or ""
        assert text.strip() == faults.text
        assert [seen.path for seen in faults.seen] == ["/v1/chat/completions"] * 2 + ["/v1/messages"]
        _released(proxy, faults, before)


def test_a_fallback_the_principal_may_not_use_is_skipped(faults: FaultyUpstream) -> None:
    from filters.auth import hash_key

    key = "sk-carol-0123456789"
    auth = {"name": "auth", "config": {"keys": [{"name": "carol", "sha256": hash_key(key),
                                                 "models": ["test/503", "test/ok"]}]}}
    with run_proxy(_config([
        {"model": "test/503", "base_url": faults.url, "retry_policy": {"fallback_models": ["anthropic/ok", "test/ok"]}},
        {"model": "anthropic/ok", "base_url": faults.url},
        {"model": "test/ok", "base_url": faults.url},
    ], filters=[auth])) as proxy:
        with openai.OpenAI(base_url=proxy.url + "/v1", api_key=key, max_retries=0) as client:
            raw = client.chat.completions.with_raw_response.create(model="test/503", messages=MESSAGES)
        assert raw.headers["x-outerloop-model"] == "test/ok" and raw.headers["x-outerloop-attempts"] == "2"
        # The verbose health check is guarded like the other endpoints; the plain one stays open.
        assert httpx.get(proxy.url + "/healthz?verbose=1").status_code == 401
        assert httpx.get(proxy.url + "/healthz").status_code == 200
        verbose = httpx.get(proxy.url + "/healthz?verbose=1", headers={"authorization": f"Bearer {key}"})
        assert verbose.status_code == 200 and "test/503" in verbose.json()["models"]


def test_no_retry_once_the_first_byte_went_out(faults: FaultyUpstream) -> None:
    with run_proxy(_config([
        {"model": "test/reset-stream", "base_url": faults.url,
         "retry_policy": {**QUICK, "fallback_models": ["test/ok"]}},
        {"model": "test/ok", "base_url": faults.url},
    ])) as proxy:
        before = _baseline(proxy)
        with _openai(proxy) as client:
            with pytest.raises(openai.APIError) as reset:
                list(client.chat.completions.create(model="test/reset-stream", messages=MESSAGES, stream=True))
        assert "upstream" in str(reset.value)
        assert len(faults.seen) == 1  # the stream had begun: not retried, not spliced with another answer
        _released(proxy, faults, before)


def test_a_refused_deployment_is_skipped_then_ejected_then_probed(faults: FaultyUpstream,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="outerloop.balancing")
    outlier = {"consecutive_failures": 2, "base_ejection_seconds": 0.5, "max_ejection_seconds": 5}
    with run_proxy(_config([
        {"model": "test/ok", "base_url": faults.refusing_url},
        {"model": "test/ok", "base_url": faults.url},
    ], outlier_detection=outlier, metrics={"enabled": True})) as proxy:
        before = _baseline(proxy)
        with _openai(proxy) as client:
            # No retry policy: a connect failure still moves to the other deployment; every client is served.
            attempts = []
            for _ in range(6):
                raw = client.chat.completions.with_raw_response.create(model="test/ok", messages=MESSAGES)
                assert raw.parse().choices[0].message.content == faults.text
                attempts.append(raw.headers["x-outerloop-attempts"])
            # Round robin sends every other request to the refused one, until its second failure ejects it.
            assert attempts.count("2") == 2 and attempts[-2:] == ["1", "1"], attempts
            health = httpx.get(proxy.url + "/healthz?verbose=1").json()["models"]["test/ok"]
            assert [d["state"] for d in health] == ["ejected", "healthy"] and health[0]["ejections"] == 1
            assert [d["outstanding"] for d in health] == [0, 0]
            time.sleep(0.6)
            raw = client.chat.completions.with_raw_response.create(model="test/ok", messages=MESSAGES)
            assert raw.headers["x-outerloop-attempts"] == "2"  # the probe, refused, then the healthy one
            health = httpx.get(proxy.url + "/healthz?verbose=1").json()["models"]["test/ok"]
            assert health[0]["state"] == "ejected" and health[0]["ejections"] == 2
            assert 0.5 < health[0]["ejected_for_seconds"] <= 1.0
        metrics = httpx.get(proxy.url + "/metrics").text
        assert 'outerloop_outlier_ejections_total{model="test/ok"} 2.0' in metrics
        assert 'outerloop_outlier_probes_total{model="test/ok",outcome="tried"} 1.0' in metrics
        _released(proxy, faults, before)
    messages = [r.getMessage() for r in caplog.records if r.name == "outerloop.balancing"]
    assert sum("ejected" in m for m in messages) == 2 and sum("probing" in m for m in messages) == 1


def test_the_last_healthy_deployment_is_never_ejected(faults: FaultyUpstream) -> None:
    outlier = {"consecutive_failures": 1, "base_ejection_seconds": 60}
    with run_proxy(_config([
        {"model": "test/ok", "base_url": faults.refusing_url},
        {"model": "test/ok", "base_url": faults.refusing_url.replace("127.0.0.1", "localhost")},
    ], outlier_detection=outlier)) as proxy:
        before = _baseline(proxy)
        for _ in range(4):
            response = httpx.post(proxy.url + "/v1/chat/completions", json={"model": "test/ok", "messages": MESSAGES})
            # One clear error in the client's shape.
            assert response.status_code == 502 and response.json()["error"]["code"] == "upstream.unavailable"
            assert response.headers["x-outerloop-attempts"] in ("1", "2")
        states = [d["state"] for d in httpx.get(proxy.url + "/healthz?verbose=1").json()["models"]["test/ok"]]
        assert sorted(states) == ["ejected", "healthy"]
        _released(proxy, faults, before)


def test_weighted_round_robin_within_5_percent_over_1000_real_requests(faults: FaultyUpstream) -> None:
    host = faults.url.replace("127.0.0.1", "localhost")
    with run_proxy(_config([
        {"model": "test/ok", "base_url": faults.url, "weight": 1},
        {"model": "test/ok", "base_url": host, "weight": 3},
    ])) as proxy:
        async def load() -> list[int]:
            # 1,000 requests, 16 at a time: the weights hold under concurrency, not only one by one.
            gate = asyncio.Semaphore(16)
            async with httpx.AsyncClient(base_url=proxy.url, timeout=30) as client:
                async def one() -> int:
                    async with gate:
                        answer = await client.post("/v1/chat/completions",
                                                   json={"model": "test/ok", "messages": MESSAGES})
                        return answer.status_code
                return await asyncio.gather(*(one() for _ in range(1000)))

        assert set(asyncio.run(load())) == {200}
        assert all(d["outstanding"] == 0 for d in proxy.runtime.balancers.health()["test/ok"])
    hosts = Counter(seen.headers["host"].partition(":")[0] for seen in faults.seen)
    assert sum(hosts.values()) == 1000
    assert abs(hosts["localhost"] / 1000 - 0.75) <= 0.05 and abs(hosts["127.0.0.1"] / 1000 - 0.25) <= 0.05, hosts


# --- the balancer in-process ----------------------------------------------------------------------------

def _balancer(weights: list[int], balancing: Any = "weighted_round_robin", **outlier: Any) -> Balancer:
    deployments = []
    for i, weight in enumerate(weights):
        provider = ModelProvider(model="test/m", base_url=f"http://10.0.0.{i}/v1", weight=weight)
        upstream = Upstream("openai", provider.url, None, None)  # type: ignore[arg-type]
        deployments.append(Deployment(Target(provider, upstream), weight))
    now = [0.0]
    balancer = Balancer("test/m", deployments, balancing, RetryPolicy(), OutlierDetection(**outlier),
                        clock=lambda: now[0])
    balancer.now = now  # type: ignore[attr-defined]
    return balancer


def test_weighted_round_robin_is_within_5_percent_over_1000_picks() -> None:
    balancer = _balancer([1, 2, 7])
    counts = Counter(balancer.pick()[0].weight for _ in range(1000))  # type: ignore[union-attr]
    for weight in (1, 2, 7):
        assert abs(counts[weight] / 1000 - weight / 10) <= 0.05 * weight / 10, counts
    # Smooth: the heaviest never takes more than its share in a row.
    run = [balancer.pick()[0].weight for _ in range(10)]  # type: ignore[union-attr]
    assert "7, 7, 7, 7" not in ", ".join(map(str, run))


def test_least_outstanding_picks_the_least_busy() -> None:
    balancer = _balancer([1, 1, 1], "least_outstanding")
    busy, idle, _ = balancer.deployments
    busy.outstanding, idle.outstanding, balancer.deployments[2].outstanding = 3, 0, 1
    assert all(balancer.pick()[0] is idle for _ in range(5))


def test_ejection_grows_and_a_good_probe_restores() -> None:
    balancer = _balancer([1, 1], consecutive_failures=3, base_ejection_seconds=10, max_ejection_seconds=15)
    bad, good = balancer.deployments
    now: list[float] = balancer.now  # type: ignore[attr-defined]
    assert [balancer.failed(bad) for _ in range(2)] == [None, None]
    balancer.succeeded(bad)  # a success resets the streak
    events = [balancer.failed(bad) for _ in range(3)]
    assert events[-1] is not None and events[-1].kind == "ejected" and bad.ejected_until == 10
    assert all(balancer.pick()[0] is good for _ in range(5))
    now[0] = 10.5
    picked, event = balancer.pick()
    assert picked is bad and event is not None and event.kind == "probe"
    assert balancer.failed(bad) is not None and bad.ejected_until == 10.5 + 15  # 2 x 10, capped at 15
    now[0] = 30
    picked, _ = balancer.pick()
    assert picked is bad
    restored = balancer.succeeded(bad)
    assert restored is not None and restored.kind == "restored" and bad.ejections == 0
    # The last healthy one stays in however often it fails.
    for _ in range(3):
        balancer.failed(bad)
    assert [balancer.failed(good) for _ in range(10)] == [None] * 10 and good.ejected_until == 0


def test_retry_after_reads_seconds_and_dates() -> None:
    assert retry_after_seconds("7") == 7 and retry_after_seconds(None) is None
    assert retry_after_seconds("soon") is None
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT") == 0
    later = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 30))
    assert 28 <= (retry_after_seconds(later) or 0) <= 31


# --- config -------------------------------------------------------------------------------------------

def test_fallbacks_must_be_configured_and_deployments_must_agree() -> None:
    raw = _config([
        {"model": "test/a", "base_url": "http://127.0.0.1:9/v1", "retry_policy": {"fallback_models": ["test/nope"]}},
        {"model": "test/a", "base_url": "http://127.0.0.2:9/v1", "load_balancing": "least_outstanding"},
    ], retry_policy={"fallback_models": ["test/a", "gone"]})
    with pytest.raises(ConfigError) as caught:
        parse_config(raw, build_registry(), source="x.yaml")
    problems = "\n".join(caught.value.problems)
    assert "x.yaml: model_providers[0].retry_policy.fallback_models[0]: 'test/nope' is not a configured model" in problems
    assert "x.yaml: retry_policy.fallback_models[1]: 'gone' is not a configured model" in problems
    assert "x.yaml: model_providers[1].retry_policy: differs from model_providers[0]" in problems
    assert "x.yaml: model_providers[1].load_balancing: differs" in problems
    # Deployments that agree load; several may say `default`.
    config = parse_config(_config([
        {"model": "test/a", "base_url": "http://127.0.0.1:9/v1", "default": True, "weight": 3},
        {"model": "test/a", "base_url": "http://127.0.0.2:9/v1", "default": True},
    ]), build_registry())
    assert [p.weight for p in config.model_providers] == [3, 1]


def test_every_attempt_is_a_span(faults: FaultyUpstream) -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from core.hookspecs import hookimpl

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))

    class Tracing:
        @hookimpl
        def outerloop_tracer_provider(self) -> Any:
            return provider

    with run_proxy(_config([{"model": "test/ok", "base_url": faults.url, "retry_policy": QUICK}]),
                   plugins=(Tracing(),)) as proxy:
        faults.queued[:] = ["503"]
        with _openai(proxy) as client:
            client.chat.completions.create(model="test/ok", messages=MESSAGES)
    attempts = sorted((s for s in exporter.get_finished_spans() if s.name.startswith("attempt ")),
                      key=lambda s: s.attributes["outerloop.attempt"])  # type: ignore[index]
    (chat,) = [s for s in exporter.get_finished_spans() if s.name.startswith("chat ")]
    assert [(a.attributes or {}).get("http.response.status_code") for a in attempts] == [503, 200]
    assert [(a.attributes or {}).get("outerloop.attempt.reason") for a in attempts] == ["http_503", "answered"]
    assert all(a.parent is not None and a.parent.span_id == chat.context.span_id for a in attempts)
    assert (attempts[0].attributes or {})["server.address"] == faults.url.split("/")[2]
    assert (chat.attributes or {})["outerloop.attempts"] == 2


def test_when_everything_fails_the_client_gets_the_last_answer_in_its_shape(faults: FaultyUpstream) -> None:
    with run_proxy(_config([
        {"model": "anthropic/anthropic-529", "base_url": faults.url,
         "retry_policy": {**QUICK, "max_attempts": 2, "fallback_models": ["test/vllm-500"]}},
        {"model": "test/vllm-500", "base_url": faults.url},
    ])) as proxy:
        before = _baseline(proxy)
        with anthropic.Anthropic(base_url=proxy.url, api_key="sk-client", max_retries=0) as claude:
            with pytest.raises(anthropic.InternalServerError) as caught:
                claude.messages.create(model="anthropic/anthropic-529", max_tokens=5, messages=MESSAGES)
        assert caught.value.status_code == 500 and "CUDA out of memory" in str(caught.value)
        assert caught.value.response.headers["x-outerloop-attempts"] == "3"
        assert caught.value.response.headers["x-outerloop-model"] == "test/vllm-500"
        assert caught.value.body["type"] == "error"  # type: ignore[index]
        _released(proxy, faults, before)
