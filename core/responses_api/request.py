"""Responses API requests translated to Chat Completions (for the filters and chat upstreams) and back."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from core.flow import content_text
from core.providers.anthropic import TranslationError, as_object, expect_array, expect_object, expect_string
from core.responses_api.response import new_id
from core.responses_api.validation import item_type

#: Request fields the proxy itself answers for (conversation state, retention): neither forwarded nor dropped.
PROXY_FIELDS = frozenset({"store", "previous_response_id", "include", "truncation", "background", "stream_options"})
# Fields with a Chat Completions counterpart of the same name and meaning.
_SAME_NAME = ("temperature", "top_p", "metadata", "user", "service_tier", "safety_identifier", "prompt_cache_key")
_CARRIED = frozenset({
    "model", "input", "instructions", "tools", "tool_choice", "parallel_tool_calls", "max_output_tokens", "text",
    "reasoning", "stream", *_SAME_NAME,
})


# Responses -> Chat Completions


@dataclass(frozen=True)
class ChatForm:
    """A Responses request as a Chat Completions body, with what the translation left out."""

    body: dict[str, Any]
    dropped: list[str] = field(default_factory=list)
    unsupported: list[tuple[str, str]] = field(default_factory=list)


def to_chat(body: dict[str, Any], history: list[dict[str, Any]]) -> ChatForm:
    """The Chat Completions form of a validated Responses body; ``history`` is the earlier conversation as chat
    messages (its instructions are not carried over, as OpenAI does)."""
    unsupported: list[tuple[str, str]] = []
    messages: list[dict[str, Any]] = []
    if body.get("instructions"):
        messages.append({"role": "system", "content": body["instructions"]})
    messages += [dict(message) for message in history]
    source = body["input"]
    if isinstance(source, str):
        messages.append({"role": "user", "content": source})
    else:
        messages += _chat_messages(source, unsupported)
    out: dict[str, Any] = {"model": body.get("model"), "messages": messages}
    if out["model"] is None:
        del out["model"]
    tools = []
    for i, tool in enumerate(body.get("tools") or []):
        if tool["type"] == "function":
            tools.append(_chat_function(tool))
        elif tool["type"] == "namespace":
            tools += _namespace_functions(tool, f"tools[{i}]", unsupported)
        else:
            unsupported.append((f"tools[{i}]", f"{tool['type']} tools have no Chat Completions form"))
    names = [tool["function"].get("name") for tool in tools]
    if len(set(names)) < len(names):
        # A chat call names its function only; response.namespaces() tells from the name which one it was.
        unsupported.append(("tools", "function names must be unique across namespaces for Chat Completions"))
    if tools:
        out["tools"] = tools
        if body.get("parallel_tool_calls") is not None:
            out["parallel_tool_calls"] = body["parallel_tool_calls"]
    if body.get("tool_choice") is not None:
        choice = _chat_tool_choice(body["tool_choice"])
        if choice is None:
            unsupported.append(("tool_choice", f"tool_choice {body['tool_choice'].get('type')!r} has no Chat "
                                               "Completions form"))
        else:
            out["tool_choice"] = choice
    if body.get("max_output_tokens") is not None:
        out["max_completion_tokens"] = body["max_output_tokens"]
    for name in _SAME_NAME:
        if body.get(name) is not None:
            out[name] = body[name]
    text = body.get("text") or {}
    form = text.get("format") or {}
    if form.get("type") == "json_schema":
        schema = {k: form[k] for k in ("name", "schema", "strict", "description") if form.get(k) is not None}
        out["response_format"] = {"type": "json_schema", "json_schema": schema}
    elif form.get("type") == "json_object":
        out["response_format"] = {"type": "json_object"}
    if text.get("verbosity") is not None:
        out["verbosity"] = text["verbosity"]
    dropped = [f"text.{k}" for k, v in text.items() if k not in ("format", "verbosity") and v is not None]
    reasoning = body.get("reasoning") or {}
    if reasoning.get("effort") is not None:
        out["reasoning_effort"] = reasoning["effort"]
    dropped += [f"reasoning.{k}" for k, v in reasoning.items() if k != "effort" and v is not None]
    if body.get("stream"):
        # Chat Completions reports usage in a last chunk only when asked; response.completed needs it.
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}
    for name in ("conversation", "prompt"):
        if body.get(name) is not None:
            unsupported.append((name, f"'{name}' is not supported by this proxy"))
    dropped += [name for name, value in body.items()
                if name not in _CARRIED and name not in PROXY_FIELDS and name not in ("conversation", "prompt")
                and value is not None and value is not False]
    return ChatForm(out, dropped, unsupported)


def _chat_function(tool: dict[str, Any]) -> dict[str, Any]:
    function = {k: tool[k] for k in ("name", "description", "parameters", "strict") if tool.get(k) is not None}
    return {"type": "function", "function": function}


def _namespace_functions(tool: dict[str, Any], at: str, unsupported: list[tuple[str, str]]) -> list[dict[str, Any]]:
    """A namespace tool's functions as plain chat functions (Codex CLI groups its sub-agent tools this way)."""
    inner = tool.get("tools")
    if not isinstance(tool.get("name"), str) or not isinstance(inner, list):
        unsupported.append((at, "a namespace tool needs a name and an array of tools"))
        return []
    functions = []
    for j, function in enumerate(inner):
        if isinstance(function, dict) and function.get("type") == "function" and isinstance(function.get("name"), str):
            functions.append(_chat_function(function))
        else:
            kind = function.get("type") if isinstance(function, dict) else None
            unsupported.append((f"{at}.tools[{j}]", f"{kind} tools in a namespace have no Chat Completions form"))
    return functions


