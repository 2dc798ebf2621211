"""A scripted local upstream for integration tests: OpenAI chat, Anthropic messages, OpenAI Responses, embeddings.

Each chat, messages or responses request takes the next turn of ``script`` (``Text("ok")`` once it is empty)
and answers it in that API's real wire shape, streamed the way the real APIs stream (text in several deltas,
tool-call arguments in several pieces, usage at the end) or as one JSON object. Embeddings and token counts
take no turn. Every request is recorded. Unlike tests/upstream.py, a test says what the model answers.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import re
import struct
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Any, Union

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route


@dataclass(frozen=True)
class Text:
    text: str


@dataclass(frozen=True)
class ToolCalls:
    """Calls to the client's tools, each (name, arguments as a JSON object text), after an optional text."""

    calls: list[tuple[str, str]]
    text: str = ""


@dataclass(frozen=True)
class Json:
    """Text that is the JSON of ``obj`` (structured output)."""

    obj: Any


@dataclass(frozen=True)
class Error:
    status: int
    message: str


Turn = Union[Text, ToolCalls, Json, Error]


@dataclass
class Seen:
    path: str
    headers: dict[str, str]
    json: Any


@dataclass(frozen=True)
class _Call:
    id: str
    name: str
    arguments: str


@dataclass(frozen=True)
class _Answer:
    """A turn as every API answers it: text, then tool calls."""

    text: str
    calls: list[_Call]

    @property
    def tokens(self) -> int:
        """What the answer costs: its text and every call's arguments."""
        return tokens(self.text) + sum(tokens(call.arguments) for call in self.calls)


def _id(prefix: str) -> str:
    return prefix + uuid.uuid4().hex[:24]


def tokens(value: Any) -> int:
    """A deterministic stand-in for a tokenizer: about four characters a token."""
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, sort_keys=True)
    return max(1, (len(text) + 3) // 4)


def pieces(text: str, size: int = 0) -> list[str]:
    """How a stream splits ``text``: words with their leading space, or ``size`` characters at a time."""
    if size:
        return [text[i:i + size] for i in range(0, len(text), size)]
    return re.findall(r"\s*\S+\s*$|\s*\S+", text) or ([text] if text else [])


_OPENAI_TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 403: "invalid_request_error",
                 404: "invalid_request_error", 429: "rate_limit_error"}
_ANTHROPIC_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                    404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error",
                    529: "overloaded_error"}


def _openai_error(status: int, message: str, param: str | None = None, code: str | None = None) -> Response:
    kind = _OPENAI_TYPES.get(status, "server_error")
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": code}},
                        status_code=status)


def _anthropic_error(status: int, message: str) -> Response:
    kind = _ANTHROPIC_TYPES.get(status, "api_error")
    return JSONResponse({"type": "error", "error": {"type": kind, "message": message},
                         "request_id": _id("req_")}, status_code=status)


def _data(obj: Any) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


def _event(name: str, obj: Any) -> bytes:
    return f"event: {name}\n".encode() + _data(obj)


