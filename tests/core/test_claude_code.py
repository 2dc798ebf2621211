"""Claude Code itself, with its default tools, through the proxy to scripted Anthropic and OpenAI upstreams."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from core.observe import close_access_log, open_access_log
from tests.harness import Proxy, eventually, run_proxy, serve_app

# Installed by `make test` from tests/clients/package.json (the version is pinned there).
CLAUDE = Path(__file__).resolve().parents[1] / "clients" / "node_modules" / ".bin" / "claude"
MODEL = "claude-test"
COMMAND = "echo hi-from-bash"
FINAL = "Done: the command printed hi-from-bash."


@dataclass
class Seen:
    path: str
    headers: dict[str, str]
    json: dict[str, Any]


@dataclass
class Script:
    """The requests an upstream got; the first turn of a conversation asks for Bash, the one after its result
    answers with `FINAL`."""

    seen: list[Seen] = field(default_factory=list)

    async def turn(self, request: Request) -> tuple[dict[str, Any], bool]:
        """The request's body, recorded, and whether to answer it by asking for Bash."""
        body: dict[str, Any] = json.loads(await request.body())
        self.seen.append(Seen(request.url.path, dict(request.headers), body))
        return body, _offers_bash(body.get("tools", [])) and not _has_tool_result(body)


def _has_tool_result(body: dict[str, Any]) -> bool:
    return any(m.get("role") == "tool" or (isinstance(m.get("content"), list) and any(
        isinstance(b, dict) and b.get("type") == "tool_result" for b in m["content"])) for m in body["messages"])


def _offers_bash(tools: list[dict[str, Any]]) -> bool:
    return any(t.get("name") == "Bash" or t.get("function", {}).get("name") == "Bash" for t in tools)


class AnthropicScript(Script):
    """Anthropic's Messages API as the real one streams it: message_start, content blocks, message_delta."""

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/v1/messages", self.messages, methods=["POST"])])

    async def messages(self, request: Request) -> Response:
        body, bash = await self.turn(request)
        if bash:
            block: dict[str, Any] = {"type": "tool_use", "id": "toolu_01", "name": "Bash", "input": {}}
            arguments = {"command": COMMAND, "description": "Print a greeting"}
            delta = {"type": "input_json_delta", "partial_json": json.dumps(arguments)}
            whole, stop = {**block, "input": arguments}, "tool_use"
        else:
            block = {"type": "text", "text": ""}
            delta = {"type": "text_delta", "text": FINAL}
            whole, stop = {"type": "text", "text": FINAL}, "end_turn"
        message = {"id": "msg_01", "type": "message", "role": "assistant", "model": body["model"], "content": [],
                   "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": 12, "output_tokens": 1}}
        if not body.get("stream"):
            return JSONResponse({**message, "content": [whole], "stop_reason": stop,
                                 "usage": {"input_tokens": 12, "output_tokens": 7}})
        events: list[dict[str, Any]] = [
            {"type": "message_start", "message": message},
            {"type": "content_block_start", "index": 0, "content_block": block},
            {"type": "content_block_delta", "index": 0, "delta": delta},
            {"type": "content_block_stop", "index": 0},
            {"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": None},
             "usage": {"output_tokens": 7}},
            {"type": "message_stop"},
        ]
        frames = [f"event: {event['type']}\ndata: {json.dumps(event)}\n\n".encode() for event in events]
        return StreamingResponse(iter(frames), media_type="text/event-stream")