def _chat_tool_choice(choice: str | dict[str, Any]) -> str | dict[str, Any] | None:
    if isinstance(choice, str):
        return choice
    if choice["type"] == "function":
        return {"type": "function", "function": {"name": choice["name"]}}
    if choice["type"] == "allowed_tools":
        tools = [{"type": "function", "function": {"name": tool.get("name")}}
                 for tool in choice["tools"] if isinstance(tool, dict) and tool.get("type") == "function"]
        return {"type": "allowed_tools", "allowed_tools": {"mode": choice["mode"], "tools": tools}}
    return None


def _chat_messages(items: list[dict[str, Any]], unsupported: list[tuple[str, str]]) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    # The assistant message that function_call items join: Chat Completions puts a turn's calls on one message.
    assistant: dict[str, Any] | None = None
    for i, item in enumerate(items):
        at = f"input[{i}]"
        kind = item_type(item)
        if kind == "message" and item["role"] == "assistant":
            assistant = _assistant_message(item["content"])
            messages.append(assistant)
            continue
        if kind == "function_call":
            if assistant is None:
                assistant = {"role": "assistant", "content": None}
                messages.append(assistant)
            call = {"id": item["call_id"], "type": "function",
                    "function": {"name": item["name"], "arguments": item["arguments"]}}
            assistant.setdefault("tool_calls", []).append(call)
            continue
        if kind == "reasoning":
            continue  # a model's own reasoning has no Chat Completions form; it only helps native upstreams
        assistant = None
        if kind == "message":
            content = _chat_content(item["content"], f"{at}.content", unsupported)
            messages.append({"role": item["role"], "content": content})
        elif kind == "function_call_output":
            output = _chat_content(item["output"], f"{at}.output", unsupported, text_only=True)
            messages.append({"role": "tool", "tool_call_id": item["call_id"], "content": output})
        elif kind == "item_reference":
            unsupported.append((at, "item references cannot be resolved; send the item itself"))
        else:
            unsupported.append((at, f"{kind} items have no Chat Completions form"))
    return messages


def _assistant_message(content: str | list[dict[str, Any]]) -> dict[str, Any]:
    if isinstance(content, str):
        return {"role": "assistant", "content": content}
    text = "".join(part.get("text", "") for part in content if part["type"] in ("output_text", "input_text"))
    message: dict[str, Any] = {"role": "assistant", "content": text}
    refusal = "".join(part["refusal"] for part in content if part["type"] == "refusal")
    if refusal:
        message["refusal"] = refusal
    return message


def _chat_content(content: str | list[dict[str, Any]], at: str, unsupported: list[tuple[str, str]],
                  text_only: bool = False) -> str | list[dict[str, Any]]:
    if isinstance(content, str):
        return content
    parts: list[dict[str, Any]] = []
    for j, part in enumerate(content):
        kind = part["type"]
        if kind in ("input_text", "output_text"):
            parts.append({"type": "text", "text": part["text"]})
        elif kind == "refusal":
            parts.append({"type": "text", "text": part["refusal"]})
        elif text_only:
            unsupported.append((f"{at}[{j}]", f"{kind} parts in tool output have no Chat Completions form"))
        elif kind == "input_image" and part.get("image_url") is not None:
            image = {"url": part["image_url"]}
            if part.get("detail") is not None:
                image["detail"] = part["detail"]
            parts.append({"type": "image_url", "image_url": image})
        elif kind == "input_file" and (part.get("file_data") is not None or part.get("file_id") is not None):
            file = {k: part[k] for k in ("file_data", "file_id", "filename") if part.get(k) is not None}
            parts.append({"type": "file", "file": file})
        else:
            unsupported.append((f"{at}[{j}]", f"{kind} by file_id or URL has no Chat Completions form"))
    if len(parts) == 1 and parts[0]["type"] == "text":
        text: str = parts[0]["text"]
        return text
    return parts


