"""Requests translated between OpenAI Chat Completions and Anthropic Messages, and the typed field access both use."""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

ANTHROPIC_VERSION = "2023-06-01"
#: The beta under which Anthropic takes `{"role": "system"}` entries inside `messages`.
MID_CONVERSATION_SYSTEM_BETA = "mid-conversation-system-2026-04-07"
# Anthropic requires max_tokens; OpenAI clients usually leave it out.
DEFAULT_MAX_TOKENS = 4096

_DATA_URL = re.compile(r"data:([\w.+-]+/[\w.+-]+)(?:;[^;,]*)*;base64,(.*)", re.DOTALL)
# Anthropic rejects tool ids outside this alphabet; some OpenAI-compatible servers emit e.g. "fn:0".
_TOOL_ID_INVALID = re.compile(r"[^a-zA-Z0-9_-]")


class TranslationError(ValueError):
    """Input that cannot be expressed in the other API; `field` is the JSON path of the culprit, `code` the
    request error's details code when the input is refused."""

    def __init__(self, field: str, problem: str, code: str = "request.untranslatable") -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.code = code


def _unknown_role(role: object, field: str) -> TranslationError:
    return TranslationError(f"{field}.role", f"unknown role {role!r}", "request.invalid_value")


def _note_extras(message: dict[str, Any], field: str, carried: frozenset[str], dropped: list[str] | None) -> None:
    """Names the fields of one message the other API has no place for (``messages[2].name``) in ``dropped``."""
    if dropped is not None:
        dropped += [f"{field}.{name}" for name in dropped_fields(message, carried) if message[name] not in ([], {}, "")]


