"""One Responses API request through the proxy: its chat form for the filters, its conversation, its answer.

A Responses request is an "openai" flow: ``flow.json`` is its chat-completions form, so filters, routing, caps
and the chat adapters treat it like any chat request (docs/request-path.md). The client's own body stays here
(``flow.conversation``), for upstreams that speak Responses natively. After the filters, the chat answer is
turned into the Responses API's (``ResponsesEncoder``); a stored response (``store``, default true) is written
before the answer's last event goes out, so ``previous_response_id`` can follow at once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import httpx

from core.errors import RequestError
from core.filter import LocalReply
from core.flow import Flow, encode_json
from core.providers import DROPPED_HEADER, Adapter, note_dropped
from core.providers.anthropic import TranslationError
from core.providers.anthropic_upstream import translated_stream
from core.providers.openai import openai_headers
from core.responses_api.request import ChatForm, chat_to_responses_request, input_items, to_chat
from core.responses_api.response import chat_to_response, failed, response_items, response_to_chat
from core.responses_api.store import ResponseStore, StoredResponse, StoreUnavailable
from core.responses_api.stream import ChatToResponsesStream, ResponsesToChatStream
from core.responses_api.validation import validate_responses
from core.sse import SSEDecoder, encode_event
from core.upstream_errors import invalid_response

if TYPE_CHECKING:
    from core.exchange import Exchange
    from core.target import Target

log = logging.getLogger("outerloop.responses")


class ResponsesCall:
    """A Responses request's state on its flow (``flow.conversation``)."""

    __slots__ = ("request", "form", "store", "previous", "response", "native", "reencoded", "events", "snapshot",
                 "completion")

    def __init__(self, request: dict[str, Any], store: ResponseStore) -> None:
        #: The client's body, validated.
        self.request = request
        #: Its chat-completions form (what ``flow.json`` started as), with what chat cannot express.
        self.form: ChatForm = to_chat(request, [])
        self.store = store
        #: The stored response ``previous_response_id`` names, once read (after auth).
        self.previous: StoredResponse | None = None
        #: The Response object the client got, once complete.
        self.response: dict[str, Any] | None = None
        #: The deployment that answered natively (``_holder``), for a continuation to go back to it.
        self.native: str | None = None
        #: True when a native answer was turned into chat for the filters and encoded again (a new id, which
        #: the upstream does not know).
        self.reencoded = False
        #: Events of a native stream passed on so far: the next one's sequence number.
        self.events = 0
        #: The Response a native stream's lifecycle events last carried, for its ``response.failed``.
        self.snapshot: dict[str, Any] | None = None
        #: A whole chat completion as the core parsed it (``_whole``), when its bytes pass the adapter unchanged:
        #: the encoder then need not parse them again.
        self.completion: dict[str, Any] | None = None

    @property
    def stores(self) -> bool:
        return self.request.get("store") is not False

    async def save(self, flow: Flow) -> None:
        """The complete response and this turn of its conversation, linked to the turns before it, stored for
        ``previous_response_id`` and GET (a store that fails is logged: the client's answer is not lost for it)."""
        response = self.response
        if not self.stores or response is None or not isinstance(response.get("id"), str):
            return
        turn = to_chat({"input": self.request.get("input", "")}, []).body.get("messages", [])
        previous = self.previous
        item = StoredResponse(
            id=response["id"], owner=_owner(flow), response=response, input_items=input_items(self.request),
            messages=[*turn, *response_items(response)], native=None if self.reencoded else self.native,
            created_at=time.time(), previous=previous.id if previous is not None else None,
            chain=[*previous.chain, previous.id] if previous is not None else [])
        try:
            await self.store.put(item)
        except StoreUnavailable as exc:
            log.warning("request %s: response %s not stored: %s (%s)", flow.request_id, item.id, exc, exc.where)


def _owner(flow: Flow) -> str | None:
    return flow.principal.name if flow.principal is not None else None


def begin(flow: Flow, body: Any, store: ResponseStore) -> None:
    """The front door: a Responses body validated, its chat form on the flow (a 400 ``RequestError`` if bad)."""
    call = ResponsesCall(validate_responses(body), store)
    flow.conversation = call
    _set_form(flow, call.form)


