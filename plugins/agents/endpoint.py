"""An agent listener's endpoint: the listener's filters, the selection, then each agent in turn through the core.

Each agent call is a pass through ``ProxyEndpoint._serve`` with ``flow.targets`` set to the agent (its
``agent/<id>`` entry, core.upstream) and the agent's own chain, so dispatch gives it timeouts, retries,
balancing, attempt spans and ``traceparent``. An intermediate agent answers whole, into a buffer; its text
joins the conversation as an assistant message naming it. The last agent serves the client's own flow and
exchange: its stream reaches the client as it arrives, and the listener's filters see its response (the
session filter pins the conversation to it there, before the client's last byte).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from opentelemetry.trace import SpanKind, Status, StatusCode

from core.asgi import Message, Receive, Scope, Send
from core.chain import AfterAuth, Chain
from core.config import Listener
from core.exchange import Exchange
from core.filter import LocalReply
from core.flow import Flow, content_text
from core.proxy import ProxyEndpoint
from core.responses import raw_headers
from core.responses_api import call as responses
from plugins.agents.selection import Selector

if TYPE_CHECKING:
    from core.runtime import Runtime
    from core.target import Target

log = logging.getLogger("outerloop.agents")

#: ``flow.state`` key marking an intermediate agent's call: part of its client request, not a request itself.
_INTERMEDIATE = "agents.intermediate"


class LastAgentChain(Chain):
    """The listener's filters around the last agent's: its request phase is the agent's alone (the listener's
    ran before the selection); every later phase runs both, the listener's outermost."""

    def __init__(self, listener: Chain, agent: Chain) -> None:
        super().__init__([*listener.filters, *agent.filters], agent.tracer)
        self.agent = agent

    async def on_request(self, flow: Flow, after_auth: AfterAuth | None = None) -> LocalReply | None:
        # `after_auth` ran with the listener's request phase; run again, it would rebuild the conversation
        # from the stored one and drop the earlier agents' answers.
        return await self.agent.on_request(flow)


class AgentListener:
    """The :class:`core.hookspecs.ListenerEndpoint` of one ``type: agent`` listener."""

    def __init__(self, runtime: Runtime, listener: Listener) -> None:
        self.selector = Selector(listener)
        outer = next(item.chain for item in runtime.chains if item.listener == listener.name)
        #: Each agent's own chain (intermediate calls), and the listener's around it (the last call).
        self.chains = {agent.id: runtime.build_chain(listener, agent.filters) for agent in listener.agents}
        self.last_chains = {id_: LastAgentChain(outer, chain) for id_, chain in self.chains.items()}
        self.targets: dict[str, Target] = {agent.id: runtime.upstreams.agents[agent.id] for agent in listener.agents}
        self.openai = AgentEndpoint(runtime, "openai", self)
        self.anthropic = AgentEndpoint(runtime, "anthropic", self)
        self.responses = AgentEndpoint(runtime, "openai", self, "responses")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope["path"]
        endpoint = (self.anthropic if path == "/v1/messages" else self.responses if path.endswith("/responses")
                    else self.openai)
        await endpoint(scope, receive, send)

    async def start(self) -> None:
        for chain in self.chains.values():
            await chain.start()
        await self.selector.start()

    async def close(self) -> None:
        await self.selector.close()
        for chain in self.chains.values():
            await chain.close()


