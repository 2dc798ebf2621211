"""OpenAI's Codex CLI itself, speaking the Responses API through the proxy to a scripted chat-completions upstream."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from core.observe import close_access_log, open_access_log
from tests.harness import Proxy, eventually, run_proxy, serve_app
from tests.scripted import ScriptedUpstream, Text, ToolCalls

# Installed by `make test` from tests/clients/package.json (the version is pinned there).
CODEX = Path(__file__).resolve().parents[1] / "clients" / "node_modules" / ".bin" / "codex"
MODEL = "test/chat"
COMMAND = "echo hi-from-codex"
FINAL = "Done: the command printed hi-from-codex."


@dataclass(frozen=True)
class Run:
    """What one `codex exec` left: its exit, its JSONL events, its last message and the proxy's access lines."""

    result: subprocess.CompletedProcess[str]
    events: list[Any]
    last_message: str
    access: list[Any]


@pytest.fixture
def codex() -> Path:
    if not CODEX.exists():
        pytest.skip(f"Codex CLI is not installed at {CODEX} (`make test` installs it with npm)")
    return CODEX


@pytest.fixture
def scripted() -> Iterator[tuple[ScriptedUpstream, str]]:
    upstream = ScriptedUpstream()
    with serve_app(upstream.app()) as port:
        yield upstream, f"http://127.0.0.1:{port}/v1"


def _config(base: str) -> dict[str, Any]:
    return {"listeners": [{"name": "test", "port": 0}], "server": {"access_log": {"path": "access.jsonl"}},
            "model_providers": [{"model": MODEL, "base_url": base, "default": True}]}


