"""Stored responses over HTTP: GET and DELETE /v1/responses/{id}, GET /v1/responses/{id}/input_items.

Behind the listener's auth like every endpoint (core.app ``Authenticated``); a response stored for another
principal is a 404, as a missing one: its existence is not revealed.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, quote

import httpx

from core.asgi import Receive, Scope, Send
from core.errors import error_body
from core.flow import Flow, encode_json
from core.providers.openai import openai_headers
from core.responses import send_body
from core.responses_api.call import holder_of
from core.responses_api.store import StoredResponse, StoreUnavailable

if TYPE_CHECKING:
    from core.runtime import Runtime

log = logging.getLogger("outerloop.responses")

_MAX_LIMIT = 100


class StoredResponses:
    """The stored-response endpoints (``/v1/responses/{response_id}`` and its ``/input_items``)."""

    def __init__(self, runtime: Runtime, items: bool = False) -> None:
        self.runtime = runtime
        self.items = items

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        method = scope["method"]
        allowed = ("GET", "HEAD") if self.items else ("GET", "HEAD", "DELETE")
        if method not in allowed:
            await _error(send, 405, f"method {method} not allowed on {scope['path']}; use {' or '.join(allowed[::2])}",
                         "request.method_not_allowed", [(b"allow", ", ".join(allowed).encode())])
            return
        response_id: str = scope["path_params"]["response_id"]
        flow: Flow | None = scope.get("outerloop.flow")
        owner = flow.principal.name if flow is not None and flow.principal is not None else None
        store = self.runtime.responses_store
        try:
            found = await store.get(response_id)
            if found is not None and found.owner != owner:
                found = None
            if found is not None and method == "DELETE":
                if found.native is not None and not await self._delete_upstream(scope, flow, found):
                    await _error(send, 502, "the upstream holding this response did not delete it; it is kept",
                                 "upstream.unavailable")
                    return
                await store.delete(response_id)
        except StoreUnavailable as exc:
            log.warning("stored responses: %s (%s)", exc, exc.where)
            await _error(send, 503, "stored responses cannot be read now", "responses.store_unavailable")
            return
        if found is None:
            await _error(send, 404, f"no response {response_id!r}", "responses.not_found", param="response_id")
            return
        if method == "DELETE":
            body: dict[str, Any] = {"id": response_id, "object": "response", "deleted": True}
        elif self.items:
            query = _query(scope)
            listed = _page(found, query)
            if isinstance(listed, tuple):
                await _error(send, 400, listed[1], "request.invalid_value", param=listed[0])
                return
            body = listed
        else:
            body = found.response
        await send_body(send, 200, encode_json(body))


    async def _delete_upstream(self, scope: Scope, flow: Flow | None, found: StoredResponse) -> bool:
        """A native response is deleted where it is held too (OpenAI keeps its own copy): True when it is gone
        there (or the upstream no longer knows it, or no configured deployment holds it any more)."""
        holder = next((target for targets in self.runtime.upstreams.deployments.values() for target in targets
                       if holder_of(target) == found.native), None)
        if holder is None:
            return True
        if flow is None:
            flow = Flow.of_request(scope, self.runtime.chain_for(scope).listener, "openai")
        # Not Upstream.url(): it keeps every path it parsed, and each id is another path.
        base, _, query = holder.upstream.base_url.partition("?")
        url = f"{base}/responses/{quote(found.id, safe='')}" + (f"?{query}" if query else "")
        try:
            answer = await holder.upstream.client.delete(url, headers=dict(openai_headers(flow, holder)))
        except httpx.HTTPError as exc:
            log.warning("stored responses: deleting %s at %s failed: %s: %s", found.id, holder.model,
                        type(exc).__name__, exc)
            return False
        if answer.status_code >= 400 and answer.status_code != 404:
            log.warning("stored responses: deleting %s at %s: the upstream answered %d", found.id, holder.model,
                        answer.status_code)
            return False
        return True


def _query(scope: Scope) -> dict[str, str]:
    return dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))


def _page(found: StoredResponse, query: dict[str, str]) -> dict[str, Any] | tuple[str, str]:
    """A cursor page of input items as the API lists them: ``order`` (desc by default), ``after``, ``limit``."""
    order = query.get("order", "desc")
    if order not in ("asc", "desc"):
        return "order", f"'order' must be asc or desc, got {order[:40]!r}"
    try:
        limit = int(query.get("limit", "20"))
    except ValueError:
        return "limit", "'limit' must be an integer"
    if not 1 <= limit <= _MAX_LIMIT:
        return "limit", f"'limit' must be between 1 and {_MAX_LIMIT}"
    items = list(found.input_items if order == "asc" else reversed(found.input_items))
    after = query.get("after")
    if after is not None:
        ids = [item.get("id") for item in items]
        items = items[ids.index(after) + 1:] if after in ids else []
    page = items[:limit]
    return {"object": "list", "data": page, "first_id": page[0].get("id") if page else None,
            "last_id": page[-1].get("id") if page else None, "has_more": len(items) > limit}


async def _error(send: Send, status: int, message: str, code: str, headers: list[tuple[bytes, bytes]] | None = None,
                 param: str | None = None) -> None:
    await send_body(send, status, error_body("openai", status, message, code, param), headers or [])
