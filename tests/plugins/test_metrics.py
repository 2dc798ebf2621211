"""Prometheus metrics: counters fed by the request observer, served at GET /metrics."""

from __future__ import annotations

from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import proxy_config
from tests.harness import run_proxy
from tests.upstream import Upstream

MESSAGES = [{"role": "user", "content": "hi"}]


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_metrics_count_requests_fallbacks_tokens_and_router(upstream: tuple[Upstream, str], tmp_path: Path) -> None:
    server, base = upstream
    raw = proxy_config(base, filters=["router"], metrics={"enabled": True})
    raw["routing"] = {"backend": "onnx", "model_path": str(tmp_path / "absent")}
    raw["routing_preferences"] = [{"name": "chat", "description": "small talk", "models": ["test/test-model"]}]
    raw["model_aliases"] = {}
    with run_proxy(raw) as proxy:
        url = proxy.url + "/v1/chat/completions"
        for _ in range(3):
            assert httpx.post(url, json={"messages": MESSAGES}).status_code == 200
        assert httpx.post(url, json={"model": "nope", "messages": MESSAGES}).status_code == 404
        assert httpx.post(url, json={"model": "fail-429", "messages": MESSAGES}).status_code == 429
        assert httpx.post(url, content=b"{not json").status_code == 400
        text = httpx.get(proxy.url + "/metrics").text
    samples = _samples(text)
    listener = "test"
    assert samples[("outerloop_requests_total", (("details", ""), ("listener", listener), ("status", "200")))] == 3
    assert samples[("outerloop_requests_total",
                    (("details", "model.not_found"), ("listener", listener), ("status", "404")))] == 1
    assert samples[("outerloop_requests_total",
                    (("details", "upstream.http_429"), ("listener", listener), ("status", "429")))] == 1
    assert samples[("outerloop_requests_total",
                    (("details", "request.invalid_json"), ("listener", listener), ("status", "400")))] == 1
    assert samples[("outerloop_upstream_served_total", (("model", "test/test-model"),))] == 3
    assert samples[("outerloop_router_fallbacks_total", (("reason", "model_missing"),))] == 3
    assert samples[("outerloop_request_duration_seconds_count", (("listener", listener),))] == 6


def test_metrics_off_by_default(upstream: tuple[Upstream, str]) -> None:
    server, base = upstream
    with run_proxy(proxy_config(base)) as proxy:
        assert httpx.get(proxy.url + "/metrics").status_code == 404
