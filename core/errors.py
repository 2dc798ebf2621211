"""Error types and the API error bodies every failure is rendered into."""

from __future__ import annotations

import json
from typing import Any

# OpenAI's error `type` for each status a proxy returns; clients (and the openai SDK) key off these.
_OPENAI_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    408: "timeout_error",
    409: "conflict_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    502: "upstream_error",
    503: "service_unavailable_error",
    504: "timeout_error",
}


class ConfigError(Exception):
    """A config mistake a user can act on: one line per problem, each naming file, YAML path and reason."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


def error_type(status: int) -> str:
    return _OPENAI_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")


def openai_error(status: int, message: str, code: str, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": error_type(status), "param": param, "code": code}}


def openai_error_bytes(status: int, message: str, code: str, param: str | None = None) -> bytes:
    return json.dumps(openai_error(status, message, code, param)).encode()


# Anthropic error types per status, limited to the ones its SDK can parse.
_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    429: "rate_limit_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}
ANTHROPIC_STATUSES = {kind: status for status, kind in _ANTHROPIC_TYPES.items() if status != 529}


def anthropic_error_type(status: int) -> str:
    return _ANTHROPIC_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")


def anthropic_error(status: int, message: str, code: str) -> dict[str, Any]:
    # `code` is outerloop's stable details code; Anthropic's SDK keeps unknown keys on the error body.
    return {"type": "error", "error": {"type": anthropic_error_type(status), "message": message, "code": code}}


def error_body(api: str, status: int, message: str, code: str, param: str | None = None,
               agent: str | None = None) -> bytes:
    """An error in the API shape the client speaks, so its SDK raises its own exception type; on an agent
    listener the failing agent is named (``error.agent``)."""
    body = anthropic_error(status, message, code) if api == "anthropic" else openai_error(status, message, code, param)
    if agent is not None:
        body["error"]["agent"] = agent
    return json.dumps(body).encode()


class RequestError(Exception):
    """A client mistake found by the core (bad JSON, wrong types, too large): becomes a 4xx error body."""

    def __init__(self, status: int, message: str, code: str, param: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.headers = headers or {}