class OpenAIScript(Script):
    """OpenAI's Chat Completions API, streamed as chunks with a usage chunk last."""

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/v1/chat/completions", self.chat, methods=["POST"])])

    async def chat(self, request: Request) -> Response:
        body, bash = await self.turn(request)
        if bash:
            arguments = json.dumps({"command": COMMAND, "description": "Print a greeting"})
            call = {"index": 0, "id": "call_01", "type": "function",
                    "function": {"name": "Bash", "arguments": arguments}}
            delta: dict[str, Any] = {"role": "assistant", "content": None, "tool_calls": [call]}
            message: dict[str, Any] = {"role": "assistant", "content": None,
                                       "tool_calls": [{k: v for k, v in call.items() if k != "index"}]}
            finish = "tool_calls"
        else:
            delta = {"role": "assistant", "content": FINAL}
            message, finish = {"role": "assistant", "content": FINAL}, "stop"
        usage = {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19}
        base = {"id": "chatcmpl-01", "created": 0, "model": body["model"]}
        if not body.get("stream"):
            return JSONResponse({**base, "object": "chat.completion", "usage": usage,
                                 "choices": [{"index": 0, "message": message, "finish_reason": finish}]})
        chunks = [
            {**base, "object": "chat.completion.chunk",
             "choices": [{"index": 0, "delta": delta, "finish_reason": None}]},
            {**base, "object": "chat.completion.chunk",
             "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]},
            {**base, "object": "chat.completion.chunk", "choices": [], "usage": usage},
        ]
        frames = [f"data: {json.dumps(chunk)}\n\n".encode() for chunk in chunks] + [b"data: [DONE]\n\n"]
        return StreamingResponse(iter(frames), media_type="text/event-stream")


@pytest.fixture
def claude() -> Path:
    if not CLAUDE.exists():
        pytest.skip(f"Claude Code is not installed at {CLAUDE} (`make test` installs it with npm)")
    return CLAUDE


def _config(model: str, base: str) -> dict[str, Any]:
    return {"listeners": [{"name": "agents", "port": 0}], "server": {"access_log": {"path": "access.jsonl"}},
            "model_providers": [{"model": model, "base_url": base, "access_key": "sk-upstream", "default": True}]}


@pytest.fixture
def anthropic_upstream() -> Iterator[tuple[AnthropicScript, str]]:
    script = AnthropicScript()
    with serve_app(script.app()) as port:
        yield script, f"http://127.0.0.1:{port}/v1"


@pytest.fixture
def openai_upstream() -> Iterator[tuple[OpenAIScript, str]]:
    script = OpenAIScript()
    with serve_app(script.app()) as port:
        yield script, f"http://127.0.0.1:{port}/v1"


def _run_claude(claude: Path, proxy: Proxy, home: Path) -> tuple[subprocess.CompletedProcess[str], list[Any]]:
    """Claude Code in print mode through ``proxy``, kept off the internet; its result and the access log."""
    settings = proxy.config.server.access_log
    assert settings is not None
    handler = open_access_log(settings)
    env = {
        "PATH": os.environ["PATH"], "HOME": str(home), "SHELL": "/bin/bash", "CLAUDE_CONFIG_DIR": str(home / ".claude"),
        "ANTHROPIC_BASE_URL": proxy.url, "ANTHROPIC_API_KEY": "test",
        # Every model Claude Code may pick for side requests is the scripted one.
        "ANTHROPIC_MODEL": MODEL, "ANTHROPIC_SMALL_FAST_MODEL": MODEL, "ANTHROPIC_DEFAULT_HAIKU_MODEL": MODEL,
        "ANTHROPIC_DEFAULT_SONNET_MODEL": MODEL, "ANTHROPIC_DEFAULT_OPUS_MODEL": MODEL,
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1", "DISABLE_TELEMETRY": "1", "DISABLE_AUTOUPDATER": "1",
        "DISABLE_ERROR_REPORTING": "1", "DISABLE_BUG_COMMAND": "1", "CLAUDE_CODE_DISABLE_TERMINAL_TITLE": "1",
    }
    written = Path(proxy.config.source).parent / "access.jsonl"
    try:
        result = subprocess.run(
            [str(claude), "-p", "Run a command that prints hi-from-bash.", "--output-format", "json",
             "--model", MODEL, "--allowedTools", "Bash(echo:*)", "--strict-mcp-config"],
            env=env, cwd=home, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
        # Lines are written once each request is over.
        eventually(lambda: written.exists() and len(written.read_text().splitlines()) >= 2)
    finally:
        close_access_log(handler)
    return result, [json.loads(line) for line in written.read_text().splitlines()]


def _assert_finished(result: subprocess.CompletedProcess[str], access: list[Any]) -> None:
    assert result.returncode == 0, result.stderr + result.stdout[-2000:]
    answer = json.loads(result.stdout)
    assert answer["is_error"] is False and answer["result"] == FINAL
    assert access and all(line["status"] < 400 for line in access), access


def test_claude_code_through_the_proxy_to_anthropic(claude: Path, tmp_path: Path,
                                                    anthropic_upstream: tuple[AnthropicScript, str]) -> None:
    script, base = anthropic_upstream
    with run_proxy(_config(f"anthropic/{MODEL}", base)) as proxy:
        result, access = _run_claude(claude, proxy, tmp_path)
    _assert_finished(result, access)
    turns = [seen.json for seen in script.seen]
    assert all(seen.path == "/v1/messages" for seen in script.seen)
    assert "claude-code-20250219" in script.seen[0].headers["anthropic-beta"]
    # Passthrough: Claude Code's system entries inside `messages` reach the upstream as sent.
    assert any(message["role"] == "system" for message in turns[0]["messages"])
    last = turns[-1]["messages"]
    results = [block for message in last if isinstance(message["content"], list)
               for block in message["content"] if block.get("type") == "tool_result"]
    assert results and "hi-from-bash" in json.dumps(results[0]["content"])
    assert [m["role"] for m in last].count("system") >= 1


def test_claude_code_through_the_proxy_to_openai(claude: Path, tmp_path: Path,
                                                 openai_upstream: tuple[OpenAIScript, str]) -> None:
    script, base = openai_upstream
    with run_proxy(_config(f"scripted/{MODEL}", base)) as proxy:
        result, access = _run_claude(claude, proxy, tmp_path)
    _assert_finished(result, access)
    assert all(seen.path == "/v1/chat/completions" for seen in script.seen)
    last = script.seen[-1].json["messages"]
    roles = [message["role"] for message in last]
    # The top-level system prompt leads; Claude Code's system entry stays where it was, after the user turn.
    assert roles[0] == "system" and "system" in roles[roles.index("user"):]
    assert roles[-2:] == ["assistant", "tool"]
    assert last[-2]["tool_calls"][0]["function"]["name"] == "Bash"
    assert "hi-from-bash" in last[-1]["content"]
