"""A keyword stand-in for a router model, served like one (the `http` routing backend), so the example runs offline.

It reads the prompt outerloop sends a router model (Arch-Router's or Plano-Orchestrator's), matches the latest user
turn's words against each route's name and description, and answers in the prompt's own format: every route
mentioned, in the order the user mentioned them (`{"route": ["flights", "hotels"]}`), or none. Swap it for the real
thing with `backend: onnx` (an exported Arch-Router or Plano-Orchestrator) or `backend: embedding`: see docs/agents.md.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from collections.abc import Mapping, Sequence
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

# Words that say nothing about which agent is meant ("find me a ...", "book a ...").
STOPWORDS = frozenset(
    "a an and are as at be book can could do find for from get help i in is it me my near need of on or out "
    "please some that the then this to want we what where which with would you your".split()
)
_WORD = re.compile(r"[a-z]+")


def words(text: str) -> list[str]:
    """Lower-case content words, a plural `s` dropped, so "flights" meets "flight"."""
    out = []
    for word in _WORD.findall(text.lower()):
        word = word[:-1] if len(word) > 3 and word.endswith("s") and not word.endswith("ss") else word
        if word not in STOPWORDS:
            out.append(word)
    return out


def _between(text: str, tag: str) -> str:
    # The block, not the instructions' mention of the tags ("within <routes></routes> XML tags").
    match = re.search(rf"<{tag}>\n(.*?)\n</{tag}>", text, re.S)
    return match.group(1).strip() if match else ""


def parse_prompt(prompt: str) -> tuple[list[dict[str, str]], list[dict[str, Any]], bool]:
    """(routes, conversation, whether a list is asked for) from either profile's prompt."""
    block = _between(prompt, "routes")
    if block.startswith("["):
        routes = json.loads(block)
    else:  # Plano-Orchestrator: one JSON object a line
        routes = [json.loads(line) for line in block.splitlines() if line.strip()]
    conversation = json.loads(_between(prompt, "conversation") or "[]")
    return routes, conversation, '"route": [' in prompt


def choose(routes: Sequence[Mapping[str, str]], conversation: Sequence[Mapping[str, Any]]) -> list[str]:
    """Every route a word of the latest user turn belongs to, ordered by where the user first named it."""
    latest = next((str(t.get("content") or "") for t in reversed(conversation) if t.get("role") == "user"), "")
    said = words(latest)
    first: dict[str, int] = {}
    for route in routes:
        vocabulary = set(words(route["name"].replace("_", " ") + " " + route.get("description", "")))
        hits = [i for i, word in enumerate(said) if word in vocabulary]
        if hits:
            first[route["name"]] = hits[0]
    return sorted(first, key=first.__getitem__)


async def chat(request: Request) -> Response:
    try:
        body = json.loads(await request.body())
        prompt = str(body["messages"][-1]["content"])
        routes, conversation, lists = parse_prompt(prompt)
    except (ValueError, KeyError, IndexError, TypeError):
        return JSONResponse({"error": {"message": "not a router prompt", "type": "invalid_request_error",
                                       "param": None, "code": "not_a_router_prompt"}}, status_code=400)
    chosen = choose(routes, conversation)
    answer = json.dumps({"route": chosen if lists else (chosen[0] if chosen else "other")})
    return JSONResponse({
        "id": "chatcmpl-keyword-router", "object": "chat.completion", "created": int(time.time()),
        "model": body.get("model") or "keyword-router",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": len(prompt) // 4, "completion_tokens": len(answer) // 4,
                  "total_tokens": (len(prompt) + len(answer)) // 4},
    })


app = Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])


def main() -> None:
    import asyncio

    from hypercorn.asyncio import serve as hypercorn_serve
    from hypercorn.config import Config

    parser = argparse.ArgumentParser(description="a keyword stand-in for a router model (OpenAI-compatible)")
    parser.add_argument("--port", type=int, default=9000, help="port on 127.0.0.1 (default %(default)s)")
    config = Config()
    config.bind = [f"127.0.0.1:{parser.parse_args().port}"]
    config.accesslog = None
    try:
        asyncio.run(hypercorn_serve(app, config))  # type: ignore[arg-type]
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
