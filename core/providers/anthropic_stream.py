"""Streaming translation between OpenAI chat.completion.chunk SSE and Anthropic Messages SSE."""

from __future__ import annotations

import json
import time
from abc import ABC, abstractmethod
from typing import Any

from core.errors import anthropic_error, openai_error
from core.providers.anthropic import TranslationError, as_array, as_object, tool_id
from core.providers.anthropic_response import (
    anthropic_error_status,
    anthropic_usage,
    chat_completion_id,
    finish_reason,
    message_id,
    openai_usage,
    stop_reason,
)
from core.sse import SSEDecoder, encode_event

_DONE = b"data: [DONE]\n\n"


def event_payload(data: str, event: str) -> dict[str, Any]:
    """The JSON object an SSE event carries; TranslationError for anything else."""
    try:
        payload = json.loads(data)
    except (ValueError, RecursionError):
        raise TranslationError(f"{event or 'data'} event", "data is not JSON") from None
    if not isinstance(payload, dict):
        raise TranslationError(f"{event or 'data'} event", "data is not a JSON object")
    return payload


def _index(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else -1


def _text_or(value: object, default: str) -> str:
    return value if isinstance(value, str) and value else default


class ChatChunkStream(ABC):
    """A translator whose output is chat.completion.chunk SSE: every chunk carries one id, creation time and
    model; an error chunk, then [DONE], ends a stream that broke. Subclasses turn each event into chunks in
    ``_event``; `usage` is OpenAI-shaped."""

    def __init__(self, model: str, include_usage: bool, chunk_id: str) -> None:
        self.model = model
        self.include_usage = include_usage
        self.usage: dict[str, Any] | None = None
        self._decoder = SSEDecoder()
        self._id = chunk_id
        self._created = int(time.time())
        self._done = False

    def feed(self, data: bytes) -> bytes:
        return b"".join(self._event(event, data) for event, data in self._decoder.feed(data))

    @abstractmethod
    def _event(self, event: str, data: str) -> bytes:
        """The chunks one upstream event becomes."""

    def _frame(self, fields: dict[str, Any]) -> bytes:
        chunk = {"id": self._id, "object": "chat.completion.chunk", "created": self._created, "model": self.model}
        return encode_event(chunk | fields)

    def _error(self, status: int, message: str, code: str) -> bytes:
        # The openai SDK raises APIError on a chunk whose body is {"error": ...}.
        self._done = True
        return encode_event(openai_error(status, message, code)) + _DONE


class AnthropicToOpenAIStream(ChatChunkStream):
    """Anthropic Messages SSE in, OpenAI chat.completion.chunk SSE out."""

    def __init__(self, model: str, include_usage: bool) -> None:
        super().__init__(model, include_usage, chat_completion_id(None))
        self._anthropic_usage: dict[str, Any] = {}
        self._tool_calls: dict[int, int] = {}  # Anthropic block index -> OpenAI tool_calls index

    def close(self) -> bytes:
        out = b"".join(self._event(event, data) for event, data in self._decoder.close())
        if not self._done:
            out += self._error(500, "upstream stream ended before message_stop", "upstream.stream_truncated")
        return out

    def _event(self, event: str, data: str) -> bytes:
        if self._done or event == "ping":
            return b""
        payload = event_payload(data, event)
        kind = payload.get("type", event)
        if kind == "message_start":
            message = as_object(payload.get("message"))
            self._id = chat_completion_id(message.get("id"))
            self._count(message.get("usage"))
            return self._chunk({"role": "assistant", "content": ""})
        if kind == "content_block_start":
            block = as_object(payload.get("content_block"))
            if block.get("type") == "text" and block.get("text"):
                return self._chunk({"content": block["text"]})
            if block.get("type") == "tool_use":
                index = self._tool_calls[_index(payload.get("index"))] = len(self._tool_calls)
                function = {"name": block.get("name"), "arguments": ""}
                opened = {"index": index, "id": block.get("id"), "type": "function", "function": function}
                return self._chunk({"tool_calls": [opened]})
            return b""  # thinking and server-tool blocks have no Chat Completions counterpart
        if kind == "content_block_delta":
            delta = as_object(payload.get("delta"))
            if delta.get("type") == "text_delta" and delta.get("text"):
                return self._chunk({"content": delta["text"]})
            call = self._tool_calls.get(_index(payload.get("index")))
            if delta.get("type") == "input_json_delta" and delta.get("partial_json") and call is not None:
                return self._chunk({"tool_calls": [{"index": call, "function": {"arguments": delta["partial_json"]}}]})
            return b""
        if kind == "message_delta":
            self._count(payload.get("usage"))
            return self._chunk({}, finish_reason(as_object(payload.get("delta")).get("stop_reason")))
        if kind == "message_stop":
            self._done = True
            if self.include_usage:
                return self._frame({"choices": [], "usage": self.usage or openai_usage(None)}) + _DONE
            return _DONE
        if kind == "error":
            error = as_object(payload.get("error"))
            error_type = _text_or(error.get("type"), "api_error")
            text = _text_or(error.get("message"), "upstream error")
            return self._error(anthropic_error_status(error_type), text, f"upstream.{error_type}")
        return b""  # content_block_stop, and event types newer than this code

    def _count(self, usage: object) -> None:
        # message_delta counts are cumulative and omit what did not change, so merge over message_start's.
        self._anthropic_usage.update({k: v for k, v in as_object(usage).items() if v is not None})
        self.usage = openai_usage(self._anthropic_usage)

    def _chunk(self, delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return self._frame({"choices": [choice], **({"usage": None} if self.include_usage else {})})


class OpenAIToAnthropicStream:
    """OpenAI chat.completion.chunk SSE in, Anthropic Messages SSE out; `usage` is OpenAI-shaped, as received."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.usage: dict[str, Any] | None = None
        self._decoder = SSEDecoder()
        self._started = False
        self._blocks = 0  # Anthropic content blocks opened so far
        self._open: str | int | None = None  # "text", an OpenAI tool call index, or None
        self._tool_calls: dict[int, int] = {}  # OpenAI tool_calls index -> Anthropic block index
        self._finish_reason: str | None = None
        self._done = False

    def feed(self, data: bytes) -> bytes:
        return b"".join(self._event(event, data) for event, data in self._decoder.feed(data))

    def close(self) -> bytes:
        out = b"".join(self._event(event, data) for event, data in self._decoder.close())
        if self._done:
            return out
        if self._finish_reason is not None:  # some servers stop after the finish chunk without [DONE]
            return out + self._finish()
        return out + self._error(500, "upstream stream ended before finish_reason", "upstream.stream_truncated")

    def _event(self, event: str, data: str) -> bytes:
        if self._done:
            return b""
        if data.strip() == "[DONE]":
            return self._finish()
        payload = event_payload(data, event)
        if payload.get("error") is not None:
            error = as_object(payload["error"])
            code = "upstream." + str(error.get("code") or error.get("type") or "error")
            message = _text_or(error.get("message"), "upstream error")
            return self._error(anthropic_error_status(error.get("type")), message, code)
        out = b"" if self._started else self._start(payload.get("id"))
        if isinstance(payload.get("usage"), dict):
            self.usage = payload["usage"]
        for choice in as_array(payload.get("choices")):
            choice = as_object(choice)
            if choice.get("index", 0) != 0:
                continue  # Anthropic has one choice; n > 1 was refused when the request was translated
            delta = as_object(choice.get("delta"))
            for key in ("content", "refusal"):
                if isinstance(delta.get(key), str) and delta[key]:
                    out += self._text(delta[key])
            for call in as_array(delta.get("tool_calls")):
                out += self._tool_call(as_object(call))
            finish = choice.get("finish_reason")
            if finish:
                self._finish_reason = finish if isinstance(finish, str) else "stop"
        return out

    def _start(self, completion_id: object) -> bytes:
        self._started = True
        message: dict[str, Any] = {
            "id": message_id(completion_id),
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            # OpenAI reports usage only at the end; the final message_delta carries the real counts.
            "usage": {"input_tokens": 0, "output_tokens": 0},
        }
        return (encode_event({"type": "message_start", "message": message}, "message_start")
                + encode_event({"type": "ping"}, "ping"))

    def _open_block(self, kind: str | int, block: dict[str, Any]) -> bytes:
        out = self._close_block()
        self._open = kind
        self._blocks += 1
        start = {"type": "content_block_start", "index": self._blocks - 1, "content_block": block}
        return out + encode_event(start, "content_block_start")

    def _close_block(self) -> bytes:
        if self._open is None:
            return b""
        self._open = None
        return encode_event({"type": "content_block_stop", "index": self._blocks - 1}, "content_block_stop")

    def _delta(self, delta: dict[str, Any]) -> bytes:
        return encode_event({"type": "content_block_delta", "index": self._blocks - 1, "delta": delta},
                            "content_block_delta")

    def _text(self, text: str) -> bytes:
        out = b"" if self._open == "text" else self._open_block("text", {"type": "text", "text": ""})
        return out + self._delta({"type": "text_delta", "text": text})

    def _tool_call(self, call: dict[str, Any]) -> bytes:
        index = call.get("index")
        if not isinstance(index, int):
            # A few servers omit the index: a new id starts a new call, no id continues the open one.
            index = self._open if isinstance(self._open, int) and not call.get("id") else len(self._tool_calls)
        function = as_object(call.get("function"))
        out = b""
        if index not in self._tool_calls:
            self._tool_calls[index] = self._blocks
            call_id, name = tool_id(str(call.get("id") or "")), function.get("name") or ""
            block: dict[str, Any] = {"type": "tool_use", "id": call_id, "name": name, "input": {}}
            out = self._open_block(index, block)
        elif self._open != index:
            # Anthropic blocks cannot be reopened, so interleaved argument streams have no faithful translation.
            raise TranslationError(f"choices[0].delta.tool_calls[{index}]", "arguments resumed after another block")
        arguments = function.get("arguments")
        if isinstance(arguments, str) and arguments:
            out += self._delta({"type": "input_json_delta", "partial_json": arguments})
        return out

    def _finish(self) -> bytes:
        out = (b"" if self._started else self._start(None)) + self._close_block()
        self._done = True
        usage: dict[str, Any] = {"output_tokens": 0}
        if self.usage is not None:
            usage = anthropic_usage(self.usage)
        delta = {"stop_reason": stop_reason(self._finish_reason), "stop_sequence": None}
        out += encode_event({"type": "message_delta", "delta": delta, "usage": usage}, "message_delta")
        return out + encode_event({"type": "message_stop"}, "message_stop")

    def _error(self, status: int, message: str, code: str) -> bytes:
        # The anthropic SDK raises on an `error` event, wherever it comes in the stream.
        self._done = True
        return encode_event(anthropic_error(status, message, code), "error")
