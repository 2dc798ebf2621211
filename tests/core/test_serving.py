"""Serving: HTTP/2 over TLS with ALPN, several listeners, graceful drain, worker processes, make run's config."""

from __future__ import annotations

import os
import signal
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import trustme
import yaml

from tests.conftest import proxy_config
from tests.harness import free_port, proxy_process, run_proxy, wait_for_port
from tests.upstream import Upstream

ROOT = Path(__file__).resolve().parents[2]
MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str, str]:
    """A CA generated for the test and a certificate for 127.0.0.1 signed by it: (cert, key, ca)."""
    directory = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    paths = [directory / "cert.pem", directory / "key.pem", directory / "ca.pem"]
    cert.private_key_and_cert_chain_pem.write_to_path(str(paths[0]))
    cert.private_key_pem.write_to_path(str(paths[1]))
    ca.cert_pem.write_to_path(str(paths[2]))
    return str(paths[0]), str(paths[1]), str(paths[2])


def test_tls_with_alpn_h2_and_http11(upstream: tuple[Upstream, str], tls: tuple[str, str, str]) -> None:
    server, base = upstream
    cert, key, ca = tls
    raw = proxy_config(base)
    raw["listeners"] = [
        {"name": "secure", "port": 0, "tls": {"cert": cert, "key": key}},
        {"name": "plain", "port": free_port(), "http2": False},
    ]
    with run_proxy(raw) as proxy:
        secure = f"https://127.0.0.1:{proxy.ports[0]}"
        with httpx.Client(http2=True, verify=ssl.create_default_context(cafile=ca)) as client:
            h2 = client.post(secure + "/v1/chat/completions", json={"messages": MESSAGES})
        with httpx.Client(http2=False, verify=ssl.create_default_context(cafile=ca)) as client:
            h1 = client.post(secure + "/v1/chat/completions", json={"messages": MESSAGES})
        sdk = openai.OpenAI(base_url=secure + "/v1", api_key="k", max_retries=0,
                            http_client=httpx.Client(verify=ssl.create_default_context(cafile=ca)))
        answer = sdk.chat.completions.create(model="test-model", messages=MESSAGES)  # type: ignore[arg-type]
        sdk.close()
        plain = httpx.post(f"http://127.0.0.1:{proxy.ports[1]}/v1/chat/completions", json={"messages": MESSAGES})
        with pytest.raises(httpx.ConnectError):
            httpx.post(secure + "/v1/chat/completions", json={"messages": MESSAGES})  # untrusted without the CA
    assert h2.http_version == "HTTP/2" and h2.status_code == 200
    assert h1.http_version == "HTTP/1.1" and h1.status_code == 200
    assert answer.choices[0].message.content == "Hello from the test upstream."
    assert plain.status_code == 200


def test_graceful_shutdown_lets_open_stream_finish(upstream: tuple[Upstream, str]) -> None:
    server, base = upstream
    raw = proxy_config(base, server={"drain_seconds": 5})
    result: dict[str, Any] = {}
    started = threading.Event()

    def client(url: str) -> None:
        with httpx.Client(timeout=10) as http:
            with http.stream("POST", url + "/v1/chat/completions",
                             json={"model": "slow", "messages": MESSAGES, "stream": True}) as response:
                parts = []
                for chunk in response.iter_raw():
                    parts.append(chunk)
                    started.set()
                result["body"] = b"".join(parts)

    with run_proxy(raw) as proxy:
        thread = threading.Thread(target=client, args=(proxy.url,))
        thread.start()
        assert started.wait(5)
        # leaving the block triggers shutdown while the stream still has ~1 s to go
    thread.join(10)
    assert result["body"].endswith(b"data: [DONE]\n\n")
    assert result["body"].count(b"chat.completion.chunk") == 6


@pytest.fixture
def served(tmp_path: Path, upstream: tuple[Upstream, str]) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """`outerloop serve --workers 2` as a real separate process tree."""
    server, base = upstream
    with proxy_process(proxy_config(base), tmp_path, args=("--workers", "2")) as served:
        yield served


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for task in os.listdir(f"/proc/{pid}/task"):
        text = Path(f"/proc/{pid}/task/{task}/children").read_text().split()
        found += [int(child) for child in text]
    return found


def test_workers_serve_and_stop_on_sigterm(served: tuple[subprocess.Popen[bytes], str]) -> None:
    process, url = served
    for _ in range(20):
        response = httpx.post(url + "/v1/chat/completions", json={"messages": MESSAGES})
        assert response.status_code == 200
    workers = [pid for pid in _children(process.pid)
               if "outerloop-worker" in Path(f"/proc/{pid}/cmdline").read_text(errors="replace")
               or "multiprocessing" in Path(f"/proc/{pid}/cmdline").read_text(errors="replace")]
    assert len(workers) >= 2
    process.send_signal(signal.SIGTERM)
    assert process.wait(15) == 0


def test_default_config_serves_the_demo_model() -> None:
    """What `make run` serves: the offline demo provider, streamed and not, through the openai SDK."""
    port = free_port()
    config = yaml.safe_load((ROOT / "configs/default.yaml").read_text())
    config["listeners"][0]["port"] = port
    with run_proxy(config) as proxy:
        client = openai.OpenAI(base_url=proxy.url + "/v1", api_key="not-needed", max_retries=0)
        answer = client.chat.completions.create(model="demo/demo-echo", messages=MESSAGES)  # type: ignore[arg-type]
        chunks = list(client.chat.completions.create(model="fast", messages=MESSAGES, stream=True,  # type: ignore[arg-type]
                                                     stream_options={"include_usage": True}))
        client.close()
    assert answer.choices[0].message.content == "Hello from outerloop's demo model. You said: hi"
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == answer.choices[0].message.content
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


def test_hypercorn_cli_runs_the_app_factory(upstream: tuple[Upstream, str], tmp_path: Path) -> None:
    server, base = upstream
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(proxy_config(base)))
    port = free_port()
    env = {**os.environ, "OUTERLOOP_CONFIG": str(path)}
    process = subprocess.Popen([sys.executable, "-m", "hypercorn", "core.app:create_app()", "--bind",
                                f"127.0.0.1:{port}"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, timeout=30)
        with httpx.Client(http1=False, http2=True) as client:
            response = client.post(f"http://127.0.0.1:{port}/v1/chat/completions", json={"messages": MESSAGES})
    finally:
        process.terminate()
        process.wait(10)
    assert response.http_version == "HTTP/2"
    assert response.json()["choices"][0]["message"]["content"] == "Hello from the test upstream."
