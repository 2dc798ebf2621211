"""Request bodies parsed and type-checked on the fields the proxy relies on: a fault is a 400 naming it."""

from __future__ import annotations

import json
import re
from typing import Any

from core.errors import RequestError

# Only a body with a \uD800-\uDFFF escape can decode to a lone surrogate (strict UTF-8 rejects encoded ones).
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
_SURROGATE = re.compile("[\ud800-\udfff]")

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


def parse_body(raw: bytes) -> Any:
    """The JSON value of a request body: strict UTF-8, standard JSON (no NaN), no unpaired surrogate escape.

    A lone surrogate cannot be encoded again, so every filter or translator that re-encodes the body would fail.
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RequestError(400, f"request body is not valid UTF-8 (byte {exc.start})",
                           "request.invalid_unicode") from None
    try:
        body = json.loads(text[1:] if text.startswith("\ufeff") else text, parse_constant=_no_constant)
    except ValueError as exc:
        raise RequestError(400, f"request body is not valid JSON: {exc}", "request.invalid_json") from None
    except RecursionError:
        raise RequestError(400, "request body is nested too deeply", "request.invalid_json") from None
    if b"\\u" in raw and _SURROGATE_ESCAPE.search(raw):
        where = _lone_surrogate(body)
        if where is not None:
            raise RequestError(400, f"'{where or 'body'}' has an unpaired surrogate escape (\\ud800-\\udfff)",
                               "request.invalid_unicode", where or None)
    return body


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


def _lone_surrogate(body: Any) -> str | None:
    """The path of a string holding an unpaired surrogate (a key: its object's path), else None. Iterative."""
    stack: list[tuple[Any, str]] = [(body, "")]
    while stack:
        value, path = stack.pop()
        if isinstance(value, str):
            if _SURROGATE.search(value):
                return path
        elif isinstance(value, dict):
            for key, item in value.items():
                if _SURROGATE.search(key):
                    return path
                stack.append((item, f"{path}.{key}" if path else key))
        elif isinstance(value, list):
            stack.extend((item, f"{path}[{i}]") for i, item in enumerate(value))
    return None


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
