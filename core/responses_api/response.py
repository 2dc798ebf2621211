"""Response objects of the Responses API, built from and turned into Chat Completions answers."""

from __future__ import annotations

import time
import uuid
from typing import Any

from core.providers.anthropic import TranslationError, as_array, as_object

# finish_reason -> the Response status and incomplete_details reason
_INCOMPLETE = {"length": "max_output_tokens", "content_filter": "content_filter"}
_FINISH = {"max_output_tokens": "length", "content_filter": "content_filter"}
# The openai SDK only accepts these codes on a Response's error.
_ERROR_CODES = {429: "rate_limit_exceeded", 400: "invalid_prompt"}


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def _count(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def _text(value: object) -> str:
    return value if isinstance(value, str) else ""


def envelope(request: dict[str, Any], response_id: str, created_at: int, model: object) -> dict[str, Any]:
    """A Response in progress, no output yet: the request's parameters echoed with the API's defaults."""
    return {
        "id": response_id,
        "object": "response",
        "created_at": created_at,
        "status": "in_progress",
        "background": bool(request.get("background")),
        "completed_at": None,
        "error": None,
        "incomplete_details": None,
        "instructions": request.get("instructions"),
        "max_output_tokens": request.get("max_output_tokens"),
        "max_tool_calls": request.get("max_tool_calls"),
        "model": model if isinstance(model, str) and model else request.get("model") or "",
        "output": [],
        "parallel_tool_calls": request.get("parallel_tool_calls", True) is not False,
        "previous_response_id": request.get("previous_response_id"),
        "prompt_cache_key": request.get("prompt_cache_key"),
        "reasoning": {"effort": None, "summary": None, **as_object(request.get("reasoning"))},
        "safety_identifier": request.get("safety_identifier"),
        "service_tier": request.get("service_tier") or "default",
        "store": request.get("store", True) is not False,
        "temperature": request.get("temperature", 1.0),
        "text": {"format": {"type": "text"}, **as_object(request.get("text"))},
        "tool_choice": request.get("tool_choice") or "auto",
        "tools": request.get("tools") or [],
        "top_p": request.get("top_p", 1.0),
        "truncation": request.get("truncation") or "disabled",
        "usage": None,
        "user": request.get("user"),
        "metadata": request.get("metadata") or {},
    }


def finished(response: dict[str, Any], finish_reason: object, usage: object) -> dict[str, Any]:
    """``response`` (output filled in) as completed, or incomplete for a length or content-filter stop."""
    reason = _INCOMPLETE.get(finish_reason) if isinstance(finish_reason, str) else None
    response["status"] = "incomplete" if reason else "completed"
    response["incomplete_details"] = {"reason": reason} if reason else None
    response["completed_at"] = None if reason else int(time.time())
    response["usage"] = responses_usage(usage) if isinstance(usage, dict) else None
    if reason:
        for item in response["output"]:
            if item.get("type") == "message":
                item["status"] = "incomplete"
    return response


def failed(response: dict[str, Any], status: int, message: str) -> dict[str, Any]:
    response["status"] = "failed"
    code = _ERROR_CODES.get(status, "server_error")
    response["error"] = {"code": code, "message": message}
    return response


def responses_usage(usage: dict[str, Any]) -> dict[str, Any]:
    """Chat Completions usage as the Responses API reports it."""
    prompt = _count(usage.get("prompt_tokens"))
    completion = _count(usage.get("completion_tokens"))
    return {
        "input_tokens": prompt,
        "input_tokens_details": {
            "cached_tokens": _count(as_object(usage.get("prompt_tokens_details")).get("cached_tokens")),
            "cache_write_tokens": 0,
        },
        "output_tokens": completion,
        "output_tokens_details": {
            "reasoning_tokens": _count(as_object(usage.get("completion_tokens_details")).get("reasoning_tokens")),
        },
        "total_tokens": _count(usage.get("total_tokens")) or prompt + completion,
    }


def chat_usage(usage: object) -> dict[str, Any]:
    """Responses usage as Chat Completions reports it."""
    usage = as_object(usage)
    prompt, completion = _count(usage.get("input_tokens")), _count(usage.get("output_tokens"))
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": _count(usage.get("total_tokens")) or prompt + completion,
        "prompt_tokens_details": {
            "cached_tokens": _count(as_object(usage.get("input_tokens_details")).get("cached_tokens")),
        },
        "completion_tokens_details": {
            "reasoning_tokens": _count(as_object(usage.get("output_tokens_details")).get("reasoning_tokens")),
        },
    }


def text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def message_item(parts: list[dict[str, Any]], status: str = "completed", item_id: str | None = None) -> dict[str, Any]:
    return {"id": item_id or new_id("msg"), "type": "message", "status": status, "role": "assistant",
            "content": parts}


