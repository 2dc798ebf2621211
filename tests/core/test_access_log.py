"""The access log: one bare JSON object per request, on stdout or in a file, never a header or a body."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import httpx
import pytest

from core.config import ModelProvider
from core.flow import Flow, RouteDecision
from core.observe import close_access_log, open_access_log, record
from core.target import Target
from tests.harness import eventually, free_port, run_proxy, wait_for_port, write_config

ROOT = Path(__file__).resolve().parents[2]
MESSAGES = [{"role": "user", "content": "my password is hunter2"}]
FIELDS = ["time", "request_id", "listener", "method", "path", "status", "duration_ms", "model", "served_by", "route",
          "principal", "session_id", "prompt_tokens", "completion_tokens", "total_tokens", "ttft_ms",
          "finish_reason", "attempts", "details", "error"]


@dataclass(frozen=True)
class Caller:
    name: str

    def may_use(self, model: str) -> bool:
        return True


def _demo(**server: object) -> dict[str, object]:
    return {"listeners": [{"name": "ingress", "port": 0}],
            "model_providers": [{"model": "demo/demo-echo", "default": True}], "server": server}


def test_record_has_the_facts_and_nothing_else() -> None:
    body = {"model": "fast", "messages": MESSAGES}
    flow = Flow(request_id="req-1", listener="ingress", api="openai", method="POST", path="/v1/chat/completions",
                headers={"authorization": "Bearer sk-secret"}, body=json.dumps(body).encode(), json_body=body,
                started=time.perf_counter() - 0.25)
    flow.principal = Caller("alice")
    flow.route = RouteDecision("code_generation", ("demo/demo-echo",))
    flow.session_id = "s-1"
    flow.served_by = Target(ModelProvider(model="demo/demo-echo"), None)  # type: ignore[arg-type]
    flow.usage = {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}
    flow.ttft_ms = 12.5
    flow.finish_reason = "stop"
    flow.response_status = 200
    flow.attempts = 1
    facts = record(flow, None)
    assert list(facts) == FIELDS
    assert facts["time"].endswith("+00:00")
    assert abs(datetime.fromisoformat(facts["time"]).timestamp() - (time.time() - 0.25)) < 1
    assert facts["duration_ms"] >= 250
    assert {k: facts[k] for k in FIELDS if k not in ("time", "duration_ms")} == {
        "request_id": "req-1", "listener": "ingress", "method": "POST", "path": "/v1/chat/completions",
        "status": 200, "model": "fast", "served_by": "demo/demo-echo", "route": "code_generation",
        "principal": "alice", "session_id": "s-1", "prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12,
        "ttft_ms": 12.5, "finish_reason": "stop", "attempts": 1, "details": None, "error": None,
    }
    assert "sk-secret" not in json.dumps(facts) and "hunter2" not in json.dumps(facts)


def test_serve_writes_bare_json_lines_to_stdout(tmp_path: Path) -> None:
    """`access_log: true`: stdout carries only JSON lines, stderr only the diagnostic log."""
    raw = _demo(access_log=True)
    port = free_port()
    raw["listeners"] = [{"name": "ingress", "port": port}]
    path = write_config(raw, tmp_path)
    process = subprocess.Popen([sys.executable, "-m", "core.cli", "serve", "-c", str(path)], cwd=ROOT,
                               env={**os.environ, "PYTHONPATH": str(ROOT)},
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_for_port(port, timeout=30)
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        first = httpx.post(url, json={"messages": MESSAGES}, headers={"authorization": "Bearer sk-client"})
        streamed = httpx.post(url, json={"model": "nope", "messages": MESSAGES, "stream": True})
    finally:
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=30)
    assert (first.status_code, streamed.status_code) == (200, 404)
    lines = [json.loads(line) for line in out.decode().splitlines()]
    assert [(line["status"], line["model"]) for line in lines] == [(200, None), (404, "nope")]
    assert lines[0]["served_by"] == "demo/demo-echo" and lines[0]["total_tokens"] > 0
    assert all(list(line) == FIELDS for line in lines)
    assert b"outerloop.access" not in err and b'"request_id"' not in err
    assert b"sk-client" not in out + err and b"hunter2" not in out + err


def test_access_log_to_a_file_next_to_the_config(caplog: pytest.LogCaptureFixture) -> None:
    with run_proxy(_demo(access_log={"path": "access.jsonl"})) as proxy:
        settings = proxy.config.server.access_log
        assert settings is not None
        handler = open_access_log(settings)
        try:
            for _ in range(3):
                httpx.post(proxy.url + "/v1/chat/completions", json={"messages": MESSAGES})
            # The line is written once the request is over, just after the client has its last byte.
            written = Path(proxy.config.source).parent / "access.jsonl"
            eventually(lambda: written.exists() and len(written.read_text().splitlines()) == 3)
        finally:
            close_access_log(handler)
    assert settings.path == str(written)
    lines = [json.loads(line) for line in written.read_text().splitlines()]
    assert [line["status"] for line in lines] == [200, 200, 200]
    assert not [r for r in caplog.records if r.name == "outerloop.access"]


def test_hypercorn_cli_on_create_app_writes_the_access_log(tmp_path: Path) -> None:
    """Served by hypercorn's own CLI (`core.app:create_app()`), the access log goes where the config says."""
    raw = _demo(access_log={"path": "access.jsonl"})
    port = free_port()
    raw["listeners"] = [{"name": "ingress", "port": port}]
    path = write_config(raw, tmp_path)
    hypercorn = Path(sys.executable).parent / "hypercorn"
    process = subprocess.Popen([str(hypercorn), "core.app:create_app()", "--bind", f"127.0.0.1:{port}"], cwd=ROOT,
                               env={**os.environ, "PYTHONPATH": str(ROOT), "OUTERLOOP_CONFIG": str(path)},
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, timeout=30)
        answer = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", json={"messages": MESSAGES})
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
    assert answer.status_code == 200
    lines = [json.loads(line) for line in (tmp_path / "access.jsonl").read_text().splitlines()]
    assert [(line["status"], line["served_by"]) for line in lines] == [(200, "demo/demo-echo")]
