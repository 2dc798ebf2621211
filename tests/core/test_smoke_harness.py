from __future__ import annotations

import httpx
import openai

from tests.conftest import proxy_config
from tests.harness import run_proxy
from tests.upstream import Upstream


def test_openai_sdk_through_proxy(upstream: tuple[Upstream, str]) -> None:
    server, base = upstream
    with run_proxy(proxy_config(base)) as proxy:
        client = openai.OpenAI(base_url=proxy.url + "/v1", api_key="sk-client")
        answer = client.chat.completions.create(model="test-model", messages=[{"role": "user", "content": "hi"}])
        assert answer.choices[0].message.content == "Hello from the test upstream."
        assert server.seen[-1].headers["authorization"] == "Bearer sk-upstream-secret"
        client.close()