def _run_codex(codex: Path, proxy: Proxy, home: Path, prompt: str, requests: int) -> Run:
    """`codex exec` through ``proxy`` as a custom Responses provider, kept off the internet, until ``requests``
    access lines are written."""
    settings = proxy.config.server.access_log
    assert settings is not None
    handler = open_access_log(settings)
    (home / ".codex").mkdir()
    last = home / "last-message.txt"
    provider = (f'{{name="outerloop", base_url="{proxy.url}/v1", wire_api="responses", '
                'env_key="OUTERLOOP_API_KEY"}')
    env = {
        "PATH": os.environ["PATH"], "HOME": str(home), "CODEX_HOME": str(home / ".codex"), "SHELL": "/bin/bash",
        "OUTERLOOP_API_KEY": "sk-test", "RUST_LOG": "error",
        # Anything Codex tries beyond the proxy goes to a closed port instead of the internet.
        **{name: "http://127.0.0.1:9" for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy")},
        "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1",
    }
    command = [
        str(codex), "exec", "--skip-git-repo-check", "--ephemeral", "--sandbox", "read-only", "--color", "never",
        "--json", "--output-last-message", str(last), "--model", MODEL,
        "-c", "model_provider=outerloop", "-c", f"model_providers.outerloop={provider}",
        "-c", 'approval_policy="never"', "-c", "check_for_update_on_startup=false", "-c", "analytics.enabled=false",
        # At startup it may sync a curated plugin list from GitHub.
        "--disable", "plugins",
        # The hosted web_search tool has no chat form: the proxy refuses it with a 400 (docs/responses.md).
        "-c", 'web_search="disabled"',
        prompt,
    ]
    written = Path(proxy.config.source).parent / "access.jsonl"
    try:
        result = subprocess.run(command, env=env, cwd=home, capture_output=True, text=True, timeout=120,
                                stdin=subprocess.DEVNULL)
        # Lines are written once each request is over.
        eventually(lambda: written.exists() and len(written.read_text().splitlines()) >= requests)
    finally:
        close_access_log(handler)
    events = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    access = [json.loads(line) for line in written.read_text().splitlines()] if written.exists() else []
    return Run(result, events, last.read_text() if last.exists() else "", access)


def _assert_finished(run: Run, requests: int) -> None:
    assert run.result.returncode == 0, run.result.stderr[-2000:] + run.result.stdout[-2000:]
    assert run.last_message.strip() == FINAL
    messages = [event["item"]["text"] for event in run.events
                if event["type"] == "item.completed" and event["item"]["type"] == "agent_message"]
    assert messages == [FINAL]
    assert [event["type"] for event in run.events][-1] == "turn.completed"
    assert len(run.access) == requests, run.access
    assert all(line["path"] == "/v1/responses" and line["status"] < 400 for line in run.access), run.access


def test_codex_answers_with_the_upstream_text(codex: Path, tmp_path: Path,
                                              scripted: tuple[ScriptedUpstream, str]) -> None:
    upstream, base = scripted
    upstream.script.append(Text(FINAL))
    with run_proxy(_config(base)) as proxy:
        run = _run_codex(codex, proxy, tmp_path, "Say that the command printed hi-from-codex.", 1)
    _assert_finished(run, 1)
    assert upstream.paths() == ["/v1/chat/completions"]
    sent = upstream.seen[0].json
    assert sent["stream"] is True and sent["model"] == "chat"
    # Codex's instructions and environment context arrive as leading developer/user messages, the prompt last.
    assert sent["messages"][-1] == {"role": "user", "content": "Say that the command printed hi-from-codex."}
    names = [tool["function"]["name"] for tool in sent["tools"]]
    # Codex's sub-agent tools come as a `namespace` tool; the chat upstream sees its functions as plain ones.
    assert "exec_command" in names and "spawn_agent" in names


def test_codex_runs_a_tool_the_upstream_asks_for(codex: Path, tmp_path: Path,
                                                 scripted: tuple[ScriptedUpstream, str]) -> None:
    upstream, base = scripted
    upstream.script.extend([ToolCalls([("exec_command", json.dumps({"cmd": COMMAND}))]), Text(FINAL)])
    with run_proxy(_config(base)) as proxy:
        run = _run_codex(codex, proxy, tmp_path, "Run a command that prints hi-from-codex.", 2)
    _assert_finished(run, 2)
    assert [line["finish_reason"] for line in run.access] == ["tool_calls", "stop"]
    commands = [event["item"] for event in run.events
                if event["type"] == "item.completed" and event["item"]["type"] == "command_execution"]
    assert len(commands) == 1 and COMMAND in commands[0]["command"]
    assert commands[0]["exit_code"] == 0 and commands[0]["aggregated_output"].strip() == "hi-from-codex"
    assert upstream.paths() == ["/v1/chat/completions"] * 2
    # Codex's function_call and function_call_output items reach the upstream as an assistant tool call and
    # the `tool` message answering it.
    *_, call, output = upstream.seen[1].json["messages"]
    assert call["role"] == "assistant" and call["tool_calls"][0]["function"]["name"] == "exec_command"
    assert json.loads(call["tool_calls"][0]["function"]["arguments"]) == {"cmd": COMMAND}
    assert output["role"] == "tool" and output["tool_call_id"] == call["tool_calls"][0]["id"]
    assert "hi-from-codex" in output["content"]


def test_codex_routes_a_call_to_a_namespaced_tool(codex: Path, tmp_path: Path,
                                                  scripted: tuple[ScriptedUpstream, str]) -> None:
    upstream, base = scripted
    # close_agent is in Codex's `multi_agent_v1` namespace tool: the chat upstream names the function only, and
    # Codex runs the call only if the proxy gives it its namespace back.
    upstream.script.extend([ToolCalls([("close_agent", json.dumps({"target": "no-such-agent"}))]), Text(FINAL)])
    with run_proxy(_config(base)) as proxy:
        run = _run_codex(codex, proxy, tmp_path, "Close the agent no-such-agent.", 2)
    _assert_finished(run, 2)
    *_, call, output = upstream.seen[1].json["messages"]
    assert call["tool_calls"][0]["function"]["name"] == "close_agent"
    assert output["role"] == "tool" and output["tool_call_id"] == call["tool_calls"][0]["id"]
    # Codex's multi-agent handler refused the made-up id; a call it could not route reads "unsupported call".
    assert "no-such-agent" in output["content"] and "unsupported call" not in output["content"], output
