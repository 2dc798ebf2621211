"""Agent frameworks from PyPI with a real proxy: docs/agents.md's LangGraph and Agents SDK recipes served behind an
agent listener, and pydantic-ai as a client of a model listener; the model is tests/scripted.py."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from opentelemetry.trace import SpanKind
from pydantic import BaseModel

from tests.harness import MemoryTracing, free_port, run_proxy, serve_app
from tests.scripted import ScriptedUpstream, Text, ToolCalls

DOCS = Path(__file__).resolve().parents[2] / "docs" / "agents.md"
#: The model the recipes ask the model listener for.
MODEL = "openai/gpt-4.1-mini"
ASK = [{"role": "user", "content": "Lisbon for three nights"}]


@pytest.fixture()
def scripted() -> Iterator[tuple[ScriptedUpstream, str]]:
    upstream = ScriptedUpstream()
    with serve_app(upstream.app()) as port:
        yield upstream, f"http://127.0.0.1:{port}/v1"


def recipe(heading: str, model_url: str) -> Any:
    """The ``app`` of the docs/agents.md recipe under ``### heading``, run as written, its model listener moved."""
    section = DOCS.read_text().split(f"\n### {heading}\n", 1)[1]
    code = section.split("```python\n", 1)[1].split("\n```", 1)[0]
    namespace: dict[str, Any] = {"__name__": "recipe"}
    exec(compile(code.replace("http://127.0.0.1:12000", model_url), f"docs/agents.md ({heading})", "exec"),
         namespace)
    return namespace["app"]


def _config(base: str, models_port: int, agent: str, agent_url: str) -> dict[str, Any]:
    """An agent listener (first, so ``proxy.url`` is it) over one agent, and the model listener it calls back."""
    return {
        "agents": [{"id": agent, "url": agent_url}],
        "model_providers": [{"model": MODEL, "base_url": base, "default": True}],
        "listeners": [
            {"name": "desk", "type": "agent", "port": 0, "agents": [{"id": agent, "description": "travel"}]},
            {"name": "models", "port": models_port},
        ],
    }


def _ask_plain_and_streamed(proxy_url: str) -> tuple[Any, str]:
    with openai.OpenAI(base_url=proxy_url + "/v1", api_key="k", max_retries=0) as client:
        raw = client.chat.completions.with_raw_response.create(model="auto", messages=ASK)  # type: ignore[arg-type]
        stream = client.chat.completions.create(model="auto", messages=ASK, stream=True)  # type: ignore[arg-type]
        with stream:
            streamed = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    return raw, streamed


def _serve_recipe(scripted: tuple[ScriptedUpstream, str], heading: str, agent: str,
                  calls: int = 4) -> tuple[Any, str]:
    """The recipe behind an agent listener, asked once whole and once streamed, each run ``calls // 2`` model
    calls in the trace of its request."""
    upstream, base = scripted
    models_port = free_port()
    app = recipe(heading, f"http://127.0.0.1:{models_port}")
    tracing = MemoryTracing()
    with serve_app(app) as agent_port, run_proxy(_config(base, models_port, agent, f"http://127.0.0.1:{agent_port}"),
                                                 plugins=(tracing,)) as proxy:
        answers = _ask_plain_and_streamed(proxy.url)
    # the agent passed the trace context on: each run's model calls are in the trace of the client's request
    client_traces = {format(span.context.trace_id, "032x") for span in tracing.exporter.get_finished_spans()
                     if span.kind == SpanKind.SERVER and span.parent is None}
    model_traces = [seen.headers["traceparent"].split("-")[1] for seen in upstream.seen]
    half = calls // 2
    assert len(client_traces) == 2 and set(model_traces) == client_traces
    assert len(set(model_traces[:half])) == 1 and len(set(model_traces[half:])) == 1
    return answers


def _tool_loops(upstream: ScriptedUpstream, tool: str) -> list[list[dict[str, Any]]]:
    """The two model calls of each run, through the model listener: the question with the tool, then its result."""
    assert [seen.path for seen in upstream.seen] == ["/v1/chat/completions"] * 4
    assert all(seen.json["model"] == "gpt-4.1-mini" for seen in upstream.seen)  # the provider's own name
    assert all(tool in [t["function"]["name"] for t in seen.json["tools"]] for seen in upstream.seen)
    return [seen.json["messages"] for seen in upstream.seen]


def test_plain_starlette_recipe_behind_an_agent_listener(scripted: tuple[ScriptedUpstream, str]) -> None:
    upstream, _ = scripted
    upstream.script.extend([Text("easyJet at 07:30."), Text("TAP at 09:10, EUR 214.")])
    raw, streamed = _serve_recipe(scripted, "Plain starlette", "flights", calls=2)
    assert raw.parse().choices[0].message.content == "easyJet at 07:30."
    assert raw.headers["x-outerloop-agent"] == "flights"
    assert streamed == "TAP at 09:10, EUR 214."
    assert [seen.json["messages"] for seen in upstream.seen] == [
        [{"role": "system", "content": "You book flights."}, *ASK]] * 2
    assert [bool(seen.json.get("stream")) for seen in upstream.seen] == [False, True]


