"""Streaming translation between Chat Completions chunk SSE and Responses API event SSE."""

from __future__ import annotations

from typing import Any

from core.providers.anthropic import TranslationError, as_array, as_object
from core.providers.anthropic_stream import ChatChunkStream, event_payload
from core.responses_api.response import (
    call_item,
    chat_finish_reason,
    chat_id,
    chat_usage,
    envelope,
    failed,
    finished,
    message_item,
    namespaces,
    new_id,
    text_part,
)
from core.sse import SSEDecoder, encode_event

_DONE = b"data: [DONE]\n\n"


def _string(value: object, default: str = "") -> str:
    return value if isinstance(value, str) else default


def _index(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


class ChatToResponsesStream:
    """Chat Completions chunk SSE in, Responses API event SSE out; ``response`` is the final Response."""

    def __init__(self, request: dict[str, Any], response_id: str, created_at: int) -> None:
        self.request = request
        self._namespaces = namespaces(request)
        self.response: dict[str, Any] | None = None
        self._decoder = SSEDecoder()
        self._snapshot = envelope(request, response_id, created_at, request.get("model"))
        self._sequence = 0
        self._started = False
        self._done = False
        self._message: dict[str, Any] | None = None  # the open message item
        self._part: str | None = None  # "output_text" or "refusal": the open part of the open message
        self._call: int | None = None  # chat tool_calls index of the open function_call item
        self._calls: dict[int, dict[str, Any]] = {}  # chat tool_calls index -> function_call item
        self._finish_reason: object = None
        self._usage: object = None

    @property
    def usage(self) -> dict[str, Any] | None:
        """The upstream's Chat Completions usage, once its usage chunk came."""
        return self._usage if isinstance(self._usage, dict) else None

    def feed(self, data: bytes) -> bytes:
        return b"".join(self._event(name, text) for name, text in self._decoder.feed(data))

    def close(self) -> bytes:
        out = b"".join(self._event(name, text) for name, text in self._decoder.close())
        return out if self._done else out + self._finish()

    def error_event(self, status: int, message: str, code: str) -> bytes:
        """The events that end a stream broken midway: ``error``, then ``response.failed``."""
        if self._done:
            return b""
        out = self._start()
        self._done = True
        out += self._emit({"type": "error", "code": code, "message": message, "param": None})
        response = failed(self._snapshot, status, message)
        return out + self._emit({"type": "response.failed", "response": response})

    def _emit(self, event: dict[str, Any]) -> bytes:
        # Written at once, so events can share the live snapshot and its items without copies.
        event["sequence_number"] = self._sequence
        self._sequence += 1
        return encode_event(event, event["type"])

    def _start(self) -> bytes:
        if self._started:
            return b""
        self._started = True
        return (self._emit({"type": "response.created", "response": self._snapshot})
                + self._emit({"type": "response.in_progress", "response": self._snapshot}))

    def _event(self, name: str, data: str) -> bytes:
        if self._done:
            return b""
        if data.strip() == "[DONE]":
            return self._finish()
        payload = event_payload(data, name)
        out = self._start()
        if payload.get("error") is not None:
            error = as_object(payload["error"])
            code = "upstream." + (_string(error.get("code")) or _string(error.get("type")) or "error")
            return out + self.error_event(502, _string(error.get("message")) or "upstream error", code)
        if isinstance(payload.get("model"), str) and payload["model"]:
            self._snapshot["model"] = payload["model"]
        if isinstance(payload.get("usage"), dict):
            self._usage = payload["usage"]
        for choice in as_array(payload.get("choices")):
            choice = as_object(choice)
            if choice.get("index", 0) != 0:
                continue  # a Response has a single output
            delta = as_object(choice.get("delta"))
            for kind, key in (("output_text", "content"), ("refusal", "refusal")):
                if isinstance(delta.get(key), str) and delta[key]:
                    out += self._text(kind, delta[key])
            for call in as_array(delta.get("tool_calls")):
                out += self._tool_call(as_object(call))
            if choice.get("finish_reason"):
                self._finish_reason = choice["finish_reason"]
        return out

    def _where(self, item: dict[str, Any]) -> dict[str, Any]:
        return {"item_id": item["id"], "output_index": self._snapshot["output"].index(item)}

    def _add(self, item: dict[str, Any]) -> bytes:
        self._snapshot["output"].append(item)
        added = {"type": "response.output_item.added", "output_index": len(self._snapshot["output"]) - 1,
                 "item": item}
        return self._emit(added)

    def _text(self, kind: str, text: str) -> bytes:
        out = self._close_call()
        if self._message is None:
            self._message = message_item([], "in_progress")
            out += self._add(self._message)
        message = self._message
        if self._part != kind:
            out += self._close_part()
            part = text_part("") if kind == "output_text" else {"type": "refusal", "refusal": ""}
            message["content"].append(part)
            self._part = kind
            out += self._emit({"type": "response.content_part.added", **self._where(message),
                               "content_index": len(message["content"]) - 1, "part": part})
        part = message["content"][-1]
        field = "text" if kind == "output_text" else "refusal"
        part[field] += text
        event = {"type": f"response.{kind}.delta", **self._where(message),
                 "content_index": len(message["content"]) - 1, "delta": text}
        if kind == "output_text":
            event["logprobs"] = []
        return out + self._emit(event)

    def _close_part(self) -> bytes:
        message = self._message
        if self._part is None or message is None:
            return b""
        kind, self._part = self._part, None
        part = message["content"][-1]
        where = {**self._where(message), "content_index": len(message["content"]) - 1}
        if kind == "output_text":
            done = {"type": "response.output_text.done", **where, "text": part["text"], "logprobs": []}
        else:
            done = {"type": "response.refusal.done", **where, "refusal": part["refusal"]}
        return self._emit(done) + self._emit({"type": "response.content_part.done", **where,
                                              "part": part})

    def _close_message(self, status: str) -> bytes:
        message = self._message
        if message is None:
            return b""
        out = self._close_part()
        self._message = None
        message["status"] = status
        return out + self._emit({"type": "response.output_item.done", "output_index": self._where(message)[
            "output_index"], "item": message})

    def _tool_call(self, call: dict[str, Any]) -> bytes:
        index = _index(call.get("index"))
        if index is None:
            # A few servers omit the index: a new id starts a new call, no id continues the open one.
            index = self._call if self._call is not None and not call.get("id") else len(self._calls)
        function = as_object(call.get("function"))
        out = b""
        if index not in self._calls:
            out += self._close_message("completed") + self._close_call()
            call_id = _string(call.get("id")) or new_id("call")
            name = _string(function.get("name"))
            self._calls[index] = call_item(call_id, name, "", "in_progress", namespace=self._namespaces.get(name))
            self._call = index
            out += self._add(self._calls[index])
        elif self._call != index:
            # Items are streamed one after the other; a call resumed after another has no faithful order.
            raise TranslationError(f"choices[0].delta.tool_calls[{index}]", "arguments resumed after another item")
        item = self._calls[index]
        arguments = function.get("arguments")
        if isinstance(arguments, str) and arguments:
            item["arguments"] += arguments
            out += self._emit({"type": "response.function_call_arguments.delta", **self._where(item),
                               "delta": arguments})
        return out

    def _close_call(self) -> bytes:
        if self._call is None:
            return b""
        item = self._calls[self._call]
        self._call = None
        item["status"] = "completed"
        where = self._where(item)
        done = {"type": "response.function_call_arguments.done", **where, "arguments": item["arguments"],
                "name": item["name"]}
        return self._emit(done) + self._emit({"type": "response.output_item.done",
                                              "output_index": where["output_index"], "item": item})

    def _finish(self) -> bytes:
        out = self._start()
        truncated = self._finish_reason in ("length", "content_filter")
        out += self._close_message("incomplete" if truncated else "completed") + self._close_call()
        self._done = True
        response = finished(self._snapshot, self._finish_reason, self._usage)
        self.response = response
        kind = "response.incomplete" if response["status"] == "incomplete" else "response.completed"
        return out + self._emit({"type": kind, "response": response})


class ResponsesToChatStream(ChatChunkStream):
    """Responses API event SSE in, Chat Completions chunk SSE out (usage in a last chunk, then [DONE])."""

    def __init__(self, model: str, include_usage: bool = True) -> None:
        super().__init__(model, include_usage, chat_id(None))
        self._started = False
        self._calls: dict[int, int] = {}  # Responses output_index -> chat tool_calls index
        self._arguments: dict[int, str] = {}  # chat tool_calls index -> arguments sent
        self._texts: dict[tuple[int, int], str] = {}  # (output_index, content_index) -> text sent

    def close(self) -> bytes:
        out = b"".join(self._event(name, text) for name, text in self._decoder.close())
        if self._done:
            return out
        return out + self._error(502, "upstream stream ended before response.completed", "upstream.stream_truncated")

    def _event(self, name: str, data: str) -> bytes:
        if self._done or data.strip() == "[DONE]":
            return b""
        payload = event_payload(data, name)
        kind = payload.get("type") or name
        out = b""
        if not self._started:
            self._started = True
            response = as_object(payload.get("response"))
            if response.get("id"):
                self._id = chat_id(response["id"])
            out = self._chunk({"role": "assistant", "content": ""})
        output_index = _index(payload.get("output_index"))
        if kind in ("response.output_text.delta", "response.refusal.delta"):
            delta = payload.get("delta")
            if isinstance(delta, str) and delta:
                key = (output_index or 0, _index(payload.get("content_index")) or 0)
                self._texts[key] = self._texts.get(key, "") + delta
                out += self._chunk({"content" if kind == "response.output_text.delta" else "refusal": delta})
        elif kind in ("response.output_text.done", "response.refusal.done"):
            # Some servers send only the done event: what was not streamed is sent now.
            field = "text" if kind == "response.output_text.done" else "refusal"
            key = (output_index or 0, _index(payload.get("content_index")) or 0)
            text, sent = _string(payload.get(field)), self._texts.get(key, "")
            if text.startswith(sent) and len(text) > len(sent):
                self._texts[key] = text
                out += self._chunk({"content" if field == "text" else "refusal": text[len(sent):]})
        elif kind in ("response.output_item.added", "response.output_item.done"):
            item = as_object(payload.get("item"))
            if item.get("type") == "function_call" and output_index is not None:
                out += self._function_call(output_index, item)
        elif kind == "response.function_call_arguments.delta":
            index = self._calls.get(output_index) if output_index is not None else None
            delta = payload.get("delta")
            if index is not None and isinstance(delta, str) and delta:
                self._arguments[index] += delta
                out += self._chunk({"tool_calls": [{"index": index, "function": {"arguments": delta}}]})
        elif kind in ("response.completed", "response.incomplete"):
            out += self._finish(as_object(payload.get("response")))
        elif kind in ("response.failed", "error"):
            error = as_object(as_object(payload.get("response")).get("error")) if kind == "response.failed" else payload
            code = _string(error.get("code")) or "error"
            # Codes this proxy wrote itself (a Responses stream it translated) are already namespaced.
            code = code if code.startswith("upstream.") else f"upstream.{code}"
            out += self._error(502, _string(error.get("message")) or "upstream error", code)
        return out

    def _function_call(self, output_index: int, item: dict[str, Any]) -> bytes:
        arguments = _string(item.get("arguments"))
        if output_index not in self._calls:
            index = self._calls[output_index] = len(self._calls)
            self._arguments[index] = arguments
            call_id = _string(item.get("call_id")) or new_id("call")
            function = {"name": _string(item.get("name")), "arguments": arguments}
            return self._chunk({"tool_calls": [{"index": index, "id": call_id, "type": "function",
                                                "function": function}]})
        index = self._calls[output_index]
        sent = self._arguments[index]
        if arguments.startswith(sent) and len(arguments) > len(sent):
            self._arguments[index] = arguments
            return self._chunk({"tool_calls": [{"index": index, "function": {"arguments": arguments[len(sent):]}}]})
        return b""

    def _finish(self, response: dict[str, Any]) -> bytes:
        self._done = True
        if isinstance(response.get("usage"), dict):
            self.usage = chat_usage(response["usage"])
        finish = chat_finish_reason(response, bool(self._calls))
        out = self._chunk({}, finish)
        if self.include_usage:
            out += self._frame({"choices": [], "usage": self.usage or chat_usage(None)})
        return out + _DONE

    def _chunk(self, delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
        return self._frame({"choices": [{"index": 0, "delta": delta, "logprobs": None,
                                         "finish_reason": finish_reason}]})
