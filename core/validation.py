"""Type checks on the fields of chat requests the proxy relies on: a wrong type is a 400 naming the field."""

from __future__ import annotations

from typing import Any

from core.errors import RequestError

_NUMBER = (int, float)
_OPENAI_FIELDS: dict[str, tuple[tuple[type, ...], str]] = {
    "model": ((str,), "a string"),
    "stream": ((bool,), "a boolean"),
    "stream_options": ((dict,), "an object"),
    "temperature": (_NUMBER, "a number"),
    "top_p": (_NUMBER, "a number"),
    "max_tokens": ((int,), "an integer"),
    "max_completion_tokens": ((int,), "an integer"),
    "n": ((int,), "an integer"),
    "tools": ((list,), "an array"),
    "tool_choice": ((str, dict), "a string or an object"),
    "stop": ((str, list), "a string or an array"),
    "user": ((str,), "a string"),
    "metadata": ((dict,), "an object"),
    "system": ((str, list), "a string or an array"),
}
_ROLES = {
    "openai": frozenset({"system", "developer", "user", "assistant", "tool", "function"}),
    "anthropic": frozenset({"user", "assistant"}),
}


def _fail(param: str, message: str) -> RequestError:
    return RequestError(400, message, "request.invalid_type", param)


def validate_chat(body: Any, api: str) -> dict[str, Any]:
    """Check the request is an object with well-typed fields; return it. Unknown fields pass through."""
    if not isinstance(body, dict):
        raise RequestError(400, "request body must be a JSON object", "request.invalid_json")
    for name, (types, expected) in _OPENAI_FIELDS.items():
        value = body.get(name)
        # bool is an int in Python; a JSON true is never a valid integer or number here.
        if value is not None and (not isinstance(value, types) or (isinstance(value, bool) and bool not in types)):
            raise _fail(name, f"'{name}' must be {expected}, got {_json_type(value)}")
    messages = body.get("messages")
    if messages is None:
        raise RequestError(400, "'messages' is required", "request.missing_field", "messages")
    if not isinstance(messages, list) or not messages:
        raise _fail("messages", f"'messages' must be a non-empty array, got {_json_type(messages)}")
    roles = _ROLES[api]
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise _fail(f"messages[{i}]", f"'messages[{i}]' must be an object, got {_json_type(message)}")
        role = message.get("role")
        if not isinstance(role, str):
            raise _fail(f"messages[{i}].role", f"'messages[{i}].role' must be a string, got {_json_type(role)}")
        if role not in roles:
            raise RequestError(400, f"'messages[{i}].role' must be one of {sorted(roles)}, got {role!r}",
                               "request.invalid_value", f"messages[{i}].role")
        content = message.get("content")
        if content is not None and not isinstance(content, (str, list)):
            raise _fail(f"messages[{i}].content",
                        f"'messages[{i}].content' must be a string or an array, got {_json_type(content)}")
    if api == "anthropic" and not isinstance(body.get("max_tokens"), int):
        raise RequestError(400, "'max_tokens' is required", "request.missing_field", "max_tokens")
    return body


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"
