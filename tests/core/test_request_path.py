"""The request path through a real hypercorn: nothing decided before auth, usage always recorded, one reply path."""

from __future__ import annotations

import logging
from typing import Any

import anthropic
import httpx
import openai
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from core.config import Config
from core.filter import Filter, LocalReply
from core.flow import Flow
from core.hookspecs import RegisterFilter, RegisterObserver, hookimpl
from filters.auth import hash_key
from tests.conftest import proxy_config
from tests.harness import eventually, free_port, run_proxy
from tests.upstream import Upstream

MESSAGES: Any = [{"role": "user", "content": "hi"}]
BOB = "sk-bob-0123456789"
AUTH = {"name": "auth", "config": {"keys": [
    {"name": "alice", "sha256": hash_key("sk-alice-0123456789")},
    {"name": "bob", "sha256": hash_key(BOB), "models": ["test/test-model", "test/slow"]},
]}}


class Recorder:
    """Sees every finished request the way metrics do (an observer), and what each filter phase saw."""

    def __init__(self) -> None:
        self.flows: list[tuple[Flow, BaseException | None]] = []
        self.targets_seen_by_filters: list[list[str]] = []

    @hookimpl
    def outerloop_register_observers(self, register: RegisterObserver) -> None:
        register(lambda flow, error: self.flows.append((flow, error)))

    @hookimpl
    def outerloop_register_filters(self, register: RegisterFilter) -> None:
        recorder = self

        class Peek(Filter):
            async def on_request(self, flow: Flow) -> LocalReply | None:
                recorder.targets_seen_by_filters.append([t.model for t in flow.targets])
                return None

        register("peek", lambda settings, context: Peek())

    def last(self) -> Flow:
        assert eventually(lambda: self.flows), "no request finished"
        return self.flows[-1][0]


# --- order: nothing about models before the filters ran ------------------------------------------------

def test_unknown_model_without_credentials_is_a_401_that_names_no_model(upstream: tuple[Upstream, str]) -> None:
    _, base = upstream
    with run_proxy(proxy_config(base, filters=[AUTH])) as proxy:
        for path, body in (("/v1/chat/completions", {"model": "nope", "messages": MESSAGES}),
                           ("/v1/messages", {"model": "nope", "max_tokens": 5, "messages": MESSAGES})):
            answer = httpx.post(proxy.url + path, json=body)
            assert answer.status_code == 401, answer.text
            assert "test/" not in answer.text and "available" not in answer.text


def test_unknown_model_lists_only_what_the_caller_may_use(upstream: tuple[Upstream, str]) -> None:
    _, base = upstream
    with run_proxy(proxy_config(base, filters=[AUTH])) as proxy:
        with openai.OpenAI(base_url=proxy.url + "/v1", api_key=BOB, max_retries=0) as client:
            with pytest.raises(openai.NotFoundError) as missing:
                client.chat.completions.create(model="nope", messages=MESSAGES)
            with pytest.raises(openai.PermissionDeniedError) as forbidden:
                client.chat.completions.create(model="test/fail-500", messages=MESSAGES)
    assert missing.value.code == "model.not_found"
    message = str(missing.value.body)
    assert "test/test-model" in message and "test/slow" in message and "test/fail-500" not in message
    assert forbidden.value.code == "model.forbidden"


def test_filters_run_before_targets_are_resolved(upstream: tuple[Upstream, str]) -> None:
    _, base = upstream
    recorder = Recorder()
    with run_proxy(proxy_config(base, filters=["peek"]), plugins=(recorder,)) as proxy:
        assert httpx.post(proxy.url + "/v1/chat/completions",
                          json={"model": "test-model", "messages": MESSAGES}).status_code == 200
        unknown = httpx.post(proxy.url + "/v1/chat/completions", json={"model": "nope", "messages": MESSAGES})
    assert recorder.targets_seen_by_filters == [[], []]  # the 404 came after the filters, not before
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "model.not_found"
    assert "test/test-model" in unknown.json()["error"]["message"]  # no auth on this listener: all listed


# --- usage, finish reason and TTFT, recorded by the core without rate_cap --------------------------------