class AgentEndpoint(ProxyEndpoint):
    """One client API (OpenAI chat completions or Anthropic messages) of an agent listener. The body is read and
    validated as on a model listener (``ProxyEndpoint.__call__``); serving it is the agents' sequence."""

    def __init__(self, runtime: Runtime, api: str, agents: AgentListener, endpoint: str | None = None) -> None:
        super().__init__(runtime, api, endpoint)
        self.agents = agents

    async def _serve(self, exchange: Exchange, chain: Chain) -> None:
        flow = exchange.flow
        agents = self.agents
        error: BaseException | None = None
        handed = False  # the last agent's call owns on_complete and the observers from there on
        try:
            # A Responses request continuing a stored one reads it once its caller is known, as on model listeners.
            after_auth = responses.continue_conversation if flow.conversation is not None else None
            reply = await chain.on_request(flow, after_auth)
            if reply is not None:
                await exchange.local_reply(reply)
                return
            sequence = await agents.selector.select(flow)
            for position, agent in enumerate(sequence[:-1]):
                if not await self._intermediate(exchange, agent, position):
                    return
            last = sequence[-1]
            flow.targets = [agents.targets[last]]
            flow.agent = last
            handed = True
            with self._span(flow, last, len(sequence) - 1, True):
                await super()._serve(exchange, agents.last_chains[last])
        except asyncio.CancelledError as exc:
            if not handed:
                error = exc
                flow.details = flow.details or "client.disconnected"
            raise
        except Exception as exc:
            if handed:
                raise
            error = exc
            log.exception("request %s failed", flow.request_id)
            await exchange.reply(500, f"internal error in the proxy (request {flow.request_id})",
                                 "core.internal_error")
        finally:
            if not handed:
                await chain.on_complete(flow, error)
                self._observe(flow, error)

    def _observe(self, flow: Flow, error: BaseException | None) -> None:
        # An intermediate call is part of its client's request, which is logged and counted once.
        if _INTERMEDIATE not in flow.state:
            super()._observe(flow, error)

    async def _intermediate(self, exchange: Exchange, agent: str, position: int) -> bool:
        """One agent before the last: its whole answer joins the conversation. False when it failed: its error,
        naming it, is then the client's answer."""
        flow = exchange.flow
        cap = self.runtime.config.limits.max_buffered_response_bytes
        sub = _intermediate_flow(flow, agent, self.agents.targets[agent])
        answer = _Collected(cap)
        with self._span(flow, agent, position, False):
            await super()._serve(Exchange(sub, answer), self.agents.chains[agent])
        flow.annotations[f"agents.{agent}.status"] = answer.status
        text = _answer_text(flow.api, answer) if answer.status < 400 else None
        if text is not None:
            _append(flow, agent, text)
            return True
        headers = [*raw_headers({"x-request-id": flow.request_id, **flow.extra_headers}),
                   *((k, v) for k, v in answer.headers if k in (b"retry-after", b"x-outerloop-attempts"))]
        if answer.status >= 400 and not answer.truncated:
            flow.details = sub.details or f"upstream.http_{answer.status}"
            await exchange.whole(answer.status, bytes(answer.body), headers)
        else:
            log.warning("request %s: agent %s: its answer could not be read (%s)", flow.request_id, agent,
                        "larger than the buffer cap" if answer.truncated else "no JSON answer with text")
            flow.agent = agent
            await exchange.reply(502, f"the agent's answer could not be read (request {flow.request_id})",
                                 "agent.invalid_response")
        return False

    @contextlib.contextmanager
    def _span(self, flow: Flow, agent: str, position: int, last: bool) -> Iterator[None]:
        """One span per agent call (the upstream call's and its attempts' spans nest in it)."""
        tracer = self.runtime.tracer
        if tracer is None:
            yield
            return
        with tracer.start_as_current_span(f"agent {agent}", kind=SpanKind.INTERNAL) as span:
            span.set_attribute("outerloop.agent", agent)
            span.set_attribute("outerloop.agent.position", position)
            span.set_attribute("outerloop.agent.last", last)
            span.set_attribute("outerloop.listener", flow.listener)
            yield
            if "router.fallback" in flow.annotations:
                span.set_attribute("outerloop.router.fallback", str(flow.annotations["router.fallback"]))
            status = flow.response_status if last else flow.annotations.get(f"agents.{agent}.status")
            if isinstance(status, int):
                span.set_attribute("http.response.status_code", status)
                if status >= 400:
                    span.set_status(Status(StatusCode.ERROR, f"http_{status}"))


class _Collected:
    """An intermediate agent's answer as ASGI messages, kept instead of sent: status, headers, body (capped)."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.body = bytearray()
        self.truncated = False

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            self.headers = list(message.get("headers", []))
        elif message["type"] == "http.response.body":
            chunk = message.get("body", b"")
            if len(self.body) + len(chunk) > self.cap:
                self.truncated = True
            else:
                self.body += chunk


def _intermediate_flow(flow: Flow, agent: str, target: Target) -> Flow:
    """The flow of an intermediate agent's call: the client's request and caller, the conversation so far, whole."""
    body = {key: value for key, value in flow.json.items() if key != "stream_options"}
    body["stream"] = False
    # A Responses request's `json` is its chat form: an intermediate agent answers it as a chat completion.
    sub = Flow(request_id=flow.request_id, listener=flow.listener, api=flow.api, method=flow.method,
               path=flow.path, headers=dict(flow.headers), body=b"", json_body={}, client=flow.client,
               started=time.perf_counter(), endpoint="chat" if flow.endpoint == "responses" else flow.endpoint)
    sub.json = body
    sub.principal = flow.principal
    sub.session_id = flow.session_id
    sub.agent = agent
    sub.targets = [target]
    sub.state[_INTERMEDIATE] = True
    return sub


def _answer_text(api: str, answer: _Collected) -> str | None:
    """The text of a whole chat completion (or Anthropic message); None when the answer is not one, or has no
    text (a tool call alone: the next agent cannot run the tool, and would get an empty message)."""
    if answer.truncated:
        return None
    try:
        body: Any = json.loads(answer.body)
    except (ValueError, RecursionError):
        return None
    if not isinstance(body, dict):
        return None
    if api == "anthropic":
        return (content_text(body.get("content")) or None) if isinstance(body.get("content"), list) else None
    choices = body.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return None
    message = choices[0].get("message")
    if not isinstance(message, dict):
        return None
    return content_text(message.get("content")) or None


def _append(flow: Flow, agent: str, text: str) -> None:
    """An intermediate answer joins the conversation for the next agent: an assistant message naming its agent
    (Anthropic messages have no `name`: there the message is the text alone)."""
    message: dict[str, Any] = {"role": "assistant", "content": text}
    if flow.api == "openai":
        message["name"] = agent
    flow.json = {**flow.json, "messages": [*(flow.json.get("messages") or []), message]}