def expect_object(value: object, field: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise TranslationError(field, f"expected an object, got {_kind(value)}")
    return value


def expect_array(value: object, field: str) -> list[Any]:
    if not isinstance(value, list):
        raise TranslationError(field, f"expected an array, got {_kind(value)}")
    return value


def expect_string(value: object, field: str) -> str:
    if not isinstance(value, str):
        raise TranslationError(field, f"expected a string, got {_kind(value)}")
    return value


def as_object(value: object) -> dict[str, Any]:
    """Lenient where an upstream's answer is read: the object, or an empty one for anything else."""
    return value if isinstance(value, dict) else {}


def as_array(value: object) -> list[Any]:
    """Lenient where an upstream's answer is read: the array, or an empty one for anything else."""
    return value if isinstance(value, list) else []


def _int(value: object, field: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise TranslationError(field, f"expected a positive integer, got {value!r}")
    return value


def _number(value: object, field: str) -> float | int:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise TranslationError(field, f"expected a number, got {_kind(value)}")
    return value


def _kind(value: object) -> str:
    return "null" if value is None else type(value).__name__


def compact_json(value: object) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def tool_id(value: str) -> str:
    return _TOOL_ID_INVALID.sub("_", value) or f"toolu_{uuid.uuid4().hex[:24]}"


# OpenAI -> Anthropic requests


def openai_to_anthropic_request(body: dict[str, Any], model_id: str,
                                dropped: list[str] | None = None) -> dict[str, Any]:
    """The Anthropic request for an OpenAI one; the message fields it leaves out are named in ``dropped``.

    Leading system and developer messages become the top-level ``system``; a later one stays in place as a
    ``{"role": "system"}`` entry (Anthropic's `MID_CONVERSATION_SYSTEM_BETA`).
    """
    body = expect_object(body, "body")
    system: list[dict[str, Any]] = []
    turns: list[dict[str, Any]] = []
    for i, message in enumerate(expect_array(body.get("messages"), "messages")):
        field = f"messages[{i}]"
        message = expect_object(message, field)
        role = message.get("role")
        if role in ("system", "developer"):
            blocks = text_blocks(message.get("content"), f"{field}.content")
            if turns:
                _append_turn(turns, "system", blocks)
            else:
                system += blocks
        elif role == "user":
            _append_turn(turns, "user", _user_blocks(message.get("content"), f"{field}.content"))
        elif role == "assistant":
            _append_turn(turns, "assistant", _assistant_blocks(message, field))
        elif role == "tool":
            _append_turn(turns, "user", [_tool_result_block(message, field)])
        else:
            raise _unknown_role(role, field)
        _note_extras(message, field, _OPENAI_MESSAGE_FIELDS.get(role, _MESSAGE_FIELDS), dropped)
    for turn in turns:
        turn["content"] = _collapse(turn["content"])

    out: dict[str, Any] = {"model": model_id, "messages": turns}
    if system:
        out["system"] = _collapse(system)
    if body.get("n") not in (None, 1):
        raise TranslationError("n", "Anthropic returns a single choice")
    limit = body.get("max_completion_tokens")
    field = "max_completion_tokens"
    if limit is None:
        limit, field = body.get("max_tokens"), "max_tokens"
    out["max_tokens"] = DEFAULT_MAX_TOKENS if limit is None else _int(limit, field)
    if body.get("temperature") is not None:
        # OpenAI's range is 0..2, Anthropic's 0..1: clamp rather than have the upstream refuse.
        out["temperature"] = min(_number(body["temperature"], "temperature"), 1)
    if body.get("top_p") is not None:
        out["top_p"] = _number(body["top_p"], "top_p")
    stop = body.get("stop")
    if isinstance(stop, str):
        out["stop_sequences"] = [stop]
    elif stop is not None:
        out["stop_sequences"] = [expect_string(s, f"stop[{j}]") for j, s in enumerate(expect_array(stop, "stop"))]
    if body.get("stream") is not None:
        out["stream"] = bool(body["stream"])
    user = body.get("user") or body.get("safety_identifier")
    if user is not None:
        out["metadata"] = {"user_id": expect_string(user, "user")}
    if body.get("tools"):
        out["tools"] = [_anthropic_tool(t, f"tools[{j}]") for j, t in enumerate(expect_array(body["tools"], "tools"))]
    choice = _anthropic_tool_choice(body.get("tool_choice"))
    if body.get("parallel_tool_calls") is False and out.get("tools"):
        choice = choice or {"type": "auto"}
        if choice["type"] != "none":
            choice["disable_parallel_tool_use"] = True
    if choice is not None:
        out["tool_choice"] = choice
    return out


#: The OpenAI request fields `openai_to_anthropic_request` carries over (`n` only as 1, Anthropic's one choice);
#: any other is dropped and named (`logprobs`, `seed`, `presence_penalty`, `response_format`...).
OPENAI_FIELDS_FOR_ANTHROPIC = frozenset({
    "model", "messages", "n", "max_completion_tokens", "max_tokens", "temperature", "top_p", "stop", "stream",
    "stream_options", "user", "safety_identifier", "tools", "tool_choice", "parallel_tool_calls",
})


_MESSAGE_FIELDS = frozenset({"role", "content"})
#: The fields of each OpenAI message role the Anthropic request carries (a `name` has no place there).
_OPENAI_MESSAGE_FIELDS = {
    "assistant": _MESSAGE_FIELDS | {"tool_calls"},
    "tool": _MESSAGE_FIELDS | {"tool_call_id"},
}


def dropped_fields(body: dict[str, Any], carried: frozenset[str]) -> list[str]:
    """The top-level fields of ``body`` a translation leaves out; null and false ask for nothing, so they
    are not named."""
    return [name for name, value in body.items()
            if name not in carried and value is not None and value is not False]


def _append_turn(turns: list[dict[str, Any]], role: str, blocks: list[dict[str, Any]]) -> None:
    # Anthropic wants strictly alternating roles and no empty turns.
    if not blocks:
        return
    if turns and turns[-1]["role"] == role:
        turns[-1]["content"] += blocks
    else:
        turns.append({"role": role, "content": blocks})


def _collapse(blocks: list[dict[str, Any]]) -> str | list[dict[str, Any]]:
    if len(blocks) == 1 and blocks[0].keys() == {"type", "text"} and blocks[0]["type"] == "text":
        text: str = blocks[0]["text"]
        return text
    return blocks


def text_blocks(content: object, field: str, types: tuple[str, ...] = ("text",)) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    blocks = []
    for j, part in enumerate(expect_array(content, field)):
        part = expect_object(part, f"{field}[{j}]")
        kind = part.get("type")
        if kind not in types:
            raise TranslationError(f"{field}[{j}].type", f"expected {' or '.join(types)}, got {kind!r}")
        blocks += _text_part(part, kind, f"{field}[{j}]")
    return blocks


def _text_part(part: dict[str, Any], kind: str, field: str) -> list[dict[str, Any]]:
    text = expect_string(part.get(kind), f"{field}.{kind}")
    if not text:
        return []
    block = {"type": "text", "text": text}
    # Clients that know Claude is behind an OpenAI-shaped API mark prompt-cache breakpoints on parts.
    if part.get("cache_control") is not None:
        block["cache_control"] = part["cache_control"]
    return [block]


def _user_blocks(content: object, field: str) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return text_blocks(content, field)
    blocks: list[dict[str, Any]] = []
    for j, part in enumerate(expect_array(content, field)):
        at = f"{field}[{j}]"
        part = expect_object(part, at)
        kind = part.get("type")
        if kind == "text":
            blocks += _text_part(part, "text", at)
        elif kind == "image_url":
            image = expect_object(part.get("image_url"), f"{at}.image_url")
            url = expect_string(image.get("url"), f"{at}.image_url.url")
            blocks.append({"type": "image", "source": _anthropic_source(url, f"{at}.image_url.url")})
        elif kind == "file":
            data = expect_object(part.get("file"), f"{at}.file").get("file_data")
            if data is None:
                raise TranslationError(f"{at}.file.file_data", "only inline file_data can be sent to Anthropic")
            source = _anthropic_source(expect_string(data, f"{at}.file.file_data"), at)
            blocks.append({"type": "document", "source": source})
        else:
            raise TranslationError(f"{at}.type", f"content part {kind!r} cannot be sent to Anthropic")
    return blocks


def _anthropic_source(url: str, field: str) -> dict[str, Any]:
    if url.startswith(("http://", "https://")):
        return {"type": "url", "url": url}
    match = _DATA_URL.fullmatch(url)
    if match is None:
        raise TranslationError(field, "expected an http(s) URL or a base64 data: URL")
    return {"type": "base64", "media_type": match[1], "data": match[2]}


def _assistant_blocks(message: dict[str, Any], field: str) -> list[dict[str, Any]]:
    content = message.get("content")
    blocks = [] if content is None else text_blocks(content, f"{field}.content", ("text", "refusal"))
    for j, call in enumerate(expect_array(message.get("tool_calls") or [], f"{field}.tool_calls")):
        at = f"{field}.tool_calls[{j}]"
        call = expect_object(call, at)
        if call.get("type", "function") != "function":
            raise TranslationError(f"{at}.type", f"tool call {call.get('type')!r} cannot be sent to Anthropic")
        function = expect_object(call.get("function"), f"{at}.function")
        arguments = expect_string(function.get("arguments") or "{}", f"{at}.function.arguments")
        try:
            tool_input = json.loads(arguments)
        except (ValueError, RecursionError):
            raise TranslationError(f"{at}.function.arguments", "not valid JSON") from None
        blocks.append({
            "type": "tool_use",
            "id": tool_id(expect_string(call.get("id"), f"{at}.id")),
            "name": expect_string(function.get("name"), f"{at}.function.name"),
            "input": expect_object(tool_input, f"{at}.function.arguments"),
        })
    return blocks


def _tool_result_block(message: dict[str, Any], field: str) -> dict[str, Any]:
    block: dict[str, Any] = {
        "type": "tool_result",
        "tool_use_id": tool_id(expect_string(message.get("tool_call_id"), f"{field}.tool_call_id")),
    }
    content = text_blocks(message.get("content"), f"{field}.content")
    if content:
        block["content"] = _collapse(content)
    return block


def _anthropic_tool(tool: object, field: str) -> dict[str, Any]:
    tool = expect_object(tool, field)
    if tool.get("type") != "function":
        raise TranslationError(f"{field}.type", f"tool type {tool.get('type')!r} cannot be sent to Anthropic")
    function = expect_object(tool.get("function"), f"{field}.function")
    out: dict[str, Any] = {"name": expect_string(function.get("name"), f"{field}.function.name")}
    if function.get("description") is not None:
        out["description"] = expect_string(function["description"], f"{field}.function.description")
    schema = function.get("parameters")
    if schema is None:
        schema = {"type": "object", "properties": {}}
    out["input_schema"] = expect_object(schema, f"{field}.function.parameters")
    return out


def _anthropic_tool_choice(choice: object) -> dict[str, Any] | None:
    if choice is None:
        return None
    simple = {"auto": "auto", "none": "none", "required": "any"}
    if isinstance(choice, str) and choice in simple:
        return {"type": simple[choice]}
    if isinstance(choice, dict) and choice.get("type") == "function":
        name = expect_object(choice.get("function"), "tool_choice.function").get("name")
        return {"type": "tool", "name": expect_string(name, "tool_choice.function.name")}
    raise TranslationError("tool_choice", f"expected auto, none, required or a function, got {choice!r}")


# Anthropic -> OpenAI requests


def anthropic_to_openai_request(body: dict[str, Any], model_id: str,
                                dropped: list[str] | None = None) -> dict[str, Any]:
    """The OpenAI request for an Anthropic one; the message fields it leaves out are named in ``dropped``.

    A ``{"role": "system"}`` entry inside ``messages`` becomes a system message at the same place.
    """
    body = expect_object(body, "body")
    messages: list[dict[str, Any]] = []
    if body.get("system") is not None:
        # One system message: several trip up the chat templates of many OpenAI-compatible servers.
        system = "\n".join(b["text"] for b in text_blocks(body["system"], "system"))
        if system:
            messages.append({"role": "system", "content": system})
    for i, message in enumerate(expect_array(body.get("messages"), "messages")):
        field = f"messages[{i}]"
        message = expect_object(message, field)
        role = message.get("role")
        if role == "user":
            messages += _openai_user_messages(message.get("content"), f"{field}.content")
        elif role == "assistant":
            messages.append(_openai_assistant_message(message.get("content"), f"{field}.content"))
        elif role == "system":
            text = "\n".join(b["text"] for b in text_blocks(message.get("content"), f"{field}.content"))
            if text:
                messages.append({"role": "system", "content": text})
        else:
            raise _unknown_role(role, field)
        _note_extras(message, field, _MESSAGE_FIELDS, dropped)

    out: dict[str, Any] = {"model": model_id, "messages": messages}
    if body.get("max_tokens") is not None:
        out["max_completion_tokens"] = _int(body["max_tokens"], "max_tokens")
    for name in ("temperature", "top_p"):
        if body.get(name) is not None:
            out[name] = _number(body[name], name)
    if body.get("stop_sequences") is not None:
        stops = expect_array(body["stop_sequences"], "stop_sequences")
        out["stop"] = [expect_string(s, f"stop_sequences[{j}]") for j, s in enumerate(stops)]
    if body.get("stream"):
        # The usage chunk is what lets the Anthropic stream report output_tokens.
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}
    metadata = body.get("metadata")
    if metadata is not None and expect_object(metadata, "metadata").get("user_id") is not None:
        out["user"] = expect_string(metadata["user_id"], "metadata.user_id")
    if body.get("tools"):
        out["tools"] = [_openai_tool(t, f"tools[{j}]") for j, t in enumerate(expect_array(body["tools"], "tools"))]
    if body.get("tool_choice") is not None:
        choice = expect_object(body["tool_choice"], "tool_choice")
        kind = choice.get("type")
        if kind == "tool":
            name = expect_string(choice.get("name"), "tool_choice.name")
            out["tool_choice"] = {"type": "function", "function": {"name": name}}
        elif kind in ("auto", "any", "none"):
            out["tool_choice"] = {"auto": "auto", "any": "required", "none": "none"}[kind]
        else:
            raise TranslationError("tool_choice.type", f"expected auto, any, tool or none, got {kind!r}")
        if choice.get("disable_parallel_tool_use") and out.get("tools"):
            out["parallel_tool_calls"] = False
    return out


#: The Anthropic request fields `anthropic_to_openai_request` carries over; any other is dropped and named
#: (`top_k`, `thinking`, `service_tier`, `container`...).
ANTHROPIC_FIELDS_FOR_OPENAI = frozenset({
    "model", "messages", "system", "max_tokens", "temperature", "top_p", "stop_sequences", "stream", "metadata",
    "tools", "tool_choice",
})


def _openai_user_messages(content: object, field: str) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"role": "user", "content": content}]
    # Tool results become `tool` messages, which must directly follow the assistant's tool calls.
    tool_messages: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for j, block in enumerate(expect_array(content, field)):
        at = f"{field}[{j}]"
        block = expect_object(block, at)
        if block.get("type") == "tool_result":
            inner = block.get("content")
            text: list[str] = []
            if isinstance(inner, str):
                text.append(inner)
            elif inner is not None:
                for k, part in enumerate(expect_array(inner, f"{at}.content")):
                    converted = _openai_part(part, f"{at}.content[{k}]")
                    # OpenAI tool messages carry text only; images go to the user turn that follows.
                    if converted["type"] == "text":
                        text.append(converted["text"])
                    else:
                        parts.append(converted)
            tool_messages.append({
                "role": "tool",
                "tool_call_id": expect_string(block.get("tool_use_id"), f"{at}.tool_use_id"),
                "content": "\n".join(text),
            })
        else:
            parts.append(_openai_part(block, at))
    if len(parts) == 1 and parts[0]["type"] == "text":
        return [*tool_messages, {"role": "user", "content": parts[0]["text"]}]
    return tool_messages + ([{"role": "user", "content": parts}] if parts else [])