def _set_form(flow: Flow, form: ChatForm) -> None:
    body = form.body
    if body.get("stream") is True:
        # The usage of the answer goes into `response.completed`: a chat stream is asked for it.
        body["stream_options"] = {"include_usage": True}
    # Encoded once, so a chat upstream gets these bytes and `flow.body_modified` says whether a filter changed it.
    flow.set_request(encode_json(body), body)


async def continue_conversation(flow: Flow) -> LocalReply | None:
    """After the authenticating filters: the conversation ``previous_response_id`` names, put before this
    request's input, so the filters that follow (guardrails, router, session) see all of it. Another
    principal's response is a 404 like a missing one; so is a conversation one of whose earlier turns is gone
    (deleted, expired, evicted), as at OpenAI."""
    call: ResponsesCall = flow.conversation
    previous_id = call.request.get("previous_response_id")
    if previous_id is None:
        return None
    owner = _owner(flow)
    try:
        found = await call.store.get(previous_id)
        if found is None or found.owner != owner:
            return LocalReply(404, f"previous response {previous_id!r} not found", "responses.not_found")
        # The previous response is read again with its ancestors so that its TTL is renewed with theirs.
        turns = await call.store.get_many([*found.chain, found.id])
    except StoreUnavailable as exc:
        log.warning("request %s: the response store failed: %s (%s)", flow.request_id, exc, exc.where)
        return LocalReply(503, f"stored responses cannot be read now (request {flow.request_id})",
                          "responses.store_unavailable")
    history: list[dict[str, Any]] = []
    for turn in turns:
        if turn is None or turn.owner != owner:
            return LocalReply(404, f"previous response {previous_id!r} not found: its conversation is no longer "
                                   "complete (an earlier response was deleted or expired)", "responses.not_found")
        history += turn.messages
    call.previous = found
    call.form = to_chat(call.request, history)
    _set_form(flow, call.form)
    return None


def _merged_dropped(flow: Flow, own: list[str]) -> None:
    """The fields the Responses-to-chat step dropped, named with those the upstream's adapter dropped."""
    theirs = [name for name in flow.extra_headers.get(DROPPED_HEADER, "").split(", ") if name]
    note_dropped(flow, [*own, *(name for name in theirs if name not in own)])


