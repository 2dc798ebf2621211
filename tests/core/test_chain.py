"""Filter chain semantics through a real server: YAML order, reverse responses, local replies, on_complete."""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest
from pydantic import BaseModel, ConfigDict

from core.filter import Filter, FilterContext, LocalReply
from core.flow import Flow
from core.hookspecs import hookimpl
from tests.conftest import proxy_config
from tests.harness import free_port, run_proxy
from tests.upstream import Upstream

MESSAGES = [{"role": "user", "content": "hi"}]


class RecorderConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    stop_on: str | None = None
    stop_phase: str = "request"
    fail_on: str | None = None


class Recorder(Filter):
    """Appends `<phase>:<name>` to a shared log, and stops or fails when the prompt says so."""

    def __init__(self, config: RecorderConfig, log: list[str]) -> None:
        self.config = config
        self.log = log

    async def on_request(self, flow: Flow) -> LocalReply | None:
        self.log.append(f"request:{self.name}")
        text = flow.last_user_text()
        if self.config.fail_on and self.config.fail_on in text:
            raise RuntimeError("a bug in a filter")
        if self.config.stop_phase == "request" and self.config.stop_on and self.config.stop_on in text:
            return LocalReply(429, f"stopped by {self.name}", f"{self.name}.stopped", {"retry-after": "3"})
        return None

    async def on_response(self, flow: Flow) -> LocalReply | None:
        self.log.append(f"response:{self.name}")
        return None

    async def on_response_chunk(self, flow: Flow, chunk: bytes, end: bool) -> bytes | LocalReply:
        if chunk:
            self.log.append(f"chunk:{self.name}")
        if self.config.stop_phase == "chunk" and self.config.stop_on and self.config.stop_on.encode() in chunk:
            return LocalReply(400, f"output stopped by {self.name}", f"{self.name}.output")
        return chunk.replace(b"upstream", self.name.encode()) if chunk else chunk

    async def on_complete(self, flow: Flow, error: BaseException | None) -> None:
        self.log.append(f"complete:{self.name}:{type(error).__name__ if error else flow.details}")


class RecorderPlugin:
    def __init__(self) -> None:
        self.log: list[str] = []

    @hookimpl
    def outerloop_register_filters(self, register: Any) -> None:
        def factory(config: RecorderConfig, context: FilterContext) -> Recorder:
            return Recorder(config, self.log)

        for name in ("first", "second", "third"):
            register(name, factory, RecorderConfig)


def _config(base: str, **second: Any) -> dict[str, Any]:
    return proxy_config(base, filters=["first", {"name": "second", "config": second}, "third"])


def test_requests_in_yaml_order_responses_in_reverse(upstream: tuple[Upstream, str]) -> None:
    server, base = upstream
    plugin = RecorderPlugin()
    with run_proxy(_config(base), plugins=(plugin,)) as proxy:
        response = httpx.post(proxy.url + "/v1/chat/completions", json={"messages": MESSAGES})
    assert response.status_code == 200
    assert plugin.log[:3] == ["request:first", "request:second", "request:third"]
    assert plugin.log[3:6] == ["response:third", "response:second", "response:first"]
    # Each filter rewrote what the one after it (in response order) produced: third ran first.
    assert plugin.log[6:9] == ["chunk:third", "chunk:second", "chunk:first"]
    assert response.json()["choices"][0]["message"]["content"] == "Hello from the test third."
    assert plugin.log[-3:] == ["complete:third:None", "complete:second:None", "complete:first:None"]


def test_yaml_decides_order_not_registration(upstream: tuple[Upstream, str]) -> None:
    server, base = upstream
    plugin = RecorderPlugin()
    raw = proxy_config(base, filters=["third", "first"])
    with run_proxy(raw, plugins=(plugin,)) as proxy:
        httpx.post(proxy.url + "/v1/chat/completions", json={"messages": MESSAGES})
    assert plugin.log[:2] == ["request:third", "request:first"]
    assert "request:second" not in plugin.log