def _openai_part(block: object, field: str) -> dict[str, Any]:
    block = expect_object(block, field)
    kind = block.get("type")
    if kind == "text":
        return {"type": "text", "text": expect_string(block.get("text"), f"{field}.text")}
    if kind in ("image", "document"):
        source = expect_object(block.get("source"), f"{field}.source")
        source_type = source.get("type")
        if source_type == "url":
            url = expect_string(source.get("url"), f"{field}.source.url")
        elif source_type == "base64":
            media_type = expect_string(source.get("media_type"), f"{field}.source.media_type")
            url = f"data:{media_type};base64,{expect_string(source.get('data'), f'{field}.source.data')}"
        elif source_type == "text" and kind == "document":
            return {"type": "text", "text": expect_string(source.get("data"), f"{field}.source.data")}
        else:
            raise TranslationError(f"{field}.source.type", f"source {source_type!r} cannot be sent to OpenAI")
        if kind == "image":
            return {"type": "image_url", "image_url": {"url": url}}
        if source_type == "base64":
            return {"type": "file", "file": {"filename": block.get("title") or "document.pdf", "file_data": url}}
    raise TranslationError(f"{field}.type", f"content block {kind!r} cannot be sent to OpenAI")


def _openai_assistant_message(content: object, field: str) -> dict[str, Any]:
    if isinstance(content, str):
        return {"role": "assistant", "content": content}
    text: list[str] = []
    calls: list[dict[str, Any]] = []
    for j, block in enumerate(expect_array(content, field)):
        at = f"{field}[{j}]"
        block = expect_object(block, at)
        kind = block.get("type")
        if kind == "text":
            text.append(expect_string(block.get("text"), f"{at}.text"))
        elif kind == "tool_use":
            calls.append({
                "id": expect_string(block.get("id"), f"{at}.id"),
                "type": "function",
                "function": {
                    "name": expect_string(block.get("name"), f"{at}.name"),
                    "arguments": compact_json(expect_object(block.get("input", {}), f"{at}.input")),
                },
            })
        elif kind not in ("thinking", "redacted_thinking"):
            # Thinking is signed for Anthropic's own models only; an OpenAI upstream has no use for it.
            raise TranslationError(f"{at}.type", f"content block {kind!r} cannot be sent to OpenAI")
    message: dict[str, Any] = {"role": "assistant", "content": "".join(text) if text or not calls else None}
    if calls:
        message["tool_calls"] = calls
    return message


def _openai_tool(tool: object, field: str) -> dict[str, Any]:
    tool = expect_object(tool, field)
    if tool.get("type") not in (None, "custom"):
        raise TranslationError(f"{field}.type", f"server tool {tool.get('type')!r} cannot be sent to OpenAI")
    function: dict[str, Any] = {"name": expect_string(tool.get("name"), f"{field}.name")}
    if tool.get("description") is not None:
        function["description"] = expect_string(tool["description"], f"{field}.description")
    function["parameters"] = expect_object(tool.get("input_schema"), f"{field}.input_schema")
    return {"type": "function", "function": function}