class ScriptedUpstream:
    """The upstream; serve ``app()`` with tests/harness.py ``serve_app``."""

    def __init__(self, *turns: Turn, chunk_delay: float = 0.0, dimensions: int = 8) -> None:
        self.script: deque[Turn] = deque(turns)
        self.seen: list[Seen] = []
        #: Responses kept by the Responses endpoint (``store`` not false), by id: the Response object, its
        #: input items and the whole conversation as Responses input items, for ``previous_response_id``.
        self.responses: dict[str, dict[str, Any]] = {}
        self.chunk_delay = chunk_delay
        self.dimensions = dimensions
        #: Answer DELETE /v1/responses/{id} with a 500 (an upstream that fails to delete).
        self.fail_deletes = False

    def app(self) -> Starlette:
        return Starlette(routes=[
            Route("/v1/chat/completions", self.chat, methods=["POST"]),
            Route("/v1/messages", self.messages, methods=["POST"]),
            Route("/v1/messages/count_tokens", self.count_tokens, methods=["POST"]),
            Route("/v1/responses", self.create_response, methods=["POST"]),
            Route("/v1/responses/{id}", self.get_response, methods=["GET"]),
            Route("/v1/responses/{id}", self.delete_response, methods=["DELETE"]),
            Route("/v1/responses/{id}/input_items", self.input_items, methods=["GET"]),
            Route("/v1/embeddings", self.embeddings, methods=["POST"]),
        ])

    def paths(self) -> list[str]:
        return [seen.path for seen in self.seen]

    async def _record(self, request: Request) -> Any:
        body = await request.body()
        parsed = json.loads(body) if body else None
        self.seen.append(Seen(request.url.path, dict(request.headers), parsed))
        return parsed

    def _turn(self, call_prefix: str) -> _Answer | Error:
        turn = self.script.popleft() if self.script else Text("ok")
        if isinstance(turn, Error):
            return turn
        if isinstance(turn, Text):
            return _Answer(turn.text, [])
        if isinstance(turn, Json):
            return _Answer(json.dumps(turn.obj), [])
        return _Answer(turn.text, [_Call(_id(call_prefix), name, arguments) for name, arguments in turn.calls])

    async def _paced(self, chunks: Iterable[bytes]) -> AsyncIterator[bytes]:
        for chunk in chunks:
            if self.chunk_delay:
                await asyncio.sleep(self.chunk_delay)
            yield chunk

    def _stream(self, chunks: Iterable[bytes]) -> Response:
        return StreamingResponse(self._paced(chunks), media_type="text/event-stream",
                                 headers={"cache-control": "no-cache"})

    # --- OpenAI chat completions ----------------------------------------------------------------------------

    async def chat(self, request: Request) -> Response:
        body = await self._record(request)
        answer = self._turn("call_")
        if isinstance(answer, Error):
            return _openai_error(answer.status, answer.message)
        model = body.get("model", "")
        prompt = tokens([body.get("messages"), body.get("tools")])
        completion = answer.tokens
        usage = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
                 "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
                 "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                               "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}}
        finish = "tool_calls" if answer.calls else "stop"
        base = {"id": _id("chatcmpl-"), "created": int(time.time()), "model": model, "service_tier": "default",
                "system_fingerprint": "fp_scripted"}
        if not body.get("stream"):
            message: dict[str, Any] = {"role": "assistant", "content": answer.text or None, "refusal": None,
                                       "annotations": []}
            if answer.calls:
                message["tool_calls"] = [{"id": call.id, "type": "function",
                                          "function": {"name": call.name, "arguments": call.arguments}}
                                         for call in answer.calls]
            return JSONResponse({**base, "object": "chat.completion", "choices": [
                {"index": 0, "message": message, "logprobs": None, "finish_reason": finish}], "usage": usage})
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        return self._stream(_chat_chunks(base, answer, finish, usage if include_usage else None))

    # --- Anthropic messages ---------------------------------------------------------------------------------

    async def messages(self, request: Request) -> Response:
        body = await self._record(request)
        answer = self._turn("toolu_")
        if isinstance(answer, Error):
            return _anthropic_error(answer.status, answer.message)
        model = body.get("model", "")
        input_tokens = _anthropic_input_tokens(body)
        output_tokens = answer.tokens
        stop = "tool_use" if answer.calls else "end_turn"
        blocks: list[dict[str, Any]] = []
        if answer.text or not answer.calls:
            blocks.append({"type": "text", "text": answer.text})
        blocks += [{"type": "tool_use", "id": call.id, "name": call.name, "input": json.loads(call.arguments)}
                   for call in answer.calls]
        message = {"id": _id("msg_"), "type": "message", "role": "assistant", "model": model, "content": blocks,
                   "stop_reason": stop, "stop_sequence": None,
                   "usage": {"input_tokens": input_tokens, "cache_creation_input_tokens": 0,
                             "cache_read_input_tokens": 0, "output_tokens": output_tokens,
                             "service_tier": "standard"}}
        if not body.get("stream"):
            return JSONResponse(message)
        return self._stream(_anthropic_events(message, answer))

    async def count_tokens(self, request: Request) -> Response:
        body = await self._record(request)
        return JSONResponse({"input_tokens": _anthropic_input_tokens(body)})

    # --- OpenAI Responses -----------------------------------------------------------------------------------

    async def create_response(self, request: Request) -> Response:
        body = await self._record(request)
        previous_id = body.get("previous_response_id")
        history: list[dict[str, Any]] = []
        if previous_id is not None:
            previous = self.responses.get(previous_id)
            if previous is None:
                return _openai_error(400, f"Previous response with id '{previous_id}' not found.",
                                     "previous_response_id", "previous_response_not_found")
            history = previous["conversation"]
        answer = self._turn("call_")
        if isinstance(answer, Error):
            return _openai_error(answer.status, answer.message)
        input_items = _input_items(body.get("input"))
        output = _response_output(answer)
        input_tokens = tokens([body.get("instructions"), history, input_items, body.get("tools")])
        output_tokens = answer.tokens
        usage = {"input_tokens": input_tokens,
                 "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
                 "output_tokens": output_tokens, "output_tokens_details": {"reasoning_tokens": 0},
                 "total_tokens": input_tokens + output_tokens}
        response = _response_object(body, _id("resp_"), output, usage)
        if body.get("store", True):
            self.responses[response["id"]] = {"response": response, "input_items": input_items,
                                              "conversation": history + input_items + output}
        if not body.get("stream"):
            return JSONResponse(response)
        return self._stream(_response_events(response))

    async def get_response(self, request: Request) -> Response:
        await self._record(request)
        stored = self.responses.get(request.path_params["id"])
        if stored is None:
            return _openai_error(404, f"Response with id '{request.path_params['id']}' not found.")
        return JSONResponse(stored["response"])

    async def delete_response(self, request: Request) -> Response:
        await self._record(request)
        response_id = request.path_params["id"]
        if self.fail_deletes:
            return _openai_error(500, "The server had an error while processing your request.")
        if self.responses.pop(response_id, None) is None:
            return _openai_error(404, f"Response with id '{response_id}' not found.")
        return JSONResponse({"id": response_id, "object": "response.deleted", "deleted": True})

    async def input_items(self, request: Request) -> Response:
        await self._record(request)
        stored = self.responses.get(request.path_params["id"])
        if stored is None:
            return _openai_error(404, f"Response with id '{request.path_params['id']}' not found.")
        items = stored["input_items"]
        data = items if request.query_params.get("order") == "asc" else items[::-1]
        return JSONResponse({"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
                             "last_id": data[-1]["id"] if data else None, "has_more": False})

    # --- OpenAI embeddings ----------------------------------------------------------------------------------

    async def embeddings(self, request: Request) -> Response:
        body = await self._record(request)
        inputs = body.get("input")
        if isinstance(inputs, str) or (isinstance(inputs, list) and inputs and isinstance(inputs[0], int)):
            inputs = [inputs]
        if not isinstance(inputs, list) or not inputs:
            return _openai_error(400, "'input' must be a non-empty string or array", "input")
        dimensions = int(body.get("dimensions") or self.dimensions)
        data = []
        for index, item in enumerate(inputs):
            vector = embedding(item, dimensions)
            encoded: Any = vector
            if body.get("encoding_format") == "base64":
                encoded = base64.b64encode(struct.pack(f"<{dimensions}f", *vector)).decode()
            data.append({"object": "embedding", "index": index, "embedding": encoded})
        used = sum(len(item) if isinstance(item, list) else tokens(item) for item in inputs)
        return JSONResponse({"object": "list", "data": data, "model": body.get("model", ""),
                             "usage": {"prompt_tokens": used, "total_tokens": used}})


