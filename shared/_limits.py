"""Request bodies bounded on every service: refused with 413 while reading, before any parsing or authentication."""

from __future__ import annotations

import json
from collections.abc import Mapping

from starlette.types import ASGIApp, Message, Receive, Scope, Send


def body_limits(default: int, per_route: Mapping[str, int]) -> list[tuple[str, int]]:
    """``(path prefix, bytes)``, longest prefix first, the default last (prefix ``""``)."""
    return sorted(per_route.items(), key=lambda item: -len(item[0])) + [("", default)]


class BodyLimit:
    """ASGI middleware. A declared ``Content-Length`` over the route's limit is answered 413 at once, unread (the
    server holds a body to its declared length). A body without one (chunked) is read here, up to the limit, before
    the route runs: past the limit it is answered 413 before any parsing or authentication, and what the route
    then reads is what was held. Nothing beyond the limit is ever held in memory."""

    def __init__(self, app: ASGIApp, *, limits: list[tuple[str, int]]) -> None:
        self.app = app
        self.limits = limits

    def limit_for(self, path: str) -> int:
        return next(limit for prefix, limit in self.limits if path.startswith(prefix))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope["path"])
        declared = next((v for k, v in scope["headers"] if k == b"content-length"), None)
        if declared is not None:
            if not declared.isdigit() or int(declared) > limit:
                await _refuse(send, limit if declared.isdigit() else None)
                return
            await self.app(scope, receive, send)
            return
        held: list[bytes] = []
        seen = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                await self.app(scope, _replay([message], receive), send)
                return
            seen += len(message.get("body", b""))
            if seen > limit:
                await _refuse(send, limit)
                return
            held.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        await self.app(scope, _replay([{"type": "http.request", "body": b"".join(held), "more_body": False}], receive), send)


def _replay(messages: list[Message], receive: Receive) -> Receive:
    """``receive`` that first hands out ``messages``, then goes on with the real one (a disconnect, later)."""

    async def replayed() -> Message:
        return messages.pop(0) if messages else await receive()

    return replayed


async def _refuse(send: Send, limit: int | None) -> None:
    detail = f"the body is larger than {limit} bytes" if limit is not None else "Content-Length is not a number"
    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), (b"connection", b"close")]
    await send({"type": "http.response.start", "status": 413 if limit is not None else 400, "headers": headers})
    await send({"type": "http.response.body", "body": body})
