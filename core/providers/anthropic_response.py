"""Whole responses, usage, ids and errors translated between OpenAI Chat Completions and Anthropic Messages."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from core.errors import ANTHROPIC_STATUSES, anthropic_error, anthropic_error_type, openai_error
from core.providers.anthropic import (
    TranslationError,
    compact_json,
    expect_array,
    expect_object,
    expect_string,
    text_blocks,
    tool_id,
)

FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}


def chat_completion_id(message_id: object) -> str:
    suffix = message_id.removeprefix("msg_") if isinstance(message_id, str) and message_id else uuid.uuid4().hex
    return f"chatcmpl-{suffix}"


def message_id(completion_id: object) -> str:
    suffix = completion_id.removeprefix("chatcmpl-") if isinstance(completion_id, str) and completion_id else ""
    return f"msg_{suffix or uuid.uuid4().hex}"


def openai_usage(usage: object) -> dict[str, Any]:
    """Anthropic usage as OpenAI's: prompt_tokens counts cached input too, as OpenAI's does."""
    usage = usage if isinstance(usage, dict) else {}
    cache_read = usage.get("cache_read_input_tokens") or 0
    prompt = (usage.get("input_tokens") or 0) + (usage.get("cache_creation_input_tokens") or 0) + cache_read
    completion = usage.get("output_tokens") or 0
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cache_read},
    }


def anthropic_usage(usage: object) -> dict[str, Any]:
    """OpenAI usage as Anthropic's, where input_tokens excludes what was read from the cache."""
    usage = usage if isinstance(usage, dict) else {}
    details = usage.get("prompt_tokens_details")
    cached = (details.get("cached_tokens") if isinstance(details, dict) else None) or 0
    return {
        "input_tokens": max((usage.get("prompt_tokens") or 0) - cached, 0),
        "output_tokens": usage.get("completion_tokens") or 0,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": cached,
    }


# Responses


def anthropic_to_openai_response(body: dict[str, Any], model: str) -> dict[str, Any]:
    body = expect_object(body, "body")
    text: list[str] = []
    calls: list[dict[str, Any]] = []
    for j, block in enumerate(expect_array(body.get("content"), "content")):
        block = expect_object(block, f"content[{j}]")
        if block.get("type") == "text":
            text.append(expect_string(block.get("text"), f"content[{j}].text"))
        elif block.get("type") == "tool_use":
            calls.append({
                "id": expect_string(block.get("id"), f"content[{j}].id"),
                "type": "function",
                "function": {
                    "name": expect_string(block.get("name"), f"content[{j}].name"),
                    "arguments": compact_json(block.get("input") or {}),
                },
            })
        # Thinking and server-tool blocks have no Chat Completions counterpart.
    message: dict[str, Any] = {
        "role": "assistant",
        "content": "".join(text) if text or not calls else None,
        "refusal": None,
    }
    if calls:
        message["tool_calls"] = calls
    return {
        "id": chat_completion_id(body.get("id")),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{
            "index": 0,
            "message": message,
            "logprobs": None,
            "finish_reason": FINISH_REASONS.get(body.get("stop_reason") or "", "stop"),
        }],
        "usage": openai_usage(body.get("usage")),
    }


def openai_to_anthropic_response(body: dict[str, Any], model: str) -> dict[str, Any]:
    body = expect_object(body, "body")
    choices = expect_array(body.get("choices"), "choices")
    if not choices:
        raise TranslationError("choices", "expected at least one choice")
    choice = expect_object(choices[0], "choices[0]")
    message = expect_object(choice.get("message"), "choices[0].message")
    content: list[dict[str, Any]] = []
    for key in ("content", "refusal"):
        if message.get(key):
            content += text_blocks(message[key], f"choices[0].message.{key}")
    for j, call in enumerate(expect_array(message.get("tool_calls") or [], "choices[0].message.tool_calls")):
        at = f"choices[0].message.tool_calls[{j}]"
        call = expect_object(call, at)
        function = expect_object(call.get("function"), f"{at}.function")
        try:
            tool_input = json.loads(expect_string(function.get("arguments") or "{}", f"{at}.function.arguments"))
        except ValueError:
            raise TranslationError(f"{at}.function.arguments", "not valid JSON") from None
        content.append({
            "type": "tool_use",
            "id": tool_id(expect_string(call.get("id") or "", f"{at}.id")),
            "name": expect_string(function.get("name"), f"{at}.function.name"),
            "input": expect_object(tool_input, f"{at}.function.arguments"),
        })
    return {
        "id": message_id(body.get("id")),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": STOP_REASONS.get(choice.get("finish_reason") or "", "end_turn"),
        "stop_sequence": None,
        "usage": anthropic_usage(body.get("usage")),
    }


# Errors


def anthropic_error_status(error_type: object) -> int:
    """The HTTP status Anthropic pairs with an error type (500 when unknown), for errors that arrive in a stream."""
    return ANTHROPIC_STATUSES.get(error_type, 500) if isinstance(error_type, str) else 500


def openai_error_to_anthropic(body: bytes, status: int) -> bytes:
    data = _error_json(body)
    error = data.get("error")
    message, code = None, None
    if isinstance(error, dict):
        message, code = error.get("message"), error.get("code") or error.get("type")
    elif isinstance(error, str):
        message = error
    message = message or data.get("message") or data.get("detail")
    error = anthropic_error(status, _error_text(message, body, status), f"upstream.{code or 'error'}")
    return compact_json(error).encode()


def anthropic_error_to_openai(body: bytes, status: int) -> bytes:
    error = _error_json(body).get("error")
    error = error if isinstance(error, dict) else {}
    code = error["type"] if isinstance(error.get("type"), str) else anthropic_error_type(status)
    message = _error_text(error.get("message"), body, status)
    return compact_json(openai_error(status, message, f"upstream.{code}")).encode()


def _error_json(body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _error_text(message: object, body: bytes, status: int) -> str:
    if isinstance(message, str) and message:
        return message
    # Not a JSON error body (an HTML page from a load balancer, say): pass on a bounded excerpt.
    text = body.decode("utf-8", "replace").strip()[:1000]
    return text or f"upstream returned HTTP {status}"
