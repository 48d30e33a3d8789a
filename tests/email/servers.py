"""Real HTTP servers for the email tests: the sandbox and a recording stand-in for the router's API."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from herald.infra import free_port

from ..support import serve


@contextlib.contextmanager
def sandbox_server() -> Iterator[tuple[str, int]]:
    """The sandbox app (provider stand-ins) on free ports: its HTTP base URL and its SMTP port."""
    from sandbox.app import create_app

    smtp_port = free_port()
    previous = os.environ.get("HERALD_SANDBOX_SMTP_PORT")
    os.environ["HERALD_SANDBOX_SMTP_PORT"] = str(smtp_port)
    try:
        server = serve(create_app())
        url = server.__enter__()  # the SMTP port is read at start-up
    finally:
        # Only this sandbox listens there: sandboxes other tests start take their own ports.
        if previous is None:
            os.environ.pop("HERALD_SANDBOX_SMTP_PORT", None)
        else:
            os.environ["HERALD_SANDBOX_SMTP_PORT"] = previous
    try:
        yield url, smtp_port
    finally:
        server.__exit__(None, None, None)


@dataclass
class RecordingRouter:
    """A stand-in for the router's preference API that records every request."""

    status: int = 200
    requests: list[dict[str, Any]] = field(default_factory=list)

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.patch("/v1/users/{user_id}/preferences")
        async def patch(user_id: str, request: Request) -> JSONResponse:
            self.requests.append(
                {"user_id": user_id, "path": request.scope["raw_path"].decode(), "body": await request.json(), "authorization": request.headers.get("authorization")}
            )
            return JSONResponse({"preferences": []}, status_code=self.status)

        return app
