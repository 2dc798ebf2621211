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


def validate_body(body: Any, endpoint: str) -> dict[str, Any]:
    """The parsed body of a request to ``endpoint`` (a flow's ``endpoint``), checked as its API defines it."""
    if endpoint == "messages":
        return validate_chat(body, "anthropic")
    if endpoint == "embeddings":
        return validate_embeddings(body)
    if endpoint == "count_tokens":
        return validate_count_tokens(body)
    return validate_chat(body, "openai")


def validate_chat(body: Any, api: str, *, needs_max_tokens: bool = True) -> dict[str, Any]:
    """Check the request is an object with well-typed fields; return it. Unknown fields pass through."""
    if not isinstance(body, dict):
        raise RequestError(400, "request body must be a JSON object", "request.invalid_json")
    for name, (types, expected) in _OPENAI_FIELDS.items():
        value = body.get(name)
        # bool is an int in Python; a JSON true is never a valid integer or number here.
        if value is not None and (not isinstance(value, types) or (isinstance(value, bool) and bool not in types)):
            raise _fail(name, f"'{name}' must be {expected}, got {json_type(value)}")
    messages = body.get("messages")
    if messages is None:
        raise RequestError(400, "'messages' is required", "request.missing_field", "messages")
    if not isinstance(messages, list) or not messages:
        raise _fail("messages", f"'messages' must be a non-empty array, got {json_type(messages)}")
    # Roles are not checked against a list: the APIs add roles (Anthropic's mid-conversation `system`), a
    # passthrough upstream judges them, and a translation refuses the ones it cannot express.
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise _fail(f"messages[{i}]", f"'messages[{i}]' must be an object, got {json_type(message)}")
        role = message.get("role")
        if not isinstance(role, str):
            raise _fail(f"messages[{i}].role", f"'messages[{i}].role' must be a string, got {json_type(role)}")
        content = message.get("content")
        if content is not None and not isinstance(content, (str, list)):
            raise _fail(f"messages[{i}].content",
                        f"'messages[{i}].content' must be a string or an array, got {json_type(content)}")
    if api == "anthropic" and needs_max_tokens and not isinstance(body.get("max_tokens"), int):
        raise RequestError(400, "'max_tokens' is required", "request.missing_field", "max_tokens")
    return body


def validate_count_tokens(body: Any) -> dict[str, Any]:
    """An Anthropic count_tokens body: a messages request without ``max_tokens`` (counting generates nothing)."""
    return validate_chat(body, "anthropic", needs_max_tokens=False)


_EMBEDDING_FIELDS: dict[str, tuple[tuple[type, ...], str]] = {
    "model": ((str,), "a string"),
    "encoding_format": ((str,), "a string"),
    "dimensions": ((int,), "an integer"),
    "user": ((str,), "a string"),
}
_INPUT_TYPES = "a string, an array of strings, an array of integers or an array of integer arrays"


def validate_embeddings(body: Any) -> dict[str, Any]:
    """An OpenAI embeddings body: ``input`` is text or tokens, one or many, never empty."""
    if not isinstance(body, dict):
        raise RequestError(400, "request body must be a JSON object", "request.invalid_json")
    for name, (types, expected) in _EMBEDDING_FIELDS.items():
        value = body.get(name)
        if value is not None and (not isinstance(value, types) or isinstance(value, bool)):
            raise _fail(name, f"'{name}' must be {expected}, got {json_type(value)}")
    if body.get("encoding_format") not in (None, "float", "base64"):
        raise RequestError(400, f"'encoding_format' must be 'float' or 'base64', got {body['encoding_format']!r}",
                           "request.invalid_value", "encoding_format")
    if body.get("dimensions") is not None and body["dimensions"] < 1:
        raise RequestError(400, f"'dimensions' must be a positive integer, got {body['dimensions']}",
                           "request.invalid_value", "dimensions")
    if "input" not in body or body["input"] is None:
        raise RequestError(400, "'input' is required", "request.missing_field", "input")
    _check_input(body["input"])
    return body


def _check_input(value: Any) -> None:
    if isinstance(value, str):
        if not value:
            raise RequestError(400, "'input' must not be an empty string", "request.invalid_value", "input")
        return
    if not isinstance(value, list):
        raise _fail("input", f"'input' must be {_INPUT_TYPES}, got {json_type(value)}")
    if not value:
        raise RequestError(400, "'input' must not be an empty array", "request.invalid_value", "input")
    # One kind for the whole array, as the first item says: texts, one text's tokens, or many texts' tokens.
    first = value[0]
    if not isinstance(first, (str, list)) and not _is_token(first):
        raise _fail("input[0]", f"'input[0]' must be a string, an integer or an array of integers, "
                                f"got {json_type(first)}")
    kind = str if isinstance(first, str) else list if isinstance(first, list) else int
    for i, item in enumerate(value):
        if kind is list and isinstance(item, list):
            if not item:
                raise RequestError(400, f"'input[{i}]' must not be an empty array", "request.invalid_value",
                                   f"input[{i}]")
            for j, token in enumerate(item):
                if not _is_token(token):
                    raise _fail(f"input[{i}][{j}]", f"'input[{i}][{j}]' must be an integer, got {json_type(token)}")
        elif not (isinstance(item, str) if kind is str else kind is int and _is_token(item)):
            expected = {str: "a string", int: "an integer", list: "an array of integers"}[kind]
            raise _fail(f"input[{i}]", f"'input[{i}]' must be {expected} like 'input[0]', got {json_type(item)}")


def _is_token(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def json_type(value: Any) -> str:
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
