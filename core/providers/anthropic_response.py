"""Whole responses, usage, ids and errors translated between OpenAI Chat Completions and Anthropic Messages."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from core.errors import ANTHROPIC_STATUSES
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


def finish_reason(stop_reason: object) -> str:
    """OpenAI's finish_reason for an Anthropic stop_reason; "stop" when unknown or not a string."""
    return FINISH_REASONS.get(stop_reason, "stop") if isinstance(stop_reason, str) else "stop"


def stop_reason(finish_reason: object) -> str:
    """Anthropic's stop_reason for an OpenAI finish_reason; "end_turn" when unknown or not a string."""
    return STOP_REASONS.get(finish_reason, "end_turn") if isinstance(finish_reason, str) else "end_turn"


def _tokens(value: object) -> int:
    # An upstream's count that is not a non-negative integer (null, "12", 1.5) counts as nothing.
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def chat_completion_id(message_id: object) -> str:
    suffix = message_id.removeprefix("msg_") if isinstance(message_id, str) and message_id else uuid.uuid4().hex
    return f"chatcmpl-{suffix}"


def message_id(completion_id: object) -> str:
    suffix = completion_id.removeprefix("chatcmpl-") if isinstance(completion_id, str) and completion_id else ""
    return f"msg_{suffix or uuid.uuid4().hex}"


def openai_usage(usage: object) -> dict[str, Any]:
    """Anthropic usage as OpenAI's: prompt_tokens counts cached input too, as OpenAI's does."""
    usage = usage if isinstance(usage, dict) else {}
    cache_read = _tokens(usage.get("cache_read_input_tokens"))
    prompt = _tokens(usage.get("input_tokens")) + _tokens(usage.get("cache_creation_input_tokens")) + cache_read
    completion = _tokens(usage.get("output_tokens"))
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
    cached = _tokens(details.get("cached_tokens") if isinstance(details, dict) else None)
    return {
        "input_tokens": max(_tokens(usage.get("prompt_tokens")) - cached, 0),
        "output_tokens": _tokens(usage.get("completion_tokens")),
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
            "finish_reason": finish_reason(body.get("stop_reason")),
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
        except (ValueError, RecursionError):
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
        "stop_reason": stop_reason(choice.get("finish_reason")),
        "stop_sequence": None,
        "usage": anthropic_usage(body.get("usage")),
    }


# Errors


def anthropic_error_status(error_type: object) -> int:
    """The HTTP status Anthropic pairs with an error type (500 when unknown), for errors that arrive in a stream."""
    return ANTHROPIC_STATUSES.get(error_type, 500) if isinstance(error_type, str) else 500