def test_local_reply_stops_the_chain_and_skips_upstream(upstream: tuple[Upstream, str]) -> None:
    server, base = upstream
    plugin = RecorderPlugin()
    with run_proxy(_config(base, stop_on="halt"), plugins=(plugin,)) as proxy:
        client = openai.OpenAI(base_url=proxy.url + "/v1", api_key="k", max_retries=0)
        with pytest.raises(openai.RateLimitError) as caught:
            client.chat.completions.create(model="test-model", messages=[{"role": "user", "content": "halt"}])
        client.close()
    assert caught.value.code == "second.stopped"
    assert caught.value.response.headers["retry-after"] == "3"
    assert server.seen == []
    assert "request:third" not in plugin.log
    # on_complete still runs for every filter, with the details code of the local reply.
    assert plugin.log[-3:] == ["complete:third:second.stopped", "complete:second:second.stopped",
                               "complete:first:second.stopped"]


def test_on_complete_runs_on_filter_bug_and_upstream_failure(upstream: tuple[Upstream, str]) -> None:
    server, base = upstream
    plugin = RecorderPlugin()
    with run_proxy(_config(base, fail_on="boom"), plugins=(plugin,)) as proxy:
        bug = httpx.post(proxy.url + "/v1/chat/completions", json={"messages": [{"role": "user", "content": "boom"}]})
        down = httpx.post(proxy.url + "/v1/chat/completions", json={"model": "hang", "messages": MESSAGES})
    assert bug.status_code == 500 and bug.json()["error"]["code"] == "core.internal_error"
    assert "a bug in a filter" not in bug.text and "Traceback" not in bug.text
    assert "complete:first:RuntimeError" in plugin.log
    assert down.status_code == 504
    assert "complete:first:ReadTimeout" in plugin.log


def test_local_reply_mid_stream_ends_with_error_event(upstream: tuple[Upstream, str]) -> None:
    server, base = upstream
    server.chunk_delay = 0.02  # one SSE event per read, so the first ones reach the client first
    plugin = RecorderPlugin()
    with run_proxy(_config(base, stop_on=" the", stop_phase="chunk"), plugins=(plugin,)) as proxy:
        client = openai.OpenAI(base_url=proxy.url + "/v1", api_key="k", max_retries=0)
        stream = client.chat.completions.create(model="test-model", messages=MESSAGES, stream=True)  # type: ignore[arg-type]
        received = []
        with pytest.raises(openai.APIError) as caught:
            for chunk in stream:
                received.append(chunk)
        client.close()
    assert len(received) >= 1  # "Hello" and " from" passed before " the" tripped the filter
    assert "output stopped by second" in str(caught.value)


def test_local_reply_on_first_chunk_is_a_plain_error_response(upstream: tuple[Upstream, str]) -> None:
    server, base = upstream
    plugin = RecorderPlugin()
    with run_proxy(_config(base, stop_on="Hello", stop_phase="chunk"), plugins=(plugin,)) as proxy:
        client = openai.OpenAI(base_url=proxy.url + "/v1", api_key="k", max_retries=0)
        with pytest.raises(openai.BadRequestError) as caught:
            client.chat.completions.create(model="test-model", messages=MESSAGES, stream=True)  # type: ignore[arg-type]
        client.close()
    assert caught.value.code == "second.output"


def test_unknown_listener_port_falls_back_to_first(upstream: tuple[Upstream, str]) -> None:
    server, base = upstream
    plugin = RecorderPlugin()
    raw = proxy_config(base)
    raw["listeners"] = [{"name": "a", "port": 0, "filters": ["first"]},
                        {"name": "b", "port": free_port(), "filters": ["second"]}]
    with run_proxy(raw, plugins=(plugin,)) as proxy:
        httpx.post(f"http://127.0.0.1:{proxy.ports[1]}/v1/chat/completions", json={"messages": MESSAGES})
        assert plugin.log[0] == "request:second"
        httpx.post(f"http://127.0.0.1:{proxy.ports[0]}/v1/chat/completions", json={"messages": MESSAGES})
    assert "request:first" in plugin.log


def test_filter_changing_json_is_reserialised(upstream: tuple[Upstream, str]) -> None:
    server, base = upstream

    class AddTemperature(Filter):
        async def on_request(self, flow: Flow) -> LocalReply | None:
            flow.json["temperature"] = 0.25
            flow.json_changed()
            return None

    class Plugin:
        @hookimpl
        def outerloop_register_filters(self, register: Any) -> None:
            register("add_temperature", lambda config, context: AddTemperature())

    with run_proxy(proxy_config(base, filters=["add_temperature"]), plugins=(Plugin(),)) as proxy:
        httpx.post(proxy.url + "/v1/chat/completions", content=json.dumps({"messages": MESSAGES}))
    assert server.seen[-1].json["temperature"] == 0.25