def input_items(body: dict[str, Any]) -> list[dict[str, Any]]:
    """This request's input as ``GET /v1/responses/{id}/input_items`` lists it: every item with an id."""
    source = body["input"]
    if isinstance(source, str):
        return [{"id": new_id("msg"), "type": "message", "role": "user", "status": "completed",
                 "content": [{"type": "input_text", "text": source}]}]
    return [_listed(item) for item in source]


def _listed(item: dict[str, Any]) -> dict[str, Any]:
    kind = item_type(item)
    out = {**item, "type": kind}
    if kind == "item_reference":
        return out
    prefix = {"message": "msg", "function_call": "fc", "function_call_output": "fc", "reasoning": "rs"}
    out["id"] = item.get("id") or new_id(prefix.get(kind, "item"))
    if kind == "message":
        assistant = item["role"] == "assistant"
        content = item["content"]
        if isinstance(content, str):
            content = [{"type": "input_text", "text": content}]
        out["content"] = [_listed_part(part, assistant) for part in content]
    if kind == "function_call_output" and isinstance(item["output"], list):
        out["output"] = [_listed_part(part, False) for part in item["output"]]
    if kind == "reasoning":
        out.setdefault("summary", [])
    if kind in ("message", "function_call", "function_call_output", "reasoning"):
        out["status"] = item.get("status") or "completed"
    return out


def _listed_part(part: dict[str, Any], assistant: bool) -> dict[str, Any]:
    """A content part as the API lists it: assistant text is output_text with annotations, other text
    input_text, and images carry their detail."""
    kind = part["type"]
    if kind in ("input_text", "output_text", "refusal"):
        text = part["refusal"] if kind == "refusal" else part["text"]
        if assistant:
            return part if kind == "refusal" else {"annotations": [], **part, "type": "output_text"}
        return {"type": "input_text", "text": text}
    if kind == "input_image":
        return {"detail": "auto", **part}
    return part


# Chat Completions -> Responses

#: The Chat Completions request fields `chat_to_responses_request` carries over; any other is dropped.
CHAT_FIELDS_FOR_RESPONSES = frozenset({
    "model", "messages", "n", "tools", "tool_choice", "response_format", "max_tokens", "max_completion_tokens",
    "reasoning_effort", "verbosity", "parallel_tool_calls", "stream", "stream_options", "store", *_SAME_NAME,
})


def chat_to_responses_request(chat: dict[str, Any], model_id: str) -> dict[str, Any]:
    """A Responses request for a Chat Completions body, for chat clients on a Responses-only upstream."""
    chat = expect_object(chat, "body")
    instructions: list[str] = []
    items: list[dict[str, Any]] = []
    for i, message in enumerate(expect_array(chat.get("messages"), "messages")):
        at = f"messages[{i}]"
        message = expect_object(message, at)
        role = message.get("role")
        if role in ("system", "developer") and not items:
            instructions.append(content_text(message.get("content")))
        elif role in ("system", "developer", "user"):
            items.append({"type": "message", "role": role,
                          "content": _input_parts(message.get("content"), f"{at}.content")})
        elif role == "assistant":
            items += _assistant_items(message, at)
        elif role == "tool":
            call_id = expect_string(message.get("tool_call_id"), f"{at}.tool_call_id")
            items.append({"type": "function_call_output", "call_id": call_id,
                          "output": content_text(message.get("content"))})
        else:
            raise TranslationError(f"{at}.role", f"role {role!r} has no Responses form")
    if chat.get("n") not in (None, 1):
        raise TranslationError("n", "the Responses API returns a single choice")
    out: dict[str, Any] = {"model": model_id, "input": items, "store": False}
    if instructions:
        out["instructions"] = "\n\n".join(instructions)
    chat_tools = expect_array(chat.get("tools") or [], "tools")
    tools = [_responses_tool(tool, f"tools[{j}]") for j, tool in enumerate(chat_tools)]
    if tools:
        out["tools"] = tools
    if chat.get("tool_choice") is not None:
        out["tool_choice"] = _responses_tool_choice(chat["tool_choice"])
    if chat.get("parallel_tool_calls") is not None:
        out["parallel_tool_calls"] = chat["parallel_tool_calls"]
    limit = chat.get("max_completion_tokens", chat.get("max_tokens"))
    if limit is not None:
        out["max_output_tokens"] = limit
    for name in _SAME_NAME:
        if chat.get(name) is not None:
            out[name] = chat[name]
    text: dict[str, Any] = {}
    form = chat.get("response_format")
    if form is not None:
        form = expect_object(form, "response_format")
        if form.get("type") == "json_schema":
            schema = expect_object(form.get("json_schema"), "response_format.json_schema")
            text["format"] = {"type": "json_schema", **schema}
        elif form.get("type") in ("json_object", "text"):
            text["format"] = {"type": form["type"]}
        else:
            raise TranslationError("response_format.type", f"unknown type {form.get('type')!r}")
    if chat.get("verbosity") is not None:
        text["verbosity"] = chat["verbosity"]
    if text:
        out["text"] = text
    if chat.get("reasoning_effort") is not None:
        out["reasoning"] = {"effort": chat["reasoning_effort"]}
    if chat.get("stream"):
        out["stream"] = True
    return out