def test_langgraph_recipe_behind_an_agent_listener(scripted: tuple[ScriptedUpstream, str]) -> None:
    upstream, _ = scripted
    upstream.script.extend([ToolCalls([("hotel_rooms", '{"city": "Lisbon"}')]), Text("The Old Mill, EUR 89."),
                            ToolCalls([("hotel_rooms", '{"city": "Lisbon"}')]), Text("Hotel Aurora, EUR 146.")])
    raw, streamed = _serve_recipe(scripted, "LangGraph", "hotels")
    assert raw.parse().choices[0].message.content == "The Old Mill, EUR 89."
    assert raw.headers["x-outerloop-agent"] == "hotels"
    assert streamed == "Hotel Aurora, EUR 146."
    first, with_result, _, streamed_result = _tool_loops(upstream, "hotel_rooms")
    assert first == [{"role": "user", "content": "Lisbon for three nights"}]
    for messages in (with_result, streamed_result):
        assert messages[1]["tool_calls"][0]["function"]["name"] == "hotel_rooms"
        assert messages[2]["role"] == "tool"
        assert messages[2]["content"] == ("Hotel Aurora in Lisbon, EUR 146 a night; "
                                          "The Old Mill in Lisbon, EUR 89 a night")
    # the streamed request streamed its model calls too (stream_mode="messages")
    assert [seen.json.get("stream", False) for seen in upstream.seen] == [False, False, True, True]


def test_openai_agents_sdk_recipe_behind_an_agent_listener(scripted: tuple[ScriptedUpstream, str]) -> None:
    upstream, _ = scripted
    upstream.script.extend([ToolCalls([("flight_fares", '{"city": "Lisbon"}')]), Text("easyJet at 07:30."),
                            ToolCalls([("flight_fares", '{"city": "Lisbon"}')]), Text("TAP at 09:10, EUR 214.")])
    raw, streamed = _serve_recipe(scripted, "OpenAI Agents SDK", "flights")
    assert raw.parse().choices[0].message.content == "easyJet at 07:30."
    assert raw.headers["x-outerloop-agent"] == "flights"
    assert streamed == "TAP at 09:10, EUR 214."
    first, with_result, _, streamed_result = _tool_loops(upstream, "flight_fares")
    assert first == [{"role": "system", "content": "You book flights."},
                     {"role": "user", "content": "Lisbon for three nights"}]
    for messages in (with_result, streamed_result):
        assert messages[-1]["role"] == "tool"
        assert messages[-1]["content"] == "easyJet 07:30 to Lisbon, EUR 188; TAP 09:10 to Lisbon, EUR 214"
    assert [bool(seen.json.get("stream")) for seen in upstream.seen] == [False, False, True, True]


class Stay(BaseModel):
    hotel: str
    nights: int


def test_pydantic_ai_runs_a_tool_loop_and_structured_output_through_the_proxy(
        scripted: tuple[ScriptedUpstream, str]) -> None:
    from pydantic_ai import Agent
    from pydantic_ai.models.openai import OpenAIChatModel
    from pydantic_ai.providers.openai import OpenAIProvider

    upstream, base = scripted
    upstream.script.extend([ToolCalls([("hotel_rooms", '{"city": "Porto"}')]), Text("The Old Mill, EUR 89."),
                            ToolCalls([("final_result", '{"hotel": "The Old Mill", "nights": 3}')])])
    asked: list[str] = []

    async def run(url: str) -> tuple[str, Stay]:
        async with openai.AsyncOpenAI(base_url=url + "/v1", api_key="k", max_retries=0) as client:
            model = OpenAIChatModel(MODEL, provider=OpenAIProvider(openai_client=client))
            agent = Agent(model, instructions="You find hotels.")

            @agent.tool_plain
            def hotel_rooms(city: str) -> str:
                """Hotels with rooms free tonight in a city."""
                asked.append(city)
                return f"The Old Mill in {city}, EUR 89 a night"

            text = await agent.run("Porto for three nights")
            stay = await Agent(model, output_type=Stay).run("Book the cheapest, three nights")
            return text.output, stay.output

    with run_proxy({"listeners": [{"name": "models", "port": 0}],
                    "model_providers": [{"model": MODEL, "base_url": base, "default": True}]}) as proxy:
        text, stay = asyncio.run(run(proxy.url))
    assert text == "The Old Mill, EUR 89."
    assert asked == ["Porto"]
    assert stay == Stay(hotel="The Old Mill", nights=3)
    tool_turn = upstream.seen[1].json["messages"]
    assert tool_turn[0] == {"role": "system", "content": "You find hotels."}
    assert tool_turn[-1]["role"] == "tool" and tool_turn[-1]["content"] == "The Old Mill in Porto, EUR 89 a night"
    # the structured output is asked for as a tool the model must call
    assert [t["function"]["name"] for t in upstream.seen[2].json["tools"]] == ["final_result"]