class WholeBody(Filter):
    """Asks the core to buffer: it must see the whole response at once, and it counts the calls."""

    buffers_response = True

    def __init__(self) -> None:
        self.calls: list[tuple[int, bool]] = []

    async def on_response_chunk(self, flow: Flow, chunk: bytes, end: bool) -> bytes | LocalReply:
        self.calls.append((len(chunk), end))
        return chunk.upper() if chunk else chunk


def test_buffering_only_when_a_filter_asks_and_under_the_cap(upstream: tuple[Upstream, str]) -> None:
    server, base = upstream
    whole = WholeBody()

    class Plugin:
        @hookimpl
        def outerloop_register_filters(self, register: Any) -> None:
            register("whole", lambda config, context: whole)

    server.chunk_delay = 0.01
    raw = proxy_config(base, filters=["whole"], limits={"max_buffered_response_bytes": 4096})
    with run_proxy(raw, plugins=(Plugin(),)) as proxy:
        streamed = httpx.post(proxy.url + "/v1/chat/completions",
                              json={"messages": MESSAGES, "stream": True})
        server.words = ["x" * 100] * 100  # ~10 KB of stream, over the 4 KB cap
        too_big = httpx.post(proxy.url + "/v1/chat/completions", json={"messages": MESSAGES, "stream": True})
    # the whole stream reached the filter as one chunk, then the end-of-stream call
    assert whole.calls[0][1] is False and whole.calls[0][0] > 500 and whole.calls[1] == (0, True)
    # ...and what it returned is what the client got (5 word events, the finish event, [DONE])
    assert streamed.text.count("DATA: ") == 7 and '"HELLO"' in streamed.text
    assert too_big.status_code == 502 and too_big.json()["error"]["code"] == "upstream.response_too_large"


class _Step(Filter):
    def __init__(self, name: str, log: list[str], authenticates: bool = False, stop: bool = False) -> None:
        self.name = name
        self.log = log
        self.authenticates = authenticates
        self.stop = stop

    async def on_request(self, flow: Flow) -> LocalReply | None:
        self.log.append(self.name)
        return LocalReply(401, "no", f"{self.name}.stopped") if self.stop else None


@pytest.mark.parametrize("traced", [False, True])
def test_after_auth_runs_between_the_authenticating_filters_and_the_rest(traced: bool) -> None:
    import asyncio

    from opentelemetry.sdk.trace import TracerProvider

    from core.chain import Chain

    tracer = TracerProvider().get_tracer("test") if traced else None

    def flow() -> Flow:
        return Flow(request_id="r", listener="l", api="openai", method="POST", path="/v1/responses", headers={},
                    body=b"{}", json_body={})

    async def after(f: Flow) -> LocalReply | None:
        log.append("after_auth")
        return LocalReply(404, "gone", "responses.not_found") if stop_after else None

    log: list[str] = []
    stop_after = False
    chain = Chain([_Step("a", log), _Step("auth", log, authenticates=True), _Step("c", log)], tracer)
    assert asyncio.run(chain.on_request(flow(), after)) is None
    assert log == ["a", "auth", "after_auth", "c"]
    log.clear()
    assert asyncio.run(chain.on_request(flow())) is None and log == ["a", "auth", "c"]
    log.clear()
    stop_after = True
    stopped = flow()
    reply = asyncio.run(chain.on_request(stopped, after))
    assert reply is not None and stopped.details == "responses.not_found" and log == ["a", "auth", "after_auth"]
    log.clear()
    denied = flow()
    refusing = Chain([_Step("auth", log, authenticates=True, stop=True), _Step("c", log)], tracer)
    assert asyncio.run(refusing.on_request(denied, after)) is not None
    assert denied.details == "auth.stopped" and log == ["auth"]        # nothing stored is read for a refused caller
    log.clear()
    stop_after = False
    asyncio.run(Chain([_Step("c", log)], tracer).on_request(flow(), after))
    assert log == ["after_auth", "c"]                                   # no authenticating filter: at once
