"""Responses API request bodies checked as the API defines them: a fault is a 400 naming its path."""

from __future__ import annotations

from typing import Any

from core.errors import RequestError
from core.validation import json_type

# Every input item type the API knows (openai SDK's ResponseInputItemParam); others are refused as unknown.
ITEM_TYPES = frozenset({
    "message", "function_call", "function_call_output", "reasoning", "item_reference", "file_search_call",
    "computer_call", "computer_call_output", "web_search_call", "tool_search_call", "tool_search_output",
    "additional_tools", "configuration_update", "compaction", "image_generation_call", "code_interpreter_call",
    "local_shell_call", "local_shell_call_output", "shell_call", "shell_call_output", "apply_patch_call",
    "apply_patch_call_output", "mcp_list_tools", "mcp_approval_request", "mcp_approval_response", "mcp_call",
    "custom_tool_call", "custom_tool_call_output", "compaction_trigger", "program", "program_output",
})
_ROLES = frozenset({"user", "assistant", "system", "developer"})
_PART_TYPES = frozenset({"input_text", "input_image", "output_text", "refusal", "input_file"})
_FORMATS = frozenset({"text", "json_object", "json_schema"})
_TOOL_CHOICES = frozenset({"auto", "none", "required"})

_NUMBER = (int, float)
_FIELDS: dict[str, tuple[tuple[type, ...], str]] = {
    "model": ((str,), "a string"),
    "instructions": ((str,), "a string"),
    "tools": ((list,), "an array"),
    "tool_choice": ((str, dict), "a string or an object"),
    "parallel_tool_calls": ((bool,), "a boolean"),
    "max_output_tokens": ((int,), "an integer"),
    "temperature": (_NUMBER, "a number"),
    "top_p": (_NUMBER, "a number"),
    "metadata": ((dict,), "an object"),
    "text": ((dict,), "an object"),
    "reasoning": ((dict,), "an object"),
    "store": ((bool,), "a boolean"),
    "stream": ((bool,), "a boolean"),
    "background": ((bool,), "a boolean"),
    "previous_response_id": ((str,), "a string"),
    "user": ((str,), "a string"),
    "include": ((list,), "an array"),
    "truncation": ((str,), "a string"),
}


def _fail(param: str, message: str, code: str = "request.invalid_type") -> RequestError:
    return RequestError(400, message, code, param)


def _check(value: Any, types: tuple[type, ...], expected: str, param: str) -> None:
    # bool is an int in Python; a JSON true is never a valid integer or number here.
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
        raise _fail(param, f"'{param}' must be {expected}, got {json_type(value)}")


def _optional(obj: dict[str, Any], key: str, types: tuple[type, ...], expected: str, at: str) -> None:
    if obj.get(key) is not None:
        _check(obj[key], types, expected, f"{at}.{key}")


def _required(obj: dict[str, Any], key: str, types: tuple[type, ...], expected: str, at: str) -> None:
    if obj.get(key) is None:
        raise _fail(f"{at}.{key}", f"'{at}.{key}' is required", "request.missing_field")
    _check(obj[key], types, expected, f"{at}.{key}")


def _one_of(value: str, allowed: frozenset[str], param: str) -> None:
    if value not in allowed:
        raise _fail(param, f"'{param}' must be one of {sorted(allowed)}, got {value!r}", "request.invalid_value")


def validate_responses(body: Any) -> dict[str, Any]:
    """The parsed body of a ``POST /v1/responses``, checked as the API defines it; unknown fields pass."""
    if not isinstance(body, dict):
        raise RequestError(400, "request body must be a JSON object", "request.invalid_json")
    for name, (types, expected) in _FIELDS.items():
        if body.get(name) is not None:
            _check(body[name], types, expected, name)
    if body.get("input") is None:
        raise _fail("input", "'input' is required", "request.missing_field")
    _check(body["input"], (str, list), "a string or an array", "input")
    if isinstance(body["input"], list):
        for i, item in enumerate(body["input"]):
            _item(item, f"input[{i}]")
    for i, tool in enumerate(body.get("tools") or []):
        _tool(tool, f"tools[{i}]")
    _tool_choice(body.get("tool_choice"))
    for key, value in (body.get("metadata") or {}).items():
        _check(value, (str,), "a string", f"metadata.{key}")
    for i, value in enumerate(body.get("include") or []):
        _check(value, (str,), "a string", f"include[{i}]")
    if body.get("truncation") is not None:
        _one_of(body["truncation"], frozenset({"auto", "disabled"}), "truncation")
    if body.get("max_output_tokens") is not None and body["max_output_tokens"] < 1:
        raise _fail("max_output_tokens", "'max_output_tokens' must be at least 1", "request.invalid_value")
    text = body.get("text") or {}
    _optional(text, "format", (dict,), "an object", "text")
    _optional(text, "verbosity", (str,), "a string", "text")
    if text.get("format") is not None:
        _text_format(text["format"])
    reasoning = body.get("reasoning") or {}
    for key in ("effort", "summary", "generate_summary"):
        _optional(reasoning, key, (str,), "a string", "reasoning")
    return body


