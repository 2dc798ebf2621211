"""Property tests: for any input, request parsing, the translators, the SSE parser and the config loader answer
with their documented error type (RequestError, TranslationError, ConfigError) or a result, never another
exception; whatever they produce can be written to the wire."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from core.config import Config
from core.errors import ConfigError, RequestError
from core.flow import encode_json
from core.plugins import build_registry
from core.providers.anthropic import TranslationError, anthropic_to_openai_request, openai_to_anthropic_request
from core.providers.anthropic_response import (
    anthropic_to_openai_response,
    openai_to_anthropic_response,
)
from core.providers.anthropic_stream import AnthropicToOpenAIStream, OpenAIToAnthropicStream
from core.sse import EventSplitter, SSEDecoder, encode_event, parse_event
from core.upstream_errors import error_answer
from core.validation import parse_body, validate_chat

# Keys and values the code under test looks at, so random documents reach past the first type check.
WORDS = [
    "messages", "role", "content", "type", "text", "image_url", "url", "file", "file_data", "source", "data",
    "media_type", "tool_calls", "tool_call_id", "tool_use_id", "function", "arguments", "name", "id", "index",
    "input", "tools", "tool_choice", "parameters", "input_schema", "description", "system", "model", "stream",
    "max_tokens", "max_completion_tokens", "temperature", "top_p", "stop", "stop_sequences", "n", "user",
    "metadata", "user_id", "choices", "message", "delta", "finish_reason", "stop_reason", "usage", "error",
    "code", "refusal", "cache_control", "disable_parallel_tool_use", "parallel_tool_calls", "prompt_tokens",
    "completion_tokens", "input_tokens", "output_tokens", "cache_read_input_tokens", "prompt_tokens_details",
    "cached_tokens", "content_block", "partial_json", "title", "stream_options", "include_usage",
    "user", "assistant", "system", "developer", "tool", "function", "text", "image", "document", "tool_use",
    "tool_result", "thinking", "base64", "text_delta", "input_json_delta", "message_start", "message_delta",
    "message_stop", "content_block_start", "content_block_delta", "content_block_stop", "ping", "auto", "any",
    "none", "required", "end_turn", "tool_calls", "stop", "length", "api_error", "overloaded_error",
    "data:image/png;base64,AAAA", "https://x.example/a.png", "{}", '{"a": 1}', "[", "\ud800", "fn:0",
]


def json_strategies(words: list[str]) -> tuple[st.SearchStrategy[str], st.SearchStrategy[Any],
                                               st.SearchStrategy[Any], st.SearchStrategy[dict[str, Any]]]:
    """(keys, scalars, any value, objects) of random JSON-like documents, NaN and lone surrogates included, whose
    keys and strings are often ``words``."""
    keys = st.sampled_from(words) | st.text(max_size=4)
    scalars = (st.none() | st.booleans() | st.integers(-2, 2**70) | st.floats() | st.sampled_from(words)
               | st.text(max_size=8))
    values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                          | st.dictionaries(keys, inner, max_size=6), max_leaves=40)
    return keys, scalars, values, st.dictionaries(keys, values, max_size=8)


KEYS, SCALARS, JSON, OBJECTS = json_strategies(WORDS)
# Standard JSON only (what a client can send): no NaN, no lone surrogates.
STRICT_SCALARS = (st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
                  | st.text(max_size=8))
STRICT_JSON = st.recursive(STRICT_SCALARS, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=6), inner, max_size=6), max_leaves=30)
EXAMPLES = settings(max_examples=120)


def _chat_like(api: str) -> st.SearchStrategy[dict[str, Any]]:
    """Bodies with a messages array of role-bearing objects, the rest random."""
    roles = ["user", "assistant"] if api == "anthropic" else ["system", "developer", "user", "assistant", "tool"]
    message = st.fixed_dictionaries({"role": st.sampled_from(roles)}, optional={"content": JSON, "tool_calls": JSON,
                                                                                "tool_call_id": JSON})
    return st.fixed_dictionaries({"messages": st.lists(message, min_size=1, max_size=4)},
                                 optional={k: JSON for k in ("model", "max_tokens", "tools", "tool_choice", "stop",
                                                             "system", "metadata", "temperature", "stream")})


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


# --- the request body ------------------------------------------------------------------------------------------

@EXAMPLES
@given(st.binary(max_size=200) | STRICT_JSON.map(lambda v: json.dumps(v).encode()))
def test_parse_body_any_bytes(raw: bytes) -> None:
    try:
        body = parse_body(raw)
    except RequestError as exc:
        assert exc.status == 400 and exc.code.startswith("request.")
        return
    encode_json(body).decode("utf-8")  # what passed can be written back as strict UTF-8


@EXAMPLES
@given(STRICT_JSON, st.sampled_from(["\ud800", "\udfff", "\uDBFF", "a\udc00b"]), st.booleans())
def test_lone_surrogate_escapes_are_refused_wherever_they_are(value: Any, bad: str, as_key: bool) -> None:
    body = {bad: value} if as_key else {"messages": [{"role": "user", "content": [value, bad]}]}
    with pytest.raises(RequestError) as caught:
        parse_body(json.dumps(body).encode())
    assert caught.value.code == "request.invalid_unicode"
    # Paired surrogate escapes are a character outside the BMP and pass.
    good = json.dumps({"messages": [{"role": "user", "content": "\U0001f600"}], "x": value}).encode()
    assert b"\\ud83d\\ude00" in good and parse_body(good)["messages"][0]["content"] == "\U0001f600"


@settings(max_examples=150)
@given(st.sampled_from(["openai", "anthropic"]), JSON | _chat_like("openai") | _chat_like("anthropic"))
def test_validate_chat_any_value(api: str, body: Any) -> None:
    try:
        assert validate_chat(body, api) is body
    except RequestError as exc:
        assert exc.status == 400 and exc.code.startswith("request.")


# --- the translators -------------------------------------------------------------------------------------------

def _translated(translate: Any, body: Any) -> None:
    try:
        out = translate(body, "m")
    except TranslationError as exc:
        assert exc.field
        return
    encode_json(out)


@EXAMPLES
@given(OBJECTS | _chat_like("openai"))
def test_openai_to_anthropic_request(body: dict[str, Any]) -> None:
    _translated(openai_to_anthropic_request, body)


@EXAMPLES
@given(OBJECTS | _chat_like("anthropic"))
def test_anthropic_to_openai_request(body: dict[str, Any]) -> None:
    _translated(anthropic_to_openai_request, body)


CONTENT_BLOCK = st.fixed_dictionaries({"type": st.sampled_from(["text", "tool_use", "thinking"])},
                                      optional={"text": JSON, "id": JSON, "name": JSON, "input": JSON})
ANTHROPIC_RESPONSE = st.fixed_dictionaries(
    {"content": st.lists(CONTENT_BLOCK, max_size=3) | JSON},
    optional={"id": JSON, "stop_reason": JSON, "usage": JSON | st.dictionaries(KEYS, SCALARS)})
OPENAI_RESPONSE = st.fixed_dictionaries(
    {"choices": st.lists(st.fixed_dictionaries({"message": OBJECTS}, optional={"finish_reason": JSON}),
                         max_size=2) | JSON},
    optional={"id": JSON, "usage": JSON | st.dictionaries(KEYS, SCALARS)})


@EXAMPLES
@given(OBJECTS | ANTHROPIC_RESPONSE)
def test_anthropic_to_openai_response(body: dict[str, Any]) -> None:
    _translated(anthropic_to_openai_response, body)


@EXAMPLES
@given(OBJECTS | OPENAI_RESPONSE)
def test_openai_to_anthropic_response(body: dict[str, Any]) -> None:
    _translated(openai_to_anthropic_response, body)


@EXAMPLES
@given(st.binary(max_size=100) | JSON.map(lambda v: encode_json({"error": v})), st.integers(100, 599))
def test_upstream_errors_become_the_clients_error_shape(body: bytes, status: int) -> None:
    for api in ("openai", "anthropic"):
        for content_type in ("application/json", "text/html", None):
            out = json.loads(error_answer(api, status, content_type, body).decode("utf-8"))
            assert out["error"]["code"] == f"upstream.http_{status}"


ANTHROPIC_EVENT = st.fixed_dictionaries({"type": st.sampled_from(
    ["message_start", "content_block_start", "content_block_delta", "content_block_stop", "message_delta",
     "message_stop", "ping", "error"])}, optional={"index": JSON, "message": JSON, "content_block": JSON | OBJECTS,
                                                   "delta": JSON | OBJECTS, "usage": JSON, "error": JSON})
OPENAI_DELTA = st.fixed_dictionaries({}, optional={
    "content": JSON, "refusal": JSON,
    "tool_calls": st.lists(st.fixed_dictionaries({}, optional={"index": JSON, "id": JSON, "function": JSON | OBJECTS}),
                           max_size=3) | JSON})
OPENAI_CHUNK = st.fixed_dictionaries({}, optional={
    "id": JSON, "usage": JSON, "error": JSON,
    "choices": st.lists(st.fixed_dictionaries({}, optional={"index": JSON, "delta": OPENAI_DELTA | JSON,
                                                            "finish_reason": JSON}), max_size=2) | JSON})


def _sse(events: list[tuple[str | None, Any]]) -> bytes:
    out = b""
    for name, payload in events:
        out += payload if isinstance(payload, bytes) else encode_event(payload, name)
    return out


def _run(stream: Any, pieces: list[bytes]) -> None:
    try:
        out = b"".join(stream.feed(piece) for piece in pieces) + stream.close()
    except TranslationError:
        return
    out.decode("utf-8")


GARBAGE = st.binary(max_size=30) | st.sampled_from([b"data: [DONE]\n\n", b"data: {\n\n", b"data: 1\n\n", b"\r\n\r\n"])


@EXAMPLES
@given(st.lists(st.tuples(st.sampled_from([None, "message_start", "content_block_delta", "error", "ping"]),
                          ANTHROPIC_EVENT | JSON | GARBAGE), max_size=8),
       st.lists(st.integers(0, 10_000), max_size=6), st.booleans())
def test_anthropic_to_openai_stream(events: list[tuple[str | None, Any]], cuts: list[int], usage: bool) -> None:
    _run(AnthropicToOpenAIStream("m", usage), _split(_sse(events), cuts))


@EXAMPLES
@given(st.lists(st.tuples(st.none(), OPENAI_CHUNK | JSON | GARBAGE), max_size=8),
       st.lists(st.integers(0, 10_000), max_size=6))
def test_openai_to_anthropic_stream(events: list[tuple[str | None, Any]], cuts: list[int]) -> None:
    _run(OpenAIToAnthropicStream("m"), _split(_sse(events), cuts))


# --- the SSE parser --------------------------------------------------------------------------------------------

SSE_BYTES = st.lists(st.sampled_from([b"data: x", b"event: e", b": c", b"data:", b"\n", b"\r", b"\r\n", b" ",
                                      b"\xff", b"\xc3\xa9", b"\x85", b"\x0b", b"\x1c", "\u2028".encode()])
                     | st.binary(max_size=6), max_size=30).map(b"".join)


@settings(max_examples=300)
@given(SSE_BYTES | st.binary(max_size=200), st.lists(st.integers(0, 10_000), max_size=8))
def test_sse_any_split_gives_the_same_events(data: bytes, cuts: list[int]) -> None:
    def split_events(pieces: list[bytes]) -> list[bytes]:
        splitter = EventSplitter()
        events = [e for piece in pieces for e in splitter.feed(piece)]
        return events + ([rest] if (rest := splitter.close()) else [])

    whole = split_events([data])
    assert b"".join(whole) == data
    assert split_events(_split(data, cuts)) == whole
    assert split_events([data[i:i + 1] for i in range(len(data))]) == whole
    for event in whole:
        name, value = parse_event(event)
        assert name is None or ("\n" not in name and "\r" not in name)

    def decoded(pieces: list[bytes]) -> list[tuple[str, str]]:
        decoder = SSEDecoder()
        return [pair for piece in pieces for pair in decoder.feed(piece)] + decoder.close()

    assert decoded(_split(data, cuts)) == decoded([data])


@EXAMPLES
@given(JSON, st.none() | st.text(alphabet=st.characters(exclude_characters="\r\n"), max_size=8))
def test_sse_encode_then_parse_round_trips(value: Any, name: str | None) -> None:
    event = encode_event(value, name)
    event.decode("utf-8")
    parsed_name, data = parse_event(event)
    assert data is not None and json.loads(data) == json.loads(encode_json(value))
    assert parsed_name == (name or None)


# --- the config loader -----------------------------------------------------------------------------------------

REGISTRY = build_registry(entry_points=False)
CONFIG_WORDS = ["listeners", "model_providers", "name", "port", "address", "filters", "config", "model", "base_url",
                "default", "limits", "routing", "model_aliases", "routing_preferences", "auth", "rate_cap",
                "session", "guardrails", "http_filter", "router", "keys", "caps", "api", "provider",
                "max_request_body_bytes", "backend", "url", "$HOME", "${NOPE_NOT_SET}", "$$", "models", "test/m"]
CONFIG_KEYS = st.sampled_from(CONFIG_WORDS) | st.text(max_size=4) | st.integers(-1, 3) | st.none() | st.booleans()
CONFIG_SCALARS = (st.none() | st.booleans() | st.integers(-1, 70_000) | st.floats() | st.sampled_from(CONFIG_WORDS)
                  | st.text(max_size=6))
CONFIG = st.recursive(CONFIG_SCALARS, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(CONFIG_KEYS, inner, max_size=5), max_leaves=30)
CONFIG_LIKE = st.fixed_dictionaries({}, optional={
    "listeners": st.lists(st.fixed_dictionaries({"name": CONFIG, "port": CONFIG},
                                                optional={"filters": st.lists(
                                                    st.fixed_dictionaries({"name": st.sampled_from(CONFIG_WORDS)},
                                                                          optional={"config": CONFIG}) | CONFIG,
                                                    max_size=3) | CONFIG}), max_size=2) | CONFIG,
    "model_providers": st.lists(st.dictionaries(st.sampled_from(CONFIG_WORDS), CONFIG), max_size=2) | CONFIG,
    "model_aliases": CONFIG, "limits": CONFIG, "routing": CONFIG, "routing_preferences": CONFIG})


def _loaded(path: Path) -> None:
    from core.config_loader import load_config

    try:
        assert isinstance(load_config(path, REGISTRY), Config)
    except ConfigError as exc:
        assert exc.problems and all(problem.startswith(str(path)) for problem in exc.problems)


@settings(max_examples=200)
@given(raw=CONFIG | CONFIG_LIKE)
def test_config_any_mapping(raw: Any, tmp_path_factory: pytest.TempPathFactory) -> None:
    from core.config_loader import parse_config

    try:
        assert isinstance(parse_config(raw, REGISTRY, source="c.yaml"), Config)
    except ConfigError as exc:
        assert exc.problems and all(problem.startswith("c.yaml") for problem in exc.problems)
    path = tmp_path_factory.mktemp("cfg") / "config.yaml"
    try:
        path.write_text(yaml.safe_dump(raw))
    except yaml.YAMLError:
        return
    _loaded(path)


YAMLISH = st.lists(st.sampled_from(["listeners:", "- ", "  ", "name: x", "port: 1", "{", "}", "[", "]", ":", "&a",
                                    "*a", "!!binary", "!!python/object:os.system", "? ", "\t", "\n", '"', "'",
                                    "model_providers:", "%YAML 1.1", "---", "...", "<<: *a", "\x00", "\ud800"])
                   | st.text(max_size=5), max_size=25).map("".join)


@settings(max_examples=300)
@given(text=YAMLISH | st.binary(max_size=60))
def test_config_any_text(text: str | bytes, tmp_path_factory: pytest.TempPathFactory) -> None:
    path = tmp_path_factory.mktemp("cfg") / "config.yaml"
    if isinstance(text, str):
        path.write_bytes(text.encode("utf-8", "surrogatepass"))
    else:
        path.write_bytes(text)
    _loaded(path)


def test_json_nested_past_the_recursion_limit_is_an_error_not_a_crash() -> None:
    deep = "[" * 100_000
    with pytest.raises(RequestError, match="nested too deeply"):
        parse_body(deep.encode())
    call = {"id": "c", "type": "function", "function": {"name": "f", "arguments": deep}}
    with pytest.raises(TranslationError):
        openai_to_anthropic_request({"messages": [{"role": "assistant", "tool_calls": [call]}]}, "m")
    with pytest.raises(TranslationError):
        openai_to_anthropic_response({"choices": [{"message": {"tool_calls": [call]}}]}, "m")
    for api in ("openai", "anthropic"):
        assert json.loads(error_answer(api, 502, "application/json", deep.encode()))["error"]["code"] \
            == "upstream.http_502"
    for stream in (AnthropicToOpenAIStream("m", False), OpenAIToAnthropicStream("m")):
        with pytest.raises(TranslationError):
            stream.feed(f"data: {deep}\n\n".encode())


def test_line_separators_inside_data_are_data() -> None:
    # U+2028, NEL and form feed are text to SSE (only CR and LF end lines); JSON writes them raw.
    event = encode_event({"text": "a\u2028b\x85c\x0cd"})
    assert json.loads(parse_event(event)[1] or "") == {"text": "a\u2028b\x85c\x0cd"}
