"""What a new user meets first: what `make run` installs, model names that agree, errors that name real ports."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
from pathlib import Path

import httpx
import openai
import pytest
import yaml

from core.transport import AiohttpTransport
from tests.harness import free_port, run_proxy

ROOT = Path(__file__).resolve().parents[2]
MESSAGES = [{"role": "user", "content": "hi"}]
needs_make = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")


def _make(*args: str, venv: Path) -> str:
    done = subprocess.run(["make", "-n", *args, f"VENV={venv}"], cwd=ROOT, capture_output=True, text=True,
                          check=True)
    return done.stdout


@needs_make
def test_make_run_installs_the_runtime_only(tmp_path: Path) -> None:
    planned = _make("-B", "run", venv=tmp_path / "venv")
    assert "pip install -q -e .\n" in planned
    assert "export" not in planned and "test]" not in planned


@needs_make
def test_make_test_after_make_run_adds_only_the_extras(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    venv.mkdir()
    (venv / ".installed-run").touch()  # newer than pyproject.toml: `make run` was done
    planned = _make("test", venv=venv)
    assert "pip install -q -e '.[export,test]'" in planned
    assert "-m venv" not in planned and "pip install -q -e .\n" not in planned


def test_demo_answers_name_the_model_as_models_lists_it() -> None:
    config = yaml.safe_load((ROOT / "configs/default.yaml").read_text())
    config["listeners"][0]["port"] = free_port()
    with run_proxy(config) as proxy:
        listed = httpx.get(proxy.url + "/v1/models").json()["data"]
        client = openai.OpenAI(base_url=proxy.url + "/v1", api_key="unused", max_retries=0)
        answer = client.chat.completions.create(model="fast", messages=MESSAGES)  # type: ignore[arg-type]
        chunks = list(client.chat.completions.create(model="demo-echo", messages=MESSAGES,  # type: ignore[arg-type]
                                                     stream=True))
        client.close()
    # An alias is owned by the provider of the model it points to, not by a provider named after it.
    assert [(m["id"], m["owned_by"]) for m in listed] == [("demo/demo-echo", "demo"), ("fast", "demo")]
    assert answer.model == "demo/demo-echo"
    assert chunks and {chunk.model for chunk in chunks} == {"demo/demo-echo"}


def test_connect_error_names_the_scheme_default_port() -> None:
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", 443)) == 0:
            pytest.skip("something listens on 127.0.0.1:443")

    async def call() -> str:
        transport = AiohttpTransport()
        try:
            await transport.handle_async_request(httpx.Request("POST", "https://127.0.0.1/v1/chat/completions"))
        except httpx.ConnectError as exc:
            return str(exc)
        finally:
            await transport.aclose()
        raise AssertionError("connected")

    assert asyncio.run(call()).startswith("cannot connect to 127.0.0.1:443: ")