def _input_parts(content: object, at: str) -> str | list[dict[str, Any]]:
    if isinstance(content, str):
        return content
    parts: list[dict[str, Any]] = []
    for j, part in enumerate(expect_array(content, at)):
        part = expect_object(part, f"{at}[{j}]")
        kind = part.get("type")
        if kind == "text":
            parts.append({"type": "input_text", "text": expect_string(part.get("text"), f"{at}[{j}].text")})
        elif kind == "image_url":
            image = expect_object(part.get("image_url"), f"{at}[{j}].image_url")
            url = expect_string(image.get("url"), f"{at}[{j}].image_url.url")
            parts.append({"type": "input_image", "image_url": url, "detail": image.get("detail") or "auto"})
        elif kind == "file":
            file = expect_object(part.get("file"), f"{at}[{j}].file")
            parts.append({"type": "input_file", **{k: v for k, v in file.items() if v is not None}})
        else:
            raise TranslationError(f"{at}[{j}].type", f"part type {kind!r} has no Responses form")
    return parts


def _assistant_items(message: dict[str, Any], at: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    content = message.get("content")
    text = content_text(content)
    if text:
        items.append({"type": "message", "role": "assistant", "content": text})
    if isinstance(message.get("refusal"), str) and message["refusal"]:
        items.append({"type": "message", "role": "assistant",
                      "content": [{"type": "refusal", "refusal": message["refusal"]}]})
    for j, call in enumerate(expect_array(message.get("tool_calls") or [], f"{at}.tool_calls")):
        call = expect_object(call, f"{at}.tool_calls[{j}]")
        function = expect_object(call.get("function"), f"{at}.tool_calls[{j}].function")
        items.append({
            "type": "function_call",
            "call_id": expect_string(call.get("id"), f"{at}.tool_calls[{j}].id"),
            "name": expect_string(function.get("name"), f"{at}.tool_calls[{j}].function.name"),
            "arguments": expect_string(function.get("arguments", ""), f"{at}.tool_calls[{j}].function.arguments"),
        })
    return items


def _responses_tool(tool: object, at: str) -> dict[str, Any]:
    tool = expect_object(tool, at)
    if tool.get("type") != "function":
        raise TranslationError(f"{at}.type", f"tool type {tool.get('type')!r} has no Responses form")
    function = expect_object(tool.get("function"), f"{at}.function")
    out: dict[str, Any] = {"type": "function", "name": expect_string(function.get("name"), f"{at}.function.name")}
    if function.get("description") is not None:
        out["description"] = function["description"]
    out["parameters"] = function.get("parameters") or {"type": "object", "properties": {}}
    # The Responses API makes function tools strict unless told; Chat Completions does the opposite.
    out["strict"] = bool(function.get("strict"))
    return out


def _responses_tool_choice(choice: object) -> str | dict[str, Any]:
    if isinstance(choice, str):
        return choice
    choice = expect_object(choice, "tool_choice")
    if choice.get("type") == "function":
        function = expect_object(choice.get("function"), "tool_choice.function")
        return {"type": "function", "name": expect_string(function.get("name"), "tool_choice.function.name")}
    if choice.get("type") == "allowed_tools":
        allowed = expect_object(choice.get("allowed_tools"), "tool_choice.allowed_tools")
        tools = [{"type": "function", "name": as_object(tool.get("function")).get("name")}
                 for tool in expect_array(allowed.get("tools"), "tool_choice.allowed_tools.tools")
                 if isinstance(tool, dict)]
        return {"type": "allowed_tools", "mode": allowed.get("mode", "auto"), "tools": tools}
    raise TranslationError("tool_choice.type", f"tool_choice type {choice.get('type')!r} has no Responses form")