class ResponsesOverChat:
    """A Responses client on a chat-completions or Messages upstream: the chat form goes out through the
    chat endpoint's adapter (``inner``); ``ResponsesEncoder`` turns the answer back after the filters."""

    rewrites_body = True
    requests_stream_usage = False

    def __init__(self, inner: Adapter) -> None:
        self.inner = inner

    def request(self, flow: Flow, target: Target) -> httpx.Request:
        call: ResponsesCall = flow.conversation
        if call.form.unsupported:
            param, reason = call.form.unsupported[0]
            raise RequestError(400, f"'{param}': {reason}; the model {target.model} does not serve the "
                                    "Responses API natively", "request.unsupported_for_model", param)
        request = self.inner.request(flow, target)
        _merged_dropped(flow, call.form.dropped)
        # A native model tried before this one (and failed) does not hold the response this answer becomes.
        call.native = None
        return request

    def body(self, flow: Flow, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        return self.inner.body(flow, chunks)

    def whole(self, flow: Flow, body: dict[str, Any], raw: bytes) -> bytes:
        out = self.inner.whole(flow, body, raw)
        if out is raw:
            flow.conversation.completion = body
        return out


class NativeResponses:
    """A Responses client on an upstream that speaks Responses (``interface: responses``): the client's body
    passes (the model id substituted), the answer's bytes pass, its final Response is kept for the store.

    A filter that changed the chat form (guardrails redacting input) has its input and instructions sent;
    a continuation of a response another upstream served sends the whole conversation instead of the id.
    """

    rewrites_body = False
    requests_stream_usage = False

    def request(self, flow: Flow, target: Target) -> httpx.Request:
        call: ResponsesCall = flow.conversation
        body = dict(call.request)
        body["model"] = target.model_id
        foreign = call.previous is not None and call.previous.native != holder_of(target)
        if flow.body_modified or foreign:
            try:
                translated = chat_to_responses_request(flow.json, target.model_id)
            except TranslationError as exc:
                raise RequestError(400, str(exc), exc.code, exc.field) from None
            body.pop("previous_response_id", None)
            body.pop("instructions", None)
            body["input"] = translated.get("input", [])
            if "instructions" in translated:
                body["instructions"] = translated["instructions"]
        call.native = holder_of(target)
        if DROPPED_HEADER in flow.extra_headers:
            note_dropped(flow, [])
        headers = openai_headers(flow, target)
        return httpx.Request("POST", target.upstream.url("/responses"), headers=headers, content=encode_json(body))

    def body(self, flow: Flow, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        return _tapped(flow, chunks)

    def whole(self, flow: Flow, body: dict[str, Any], raw: bytes) -> bytes:
        call: ResponsesCall = flow.conversation
        call.response = body
        _finish_reason(flow, body)
        return raw


def holder_of(target: Target) -> str:
    """Where a native answer is kept upstream: responses are stored per account, so another deployment of the
    model (another base URL, another key) does not know their ids. Stable across replicas (a shared store)."""
    secret = target.provider.access_key.get_secret_value() if target.provider.access_key is not None else ""
    account = hashlib.sha256(secret.encode()).hexdigest()[:16] if secret else ""
    return f"{target.entry} {target.upstream.base_url} {account}"


_FINAL_EVENTS = frozenset({"response.completed", "response.incomplete", "response.failed"})
_LIFECYCLE_EVENTS = frozenset({"response.created", "response.queued", "response.in_progress"})


async def _tapped(flow: Flow, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """A native stream as it is, its final Response kept and stored before the event carrying it goes on."""
    call: ResponsesCall = flow.conversation
    events = SSEDecoder()
    async for chunk in chunks:
        for _, data in events.feed(chunk):
            if '"response.' not in data:
                call.events += 1
                continue
            try:
                obj = json.loads(data)
            except ValueError:
                continue
            call.events += 1
            if isinstance(obj, dict) and obj.get("type") in _LIFECYCLE_EVENTS and isinstance(obj.get("response"), dict):
                call.snapshot = obj["response"]
            if isinstance(obj, dict) and obj.get("type") in _FINAL_EVENTS and isinstance(obj.get("response"), dict):
                call.response = obj["response"]
                call.snapshot = None  # it ended: a later failure is no response.failed of it
                _finish_reason(flow, obj["response"])
                if not call.reencoded:
                    await call.save(flow)
        yield chunk


def native_error_event(call: ResponsesCall, status: int, message: str, details: str) -> bytes:
    """The Responses API's error event ending a native stream that broke (numbered after those passed on), then
    ``response.failed`` for the response the stream began."""
    event = {"type": "error", "code": details, "message": message, "param": None, "sequence_number": call.events}
    out = encode_event(event, "error")
    if call.snapshot is not None:
        response = failed(dict(call.snapshot), status, message)
        out += encode_event({"type": "response.failed", "response": response, "sequence_number": call.events + 1},
                            "response.failed")
    return out


def _finish_reason(flow: Flow, response: dict[str, Any]) -> None:
    output = response.get("output")
    calls = isinstance(output, list) and any(isinstance(i, dict) and i.get("type") == "function_call" for i in output)
    status = response.get("status")
    flow.finish_reason = "tool_calls" if calls else "length" if status == "incomplete" else "stop"


class ResponsesEncoder:
    """After the filters: the chat answer (a stream's chunks, or one whole body) in the Responses API's shape.

    ``feed`` takes what the filters let through; ``finish`` ends it, storing the response first. ``step`` does
    both: the response is stored before the bytes carrying its final event are returned.
    """

    __slots__ = ("flow", "call", "_stream", "_whole", "_finished", "_parsed")

    def __init__(self, flow: Flow, unchanged: bool = False) -> None:
        """``unchanged``: no filter can have changed the bytes since the core parsed them (``completion``)."""
        self.flow = flow
        self.call: ResponsesCall = flow.conversation
        request = self.call.request
        response_id = "resp_" + uuid.uuid4().hex
        self._stream = ChatToResponsesStream(request, response_id, int(time.time())) if flow.stream else None
        self._whole = bytearray()
        self._finished = False
        self._parsed = self.call.completion if unchanged else None

    def feed(self, chunk: bytes) -> bytes:
        if self._stream is not None:
            try:
                return self._stream.feed(chunk)
            except TranslationError as exc:
                raise invalid_response(self.flow, f"the stream cannot be translated: {exc}") from None
        self._whole += chunk
        return b""

    async def step(self, chunk: bytes, end: bool) -> bytes:
        """``chunk`` encoded; once the final event is among it (or at ``end``), the response stored first, so a
        client acting on ``response.completed`` can continue it at once."""
        out = self.feed(chunk)
        if not self._finished and (end or (self._stream is not None and self._stream.response is not None)):
            out += await self.finish()
        return out

    async def finish(self) -> bytes:
        self._finished = True
        call = self.call
        if self._stream is not None:
            try:
                out = self._stream.close()
            except TranslationError as exc:
                raise invalid_response(self.flow, f"the stream cannot be translated: {exc}") from None
            call.response = self._stream.response
        else:
            completion = self._parsed if self._parsed is not None else self._completion()
            call.response = chat_to_response(completion, call.request, "resp_" + uuid.uuid4().hex, int(time.time()))
            out = encode_json(call.response)
        await call.save(self.flow)
        return out

    def _completion(self) -> dict[str, Any]:
        try:
            completion = json.loads(self._whole)
        except ValueError:
            raise invalid_response(self.flow, "the answer is not JSON") from None
        if not isinstance(completion, dict):
            raise invalid_response(self.flow, "the answer is not a JSON object")
        return completion

    def error_event(self, status: int, message: str, details: str) -> bytes:
        assert self._stream is not None
        return self._stream.error_event(status, message, details)

    async def wrap(self, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """The whole body of chunks in and out, for the path with no filter looking at bodies."""
        async for chunk in chunks:
            out = await self.step(chunk, False)
            if out:
                yield out
        out = await self.step(b"", True)
        if out:
            yield out


async def client_stage(flow: Flow, exchange: Exchange, adapter: Adapter, inspects: bool,
                       body: AsyncIterator[bytes]) -> tuple[AsyncIterator[bytes], ResponsesEncoder | None]:
    """What stands between an upstream's answer and a Responses client: the body the filters get and the
    encoder after them (None where a native answer passes as it is)."""
    call: ResponsesCall = flow.conversation
    if isinstance(adapter, NativeResponses):
        if not inspects:
            if flow.stream:
                exchange.error_event = lambda status, message, details: native_error_event(call, status, message,
                                                                                           details)
            else:
                await call.save(flow)
            return body, None
        # Filters that look at bodies see chat, as on every other upstream; the answer is encoded again.
        call.reencoded = True
        body = as_chat(flow, body)
    encoder = ResponsesEncoder(flow, unchanged=not inspects)
    if flow.stream:
        exchange.error_event = encoder.error_event
    return body, encoder


async def as_chat(flow: Flow, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """A native Responses answer in chat form, for filters that look at bodies (they see one shape)."""
    if flow.stream:
        translator = ResponsesToChatStream(flow.served_by.model if flow.served_by else flow.model or "")
        async for out in translated_stream(flow, translator, chunks):
            yield out
        return
    data = b"".join([chunk async for chunk in chunks])
    try:
        response = json.loads(data)
    except ValueError:
        raise invalid_response(flow, "the answer is not JSON") from None
    if not isinstance(response, dict):
        raise invalid_response(flow, "the answer is not a JSON object")
    try:
        chat = response_to_chat(response, flow.served_by.model if flow.served_by else "")
    except TranslationError as exc:
        raise invalid_response(flow, f"the body cannot be translated: {exc}") from None
    yield encode_json(chat)
