"""The `http` routing backend: the router model behind any OpenAI-compatible chat completions endpoint."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import httpx

from router_model.backend import Decision, Message, RouterUpstreamError
from router_model.conversation import select_turns
from router_model.prompts import get_profile
from router_model.routes import Route, RouteSet
from router_model.tokenizer import RouterTokenizer


def _approx_tokens(text: str) -> int:
    # Without the model's tokenizer, Plano's estimate: about four UTF-8 bytes per token.
    return len(text.encode()) // 4 + 1


class HttpRouter:
    """Asks a served router model (vLLM, Ollama, ...) with the same prompt and parsing as the onnx backend."""

    name = "http"

    def __init__(
        self,
        base_url: str,
        model: str,
        routes: Iterable[Route | Mapping[str, str]] | RouteSet,
        profile: str = "arch-router",
        api_key: str | None = None,
        timeout: float = 2.0,
        connect_timeout: float = 1.0,
        max_conversation_tokens: int = 2048,
        tokenizer: RouterTokenizer | None = None,
        client: httpx.AsyncClient | None = None,
        max_routes: int | None = None,
    ) -> None:
        if max_routes is not None and max_routes < 1:
            raise ValueError(f"max_routes must be at least 1, got {max_routes}")
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.routes = RouteSet.of(routes)
        self.profile = get_profile(profile)
        self.max_conversation_tokens = max_conversation_tokens
        #: At most this many routes of a list answer are kept (None: all it names).
        self.max_routes = max_routes
        self._count = tokenizer.count if tokenizer is not None else _approx_tokens
        headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = client or httpx.AsyncClient(
            headers=headers,
            timeout=httpx.Timeout(timeout, connect=connect_timeout),
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=16),
        )

    def request_body(self, messages: Sequence[Message], routes: RouteSet) -> dict[str, Any]:
        turns = select_turns(messages, self.max_conversation_tokens, self._count)
        content = self.profile.user_message(routes, turns)
        return {
            "model": self.model,
            "messages": [{"role": "user", "content": content}],
            "temperature": 0,
            "max_tokens": 64,
            "stream": False,
        }

    async def decide(self, messages: Sequence[Message], routes: RouteSet | None = None) -> Decision:
        routes = routes or self.routes
        start = time.perf_counter()
        body = self.request_body(messages, routes)
        try:
            response = await self._client.post(self.url, json=body)
        except httpx.HTTPError as exc:
            raise RouterUpstreamError(f"router endpoint {self.url} failed: {exc!r}") from exc
        if response.status_code != 200:
            raise RouterUpstreamError(f"router endpoint {self.url} answered {response.status_code}: {response.text[:200]}")
        try:
            payload = response.json()
            answer = payload["choices"][0]["message"]["content"] or ""
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise RouterUpstreamError(f"router endpoint {self.url} returned no chat completion: {exc!r}") from exc
        usage = payload.get("usage") or {}
        chosen = self.profile.parse_all(str(answer), routes)[: self.max_routes]
        return Decision(
            route=chosen[0] if chosen else None,
            routes=chosen,
            latency_ms=(time.perf_counter() - start) * 1000,
            backend=self.name,
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            raw=str(answer),
        )

    def warm_up(self) -> None:
        """Nothing to warm in process; the endpoint is not called before the first request needs it."""

    async def aclose(self) -> None:
        await self._client.aclose()