def embedding(item: Any, dimensions: int) -> list[float]:
    """The unit vector an input always gets (float32-exact, so base64 and float answers agree)."""
    seed = json.dumps(item).encode()
    raw: list[float] = []
    block = 0
    while len(raw) < dimensions:
        digest = hashlib.sha256(seed + block.to_bytes(4, "big")).digest()
        raw += [value / 2**31 - 1.0 for value in struct.unpack(">8I", digest)]
        block += 1
    raw = raw[:dimensions]
    norm = sum(value * value for value in raw) ** 0.5 or 1.0
    return list(struct.unpack(f"<{dimensions}f", struct.pack(f"<{dimensions}f", *(v / norm for v in raw))))


def _chat_chunks(base: dict[str, Any], answer: _Answer, finish: str,
                 usage: dict[str, Any] | None) -> Iterable[bytes]:
    base = {**base, "object": "chat.completion.chunk"}
    if usage is not None:
        base["usage"] = None

    def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
        return _data({**base, "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                           "finish_reason": finish_reason}]})

    first: dict[str, Any] = {"role": "assistant", "content": "", "refusal": None}
    if answer.calls and not answer.text:
        first["content"] = None
    else:
        yield chunk(first)
        first = {}
        for piece in pieces(answer.text):
            yield chunk({"content": piece})
    for index, call in enumerate(answer.calls):
        yield chunk({**first, "tool_calls": [{"index": index, "id": call.id, "type": "function",
                                              "function": {"name": call.name, "arguments": ""}}]})
        first = {}
        for piece in pieces(call.arguments, 7):
            yield chunk({"tool_calls": [{"index": index, "function": {"arguments": piece}}]})
    yield chunk({}, finish)
    if usage is not None:
        yield _data({**base, "choices": [], "usage": usage})
    yield b"data: [DONE]\n\n"


def _anthropic_input_tokens(body: dict[str, Any]) -> int:
    return tokens([body.get("system"), body.get("messages"), body.get("tools")])


def _anthropic_events(message: dict[str, Any], answer: _Answer) -> Iterable[bytes]:
    usage = message["usage"]
    start = {**message, "content": [], "stop_reason": None, "stop_sequence": None,
             "usage": {**usage, "output_tokens": 1}}
    yield _event("message_start", {"type": "message_start", "message": start})
    yield _event("ping", {"type": "ping"})
    for index, block in enumerate(message["content"]):
        if block["type"] == "text":
            yield _event("content_block_start", {"type": "content_block_start", "index": index,
                                                 "content_block": {"type": "text", "text": ""}})
            for piece in pieces(block["text"]):
                yield _event("content_block_delta", {"type": "content_block_delta", "index": index,
                                                     "delta": {"type": "text_delta", "text": piece}})
        else:
            call = next(call for call in answer.calls if call.id == block["id"])
            yield _event("content_block_start", {"type": "content_block_start", "index": index,
                                                 "content_block": {**block, "input": {}}})
            for piece in ["", *pieces(call.arguments, 7)]:
                yield _event("content_block_delta", {"type": "content_block_delta", "index": index,
                                                     "delta": {"type": "input_json_delta", "partial_json": piece}})
        yield _event("content_block_stop", {"type": "content_block_stop", "index": index})
    yield _event("message_delta", {"type": "message_delta",
                                   "delta": {"stop_reason": message["stop_reason"], "stop_sequence": None},
                                   "usage": {"output_tokens": usage["output_tokens"]}})
    yield _event("message_stop", {"type": "message_stop"})


def _input_items(value: Any) -> list[dict[str, Any]]:
    """Request input as the stored input items: a string is one user message; every item gets an id."""
    if isinstance(value, str):
        value = [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": value}]}]
    items = []
    for item in value or []:
        item = {"type": "message", **item}
        if item["type"] == "message" and isinstance(item.get("content"), str):
            kind = "output_text" if item.get("role") == "assistant" else "input_text"
            item["content"] = [{"type": kind, "text": item["content"]}]
        prefix = {"message": "msg_", "function_call_output": "fco_", "function_call": "fc_"}.get(item["type"], "item_")
        items.append({"id": item.get("id") or _id(prefix), **item, "status": item.get("status", "completed")})
    return items


def _response_output(answer: _Answer) -> list[dict[str, Any]]:
    output: list[dict[str, Any]] = []
    if answer.text or not answer.calls:
        output.append({"id": _id("msg_"), "type": "message", "status": "completed", "role": "assistant",
                       "content": [{"type": "output_text", "annotations": [], "logprobs": [],
                                    "text": answer.text}]})
    output += [{"id": _id("fc_"), "type": "function_call", "status": "completed", "arguments": call.arguments,
                "call_id": call.id, "name": call.name} for call in answer.calls]
    return output


def _response_object(body: dict[str, Any], response_id: str, output: list[dict[str, Any]],
                     usage: dict[str, Any]) -> dict[str, Any]:
    tools = [{"type": "function", "name": tool["name"], "description": tool.get("description"),
              "parameters": tool.get("parameters"), "strict": tool.get("strict", True)}
             if tool.get("type") == "function" else tool for tool in body.get("tools") or []]
    return {
        "id": response_id, "object": "response", "created_at": int(time.time()), "status": "completed",
        "background": False, "error": None, "incomplete_details": None,
        "instructions": body.get("instructions"), "max_output_tokens": body.get("max_output_tokens"),
        "max_tool_calls": None, "model": body.get("model", ""), "output": output,
        "parallel_tool_calls": body.get("parallel_tool_calls", True),
        "previous_response_id": body.get("previous_response_id"),
        "reasoning": {"effort": None, "summary": None}, "service_tier": "default",
        "store": body.get("store", True), "temperature": body.get("temperature", 1.0),
        "text": body.get("text") or {"format": {"type": "text"}, "verbosity": "medium"},
        "tool_choice": body.get("tool_choice", "auto"), "tools": tools, "top_logprobs": 0,
        "top_p": body.get("top_p", 1.0), "truncation": body.get("truncation", "disabled"), "usage": usage,
        "user": body.get("user"), "metadata": body.get("metadata") or {},
    }


def _response_events(response: dict[str, Any]) -> Iterable[bytes]:
    sequence = iter(range(1 << 30))

    def event(kind: str, **fields: Any) -> bytes:
        return _event(kind, {"type": kind, "sequence_number": next(sequence), **fields})

    pending = {**response, "status": "in_progress", "output": [], "usage": None}
    yield event("response.created", response=pending)
    yield event("response.in_progress", response=pending)
    for index, item in enumerate(response["output"]):
        if item["type"] == "message":
            yield event("response.output_item.added", output_index=index,
                        item={**item, "status": "in_progress", "content": []})
            part = item["content"][0]
            located = {"item_id": item["id"], "output_index": index, "content_index": 0}
            yield event("response.content_part.added", **located, part={**part, "text": ""})
            for piece in pieces(part["text"]):
                yield event("response.output_text.delta", **located, delta=piece, logprobs=[])
            yield event("response.output_text.done", **located, text=part["text"], logprobs=[])
            yield event("response.content_part.done", **located, part=part)
        else:
            yield event("response.output_item.added", output_index=index,
                        item={**item, "status": "in_progress", "arguments": ""})
            for piece in pieces(item["arguments"], 7):
                yield event("response.function_call_arguments.delta", item_id=item["id"], output_index=index,
                            delta=piece)
            yield event("response.function_call_arguments.done", item_id=item["id"], output_index=index,
                        arguments=item["arguments"])
        yield event("response.output_item.done", output_index=index, item=item)
    yield event("response.completed", response=response)
