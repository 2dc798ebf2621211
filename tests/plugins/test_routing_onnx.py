"""The router filter on the real ONNX Runtime engine (a tiny Qwen2 exported in the test) behind hypercorn."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import yaml

from router_model.onnx_router import OnnxRouter
from router_model.routes import RouteSet
from tests.conftest import proxy_config
from tests.harness import run_proxy
from tests.upstream import Upstream

ROOT = Path(__file__).resolve().parents[2]
PREFS = [
    {"name": "code_generation", "description": "writing new code", "models": ["test/coder"]},
    {"name": "translation", "description": "translating text between languages", "models": ["test/test-model"]},
    {"name": "summarization", "description": "condensing a text", "models": ["test/writer"]},
]
CONVERSATIONS = [
    [{"role": "user", "content": "Write a JavaScript debounce function."}],
    [{"role": "user", "content": "Translate 'good morning' into French."}],
    [{"role": "system", "content": "be terse"}, {"role": "user", "content": "Summarise this thread for me."},
     {"role": "assistant", "content": "Sure, paste it."}, {"role": "user", "content": "here it is: ..."}],
]


def _config(base: str, model_dir: Path) -> dict[str, Any]:
    raw = proxy_config(base, filters=["router"])
    raw["model_providers"] += [{"model": "test/coder", "base_url": base}, {"model": "test/writer", "base_url": base}]
    raw["routing"] = {"backend": "onnx", "model_path": str(model_dir),
                      "execution_providers": ["CPUExecutionProvider"], "budget_ms": 5000}
    raw["routing_preferences"] = PREFS
    return raw


def test_proxy_routes_with_the_onnx_engine(upstream: tuple[Upstream, str], tiny_onnx_dir: Path) -> None:
    server, base = upstream
    routes = RouteSet.of([{"name": p["name"], "description": p["description"]} for p in PREFS])
    reference = OnnxRouter(tiny_onnx_dir, routes, providers=["CPUExecutionProvider"])
    models = {p["name"]: p["models"][0] for p in PREFS}
    with run_proxy(_config(base, tiny_onnx_dir)) as proxy:
        for messages in CONVERSATIONS:
            expected = reference.decide_sync(messages).route
            decision = httpx.post(proxy.url + "/routing/v1/chat/completions", json={"messages": messages},
                                  timeout=30).json()
            assert decision["backend"] == "onnx" and "fallback" not in decision
            assert decision["route"] == expected
            served = httpx.post(proxy.url + "/v1/chat/completions", json={"model": "auto", "messages": messages},
                                timeout=30)
            assert served.status_code == 200
            want = models[expected] if expected else "test/test-model"
            assert served.headers["x-outerloop-model"] == want


def test_cli_route_and_eval_on_the_onnx_engine(tiny_onnx_dir: Path, tmp_path: Path) -> None:
    path = tmp_path / "route.yaml"
    path.write_text(yaml.safe_dump(_config("http://127.0.0.1:9/v1", tiny_onnx_dir)))
    route = subprocess.run([sys.executable, "-m", "core.cli", "route", "-c", str(path), "Write a debounce function"],
                           capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert route.returncode == 0, route.stderr
    decision = json.loads(route.stdout)
    assert decision["backend"] == "onnx" and decision["route"] in {*models_of(PREFS), "other"}
    data = tmp_path / "set.jsonl"
    data.write_text("".join(json.dumps({"messages": m, "route": r}) + "\n"
                            for m, r in zip(CONVERSATIONS, ["code_generation", "translation", "summarization"])))
    report = subprocess.run([sys.executable, "-m", "core.cli", "router", "eval", "-c", str(path), str(data)],
                            capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert report.returncode == 0, report.stderr
    assert "accuracy" in report.stdout.lower() and "p50" in report.stdout


def test_cli_route_says_why_there_is_no_decision(tmp_path: Path) -> None:
    """A missing or unreadable model, or a malformed conversation: one line and exit 1, never a traceback."""
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model.onnx").write_text("not a model")
    cases = [
        (tmp_path / "missing", "hi", ["does not exist", "fallback model_missing"]),
        (broken, "hi", ["model.onnx", "fallback engine_error"]),
        (broken, '[{"role": "user"', ["is not JSON"]),
        (broken, "[1, 2]", ["expected a JSON list of messages"]),
    ]
    for model_dir, text, expected in cases:
        path = tmp_path / "route.yaml"
        path.write_text(yaml.safe_dump(_config("http://127.0.0.1:9/v1", model_dir)))
        out = subprocess.run([sys.executable, "-m", "core.cli", "route", "-c", str(path), text],
                             capture_output=True, text=True, timeout=120, cwd=ROOT)
        assert out.returncode == 1 and out.stdout == ""
        assert all(part in out.stderr for part in expected), out.stderr
        assert "Traceback" not in out.stderr
    bad = tmp_path / "bad.jsonl"
    bad.write_text("not json\n")
    out = subprocess.run([sys.executable, "-m", "core.cli", "router", "eval", "-c", str(path), str(bad)],
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 1 and "bad.jsonl:1: not JSON" in out.stderr and "Traceback" not in out.stderr


def models_of(prefs: list[dict[str, Any]]) -> set[str]:
    return {p["name"] for p in prefs}


def test_cli_export_checks_parity(tiny_hf_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "exported"
    done = subprocess.run([sys.executable, "-m", "core.cli", "router", "export", "--model", str(tiny_hf_dir),
                           "--out", str(out)], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert (out / "model.onnx").is_file() and (out / "tokenizer.json").is_file()
    routes = RouteSet.of([{"name": p["name"], "description": p["description"]} for p in PREFS])
    decision = OnnxRouter(out, routes, providers=["CPUExecutionProvider"]).decide_sync(CONVERSATIONS[0])
    assert decision.backend == "onnx"
    missing = subprocess.run([sys.executable, "-m", "core.cli", "router", "export", "--model",
                              str(tmp_path / "no-such-model"), "--out", str(tmp_path / "x")],
                             capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert missing.returncode == 1
    assert "no such model directory" in missing.stderr and "Traceback" not in missing.stderr


def test_backend_is_warm_before_the_first_request(tiny_onnx_dir: Path, monkeypatch: Any) -> None:
    """Startup fills the route set's prefix cache; a warm-up that fails leaves the router unavailable, closed."""
    import asyncio

    from plugins.routing.backends import SharedBackend
    from plugins.routing.config import Routing

    routing = Routing.model_validate(_config("http://127.0.0.1:9/v1", tiny_onnx_dir)["routing"])
    routes = RouteSet.of([{"name": p["name"], "description": p["description"]} for p in PREFS])

    async def start_and_decide() -> None:
        shared = SharedBackend(routing, routes)
        await shared.acquire()
        backend = shared.backend
        assert isinstance(backend, OnnxRouter) and shared.unavailable is None
        assert backend.prefix_cache.misses == 1  # built at startup, before any request
        await backend.decide(CONVERSATIONS[0])
        assert backend.prefix_cache.misses == 1 and backend.prefix_cache.hits >= 1
        await shared.release()

    asyncio.run(start_and_decide())

    closed: list[OnnxRouter] = []

    def broken(self: OnnxRouter) -> None:
        raise RuntimeError("CUDA out of memory")

    async def record_close(self: OnnxRouter) -> None:
        closed.append(self)

    monkeypatch.setattr(OnnxRouter, "warm_up", broken)
    monkeypatch.setattr(OnnxRouter, "aclose", record_close)

    async def start_broken() -> SharedBackend:
        shared = SharedBackend(routing, routes)
        await shared.acquire()
        return shared

    shared = asyncio.run(start_broken())
    assert shared.backend is None and shared.unavailable == "engine_error" and len(closed) == 1
