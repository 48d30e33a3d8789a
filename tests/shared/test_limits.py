"""The shared body limit: declared or streamed, an oversized body is refused with 413 before the route parses it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI, Request
from pydantic import BaseModel, ValidationError

from shared import HeraldSettings
from shared._limits import BodyLimit, body_limits


class Note(BaseModel):
    text: str


def app_with(limits: list[tuple[str, int]]) -> tuple[FastAPI, list[str]]:
    reached: list[str] = []
    app = FastAPI()

    @app.post("/v1/notes")
    async def parsed(note: Note) -> dict[str, int]:
        reached.append("parsed")
        return {"length": len(note.text)}

    @app.post("/v1/webhooks/raw")
    async def raw(request: Request) -> dict[str, int]:
        reached.append("raw")
        return {"length": len(await request.body())}

    async def mounted(scope, receive, send) -> None:  # noqa: ANN001 - a bare ASGI app reading its body itself
        reached.append("mounted")
        while (await receive()).get("more_body"):
            pass
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    app.mount("/bare", mounted)
    app.add_middleware(BodyLimit, limits=limits)
    return app, reached


async def chunks(total: int, size: int = 4096) -> AsyncIterator[bytes]:
    sent = 0
    while sent < total:
        yield b"x" * min(size, total - sent)
        sent += size


@pytest.fixture
async def client() -> AsyncIterator[tuple[httpx.AsyncClient, list[str]]]:
    app, reached = app_with(body_limits(10_000, {"/v1/webhooks/": 50_000}))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as http:
        yield http, reached


async def test_a_declared_length_over_the_limit_is_refused_before_the_route_runs(client):
    http, reached = client
    response = await http.post("/v1/notes", content=b"{}", headers={"Content-Length": "100000000", "Content-Type": "application/json"})
    assert (response.status_code, response.json()) == (413, {"detail": "the body is larger than 10000 bytes"})
    response = await http.post("/v1/notes", content=b"{}", headers={"Content-Length": "twelve"})
    assert response.status_code == 400 and "Content-Length" in response.json()["detail"]
    assert reached == []


async def test_a_streamed_body_over_the_limit_is_refused_before_any_route_runs(client):
    http, reached = client
    response = await http.post("/v1/notes", content=chunks(10_000_000), headers={"Content-Type": "application/json"})
    assert (response.status_code, response.json()["detail"]) == (413, "the body is larger than 10000 bytes")
    response = await http.post("/v1/webhooks/raw", content=chunks(10_000_000))
    assert (response.status_code, response.json()["detail"]) == (413, "the body is larger than 50000 bytes")
    response = await http.post("/bare/anything", content=chunks(10_000_000))
    assert response.status_code == 413
    assert reached == []  # no route ran: refused before anything parsed or authenticated it


async def test_bodies_within_their_route_limit_pass(client):
    http, reached = client
    assert (await http.post("/v1/notes", json={"text": "a" * 9_000})).json() == {"length": 9_000}
    assert (await http.post("/v1/webhooks/raw", content=chunks(40_000))).json() == {"length": 40_000}
    assert (await http.post("/v1/notes", content=b'{"text": "' + b"a" * 10_000 + b'"}')).status_code == 413  # 10 kB is the rest's
    assert reached == ["parsed", "raw"]


def test_per_route_limits_are_a_setting_and_the_longest_prefix_wins():
    settings = HeraldSettings(environment="test", max_body_bytes=2048, body_limits="/v1/webhooks/=4096, /v1/webhooks/stripe=8192")
    limits = body_limits(settings.max_body_bytes, settings.body_limit_table())
    middleware = BodyLimit(FastAPI(), limits=limits)
    assert [middleware.limit_for(p) for p in ("/v1/webhooks/stripe", "/v1/webhooks/twilio", "/v1/events")] == [8192, 4096, 2048]
    for wrong in ("v1=4096", "/v1/events=lots", "/v1/events=10"):
        with pytest.raises(ValidationError, match="HERALD_BODY_LIMITS"):
            HeraldSettings(environment="test", body_limits=wrong)
