"""Pure-ASGI response helpers: whole bodies in one send, headers as the byte pairs ASGI wants."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from core.asgi import Send

JSON = b"application/json"


def raw_headers(headers: Mapping[str, str] | Iterable[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    items = headers.items() if isinstance(headers, Mapping) else headers
    return [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in items]


async def send_body(
    send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None,
    content_type: bytes = JSON,
) -> None:
    out = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
    if headers:
        out.extend(headers)
    await send({"type": "http.response.start", "status": status, "headers": out})
    await send({"type": "http.response.body", "body": body})