def namespaces(body: dict[str, Any]) -> dict[str, str]:
    """The namespace of each function a namespace tool of ``body`` groups, by function name: the calls a chat
    upstream makes name the function only (request.to_chat refuses names that are not unique)."""
    return {function["name"]: tool["name"] for tool in body.get("tools") or []
            if isinstance(tool, dict) and tool.get("type") == "namespace" and isinstance(tool.get("name"), str)
            and isinstance(tool.get("tools"), list)
            for function in tool["tools"] if isinstance(function, dict) and function.get("type") == "function"
            and isinstance(function.get("name"), str)}


def call_item(call_id: str, name: str, arguments: str, status: str = "completed",
              item_id: str | None = None, namespace: str | None = None) -> dict[str, Any]:
    item = {"id": item_id or new_id("fc"), "type": "function_call", "status": status, "arguments": arguments,
            "call_id": call_id, "name": name}
    if namespace is not None:
        item["namespace"] = namespace
    return item


def chat_to_response(completion: dict[str, Any], request: dict[str, Any], response_id: str,
                     created_at: int) -> dict[str, Any]:
    """The Response for a chat completion answering the Chat Completions form of ``request``."""
    if not isinstance(completion, dict):
        raise TranslationError("body", "expected a chat completion object")
    choice = as_object(next(iter(as_array(completion.get("choices"))), None))
    message = as_object(choice.get("message"))
    response = envelope(request, response_id, created_at, completion.get("model"))
    parts: list[dict[str, Any]] = []
    content = message.get("content")
    text = content if isinstance(content, str) else "".join(
        _text(as_object(part).get("text")) for part in as_array(content))
    if text:
        parts.append(text_part(text))
    if isinstance(message.get("refusal"), str) and message["refusal"]:
        parts.append({"type": "refusal", "refusal": message["refusal"]})
    if parts:
        response["output"].append(message_item(parts))
    grouped = namespaces(request)
    for call in as_array(message.get("tool_calls")):
        call = as_object(call)
        function = as_object(call.get("function"))
        name = _text(function.get("name"))
        response["output"].append(call_item(_text(call.get("id")) or new_id("call"), name,
                                            _text(function.get("arguments")), namespace=grouped.get(name)))
    return finished(response, choice.get("finish_reason"), completion.get("usage"))


def response_items(response: dict[str, Any]) -> list[dict[str, Any]]:
    """A Response's output as chat messages, for the next turn of a conversation (``previous_response_id``)."""
    message = _chat_message(response)
    return [message] if message["content"] or message.get("tool_calls") or message.get("refusal") else []


def _chat_message(response: dict[str, Any]) -> dict[str, Any]:
    text, refusal, calls = [], [], []
    for item in as_array(as_object(response).get("output")):
        item = as_object(item)
        if item.get("type") == "message":
            for part in as_array(item.get("content")):
                part = as_object(part)
                if part.get("type") == "output_text":
                    text.append(_text(part.get("text")))
                elif part.get("type") == "refusal":
                    refusal.append(_text(part.get("refusal")))
        elif item.get("type") == "function_call":
            calls.append({"id": _text(item.get("call_id")) or new_id("call"), "type": "function",
                          "function": {"name": _text(item.get("name")), "arguments": _text(item.get("arguments"))}})
    message: dict[str, Any] = {"role": "assistant", "content": "".join(text) or None}
    if refusal:
        message["refusal"] = "".join(refusal)
    if calls:
        message["tool_calls"] = calls
    return message


def chat_id(response_id: object) -> str:
    suffix = response_id.removeprefix("resp_") if isinstance(response_id, str) and response_id else ""
    return f"chatcmpl-{suffix or uuid.uuid4().hex}"


def chat_finish_reason(response: dict[str, Any], tool_calls: bool) -> str:
    reason = as_object(response.get("incomplete_details")).get("reason")
    if response.get("status") == "incomplete" and isinstance(reason, str) and reason in _FINISH:
        return _FINISH[reason]
    return "tool_calls" if tool_calls else "stop"


def response_to_chat(response: dict[str, Any], model: str) -> dict[str, Any]:
    """The chat completion for a Response, for chat clients on a Responses upstream."""
    if not isinstance(response, dict):
        raise TranslationError("body", "expected a Response object")
    if response.get("status") == "failed":
        error = as_object(response.get("error"))
        raise TranslationError("error", _text(error.get("message")) or "the response failed")
    message = _chat_message(response)
    message.setdefault("refusal", None)
    created = response.get("created_at")
    return {
        "id": chat_id(response.get("id")),
        "object": "chat.completion",
        "created": created if isinstance(created, int) and not isinstance(created, bool) else int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": message, "logprobs": None,
                     "finish_reason": chat_finish_reason(response, bool(message.get("tool_calls")))}],
        "usage": chat_usage(response.get("usage")),
    }