def _text_format(form: dict[str, Any]) -> None:
    _required(form, "type", (str,), "a string", "text.format")
    _one_of(form["type"], _FORMATS, "text.format.type")
    if form["type"] == "json_schema":
        _required(form, "name", (str,), "a string", "text.format")
        _required(form, "schema", (dict,), "an object", "text.format")
        _optional(form, "strict", (bool,), "a boolean", "text.format")
        _optional(form, "description", (str,), "a string", "text.format")


def _tool(tool: Any, at: str) -> None:
    _check(tool, (dict,), "an object", at)
    _required(tool, "type", (str,), "a string", at)
    if tool["type"] == "function":
        _required(tool, "name", (str,), "a string", at)
        _optional(tool, "description", (str,), "a string", at)
        _optional(tool, "parameters", (dict,), "an object", at)
        _optional(tool, "strict", (bool,), "a boolean", at)


def _tool_choice(choice: Any) -> None:
    if isinstance(choice, str):
        _one_of(choice, _TOOL_CHOICES, "tool_choice")
    elif isinstance(choice, dict):
        _required(choice, "type", (str,), "a string", "tool_choice")
        if choice["type"] == "function":
            _required(choice, "name", (str,), "a string", "tool_choice")
        elif choice["type"] == "allowed_tools":
            _required(choice, "mode", (str,), "a string", "tool_choice")
            _required(choice, "tools", (list,), "an array", "tool_choice")


def item_type(item: dict[str, Any]) -> Any:
    """An input item's type; the API lets messages and item references leave it out."""
    if item.get("type") is not None:
        return item["type"]
    return "item_reference" if "role" not in item and "id" in item else "message"


def _item(item: Any, at: str) -> None:
    _check(item, (dict,), "an object", at)
    kind = item_type(item)
    _check(kind, (str,), "a string", f"{at}.type")
    if kind not in ITEM_TYPES:
        raise _fail(f"{at}.type", f"'{at}.type' {kind!r} is not an input item type", "request.unsupported_item")
    _optional(item, "id", (str,), "a string", at)
    if kind == "message":
        _required(item, "role", (str,), "a string", at)
        _one_of(item["role"], _ROLES, f"{at}.role")
        _required(item, "content", (str, list), "a string or an array", at)
        if isinstance(item["content"], list):
            for j, part in enumerate(item["content"]):
                _part(part, f"{at}.content[{j}]")
    elif kind == "function_call":
        for key in ("call_id", "name", "arguments"):
            _required(item, key, (str,), "a string", at)
    elif kind == "function_call_output":
        _required(item, "call_id", (str,), "a string", at)
        _required(item, "output", (str, list), "a string or an array", at)
        if isinstance(item["output"], list):
            for j, part in enumerate(item["output"]):
                _part(part, f"{at}.output[{j}]")
    elif kind == "item_reference":
        _required(item, "id", (str,), "a string", at)
    elif kind == "reasoning":
        _optional(item, "summary", (list,), "an array", at)


def _part(part: Any, at: str) -> None:
    _check(part, (dict,), "an object", at)
    _required(part, "type", (str,), "a string", at)
    _one_of(part["type"], _PART_TYPES, f"{at}.type")
    kind = part["type"]
    if kind in ("input_text", "output_text"):
        _required(part, "text", (str,), "a string", at)
    elif kind == "refusal":
        _required(part, "refusal", (str,), "a string", at)
    elif kind == "input_image":
        for key in ("image_url", "file_id", "detail"):
            _optional(part, key, (str,), "a string", at)
        if part.get("image_url") is None and part.get("file_id") is None:
            raise _fail(f"{at}.image_url", f"'{at}' needs image_url or file_id", "request.missing_field")
    else:
        for key in ("file_id", "file_data", "file_url", "filename"):
            _optional(part, key, (str,), "a string", at)