def test_usage_recorded_without_rate_cap_in_metrics_spans_and_observers(upstream: tuple[Upstream, str]) -> None:
    _, base = upstream
    recorder = Recorder()
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))

    class Tracing:
        @hookimpl
        def outerloop_tracer_provider(self, config: Config) -> Any:
            return provider

    config = proxy_config(base, metrics={"enabled": True})
    with run_proxy(config, plugins=(recorder, Tracing())) as proxy:
        with openai.OpenAI(base_url=proxy.url + "/v1", api_key="sk", max_retries=0) as client:
            whole = client.chat.completions.create(model="test-model", messages=MESSAGES)
            chunks = list(client.chat.completions.create(model="test-model", messages=MESSAGES, stream=True))
        metrics = eventually(lambda: _tokens(httpx.get(proxy.url + "/metrics").text))
    assert whole.usage is not None and whole.usage.total_tokens == 12
    # The proxy asked the upstream for usage; the client, who did not, never sees the usage-only chunk.
    assert chunks and all(c.choices and c.usage is None for c in chunks)
    (plain, _), (streamed, error) = eventually(lambda: len(recorder.flows) == 2 and recorder.flows)
    usage = {"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12}
    assert plain.usage == usage and streamed.usage == usage and error is None
    assert plain.finish_reason == streamed.finish_reason == "stop"
    assert plain.ttft_ms is not None and streamed.ttft_ms is not None and 0 < streamed.ttft_ms < 10_000
    assert metrics == {"prompt": 14.0, "completion": 10.0}
    upstream_spans = [s for s in exporter.get_finished_spans() if s.name.startswith("chat ")]
    assert [s.attributes["gen_ai.usage.input_tokens"] for s in upstream_spans] == [7, 7]  # type: ignore[index]
    assert [s.attributes["gen_ai.usage.output_tokens"] for s in upstream_spans] == [5, 5]  # type: ignore[index]


def _tokens(text: str) -> dict[str, float] | None:
    found = {}
    for line in text.splitlines():
        if line.startswith("outerloop_tokens_total{"):
            kind = line.split('kind="')[1].split('"')[0]
            found[kind] = float(line.rsplit(" ", 1)[1])
    return found or None


def test_openai_sdk_through_anthropic_upstream_keeps_usage_when_it_hangs_up_on_done(
        upstream: tuple[Upstream, str], caplog: pytest.LogCaptureFixture) -> None:
    _, base = upstream
    recorder = Recorder()
    config = proxy_config(base)
    config["model_providers"].append({"model": "anthropic/claude-test", "base_url": base})
    with run_proxy(config, plugins=(recorder,)) as proxy:
        with openai.OpenAI(base_url=proxy.url + "/v1", api_key="sk", max_retries=0) as client:
            for include in (True, False):
                chunks = list(client.chat.completions.create(
                    model="anthropic/claude-test", messages=MESSAGES, stream=True,
                    stream_options={"include_usage": include}))
                assert chunks[-1].usage is not None if include else all(c.usage is None for c in chunks)
        assert eventually(lambda: len(recorder.flows) == 2)
    for flow, error in recorder.flows:
        assert flow.usage == {"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12}
        assert flow.finish_reason == "stop"
        assert error is None and flow.details is None  # hanging up after [DONE] is not a failure
    assert "CancelledError" not in caplog.text


def test_anthropic_sdk_through_openai_upstream_records_usage(upstream: tuple[Upstream, str]) -> None:
    _, base = upstream
    recorder = Recorder()
    with run_proxy(proxy_config(base), plugins=(recorder,)) as proxy:
        with anthropic.Anthropic(base_url=proxy.url, api_key="sk", max_retries=0) as client:
            with client.messages.stream(model="test-model", max_tokens=10, messages=MESSAGES) as stream:
                assert stream.get_final_message().usage.output_tokens == 5
            whole = client.messages.create(model="test-model", max_tokens=10, messages=MESSAGES)
        assert whole.usage.input_tokens == 7
        assert eventually(lambda: len(recorder.flows) == 2)
    for flow, _ in recorder.flows:
        assert flow.usage == {"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12}
        assert flow.finish_reason == "stop"


# --- errors: dotted codes, no internal hosts, ports or library text ---------------------------------------

def test_upstream_failure_bodies_carry_the_request_id_not_the_host(
        upstream: tuple[Upstream, str], caplog: pytest.LogCaptureFixture) -> None:
    _, base = upstream
    dead = free_port()
    config = proxy_config(base)
    config["model_providers"].append({"model": "test/dead", "base_url": f"http://127.0.0.1:{dead}/v1"})
    caplog.set_level(logging.WARNING, "outerloop")
    with run_proxy(config) as proxy:
        for path, body in (("/v1/chat/completions", {"model": "test/dead", "messages": MESSAGES}),
                           ("/v1/messages", {"model": "test/dead", "max_tokens": 5, "messages": MESSAGES})):
            answer = httpx.post(proxy.url + path, json=body, headers={"x-request-id": "req-42"})
            assert answer.status_code == 502
            text = answer.text
            assert "127.0.0.1" not in text and str(dead) not in text and "Connect" not in text
            assert "req-42" in text and "upstream.unavailable" in text
    assert str(dead) in caplog.text  # the operator's log has the detail


def test_every_core_error_code_is_dotted(upstream: tuple[Upstream, str]) -> None:
    _, base = upstream
    with run_proxy(proxy_config(base)) as proxy:
        url = proxy.url + "/v1/chat/completions"
        answers = [
            httpx.post(url, content=b"{not json"),
            httpx.post(url, json=[1]),
            httpx.post(url, json={"model": 5, "messages": MESSAGES}),
            httpx.post(url, json={"model": "test-model"}),
            httpx.post(url, json={"model": "test-model", "messages": [{"role": "user", "content": 5}]}),
            httpx.post(url, json={"model": "nope", "messages": MESSAGES}),
            httpx.get(url),
            httpx.post(proxy.url + "/v1/nothing", json={}),
            httpx.post(proxy.url + "/v1/messages", json={"model": "test-model", "messages": MESSAGES}),
        ]
    codes = [a.json()["error"]["code"] for a in answers]
    assert codes == ["request.invalid_json", "request.invalid_json", "request.invalid_type",
                     "request.missing_field", "request.invalid_type", "model.not_found",
                     "request.method_not_allowed", "request.not_found", "request.missing_field"]
