"""A stand-in for the Resend email API: ``POST /emails`` as Resend answers it.

Requires ``Authorization: Bearer <key>``, validates ``from``, ``to`` and
``subject``, returns ``{"id": ...}`` and honours ``Idempotency-Key`` (the same
key returns the same id and is not stored twice; ``GET /api/resend/replays`` counts
such answers). Faults injected with
``POST /api/faults {"provider": "resend", "status": 429, "retry_after": 2}``
answer with that status (0 hangs until the client gives up);
``HERALD_SANDBOX_RESEND_DELAY_MS`` (or ``PUT /api/resend/delay``) slows every answer to a
well-formed send: the request is read, then the delay, then the mail is taken (even if the client
stopped waiting meanwhile) and answered.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Header, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from .store import Received, store

PROVIDER = "resend"
_HANG_SECONDS = 120.0

delay = {"seconds": float(os.environ.get("HERALD_SANDBOX_RESEND_DELAY_MS", "0")) / 1000}
_idempotent: dict[str, str] = {}
_replays: dict[str, int] = {}  # idempotency key -> requests answered with the id of an earlier send
router = APIRouter(tags=["resend"])


class Delay(BaseModel):
    ms: int = Field(ge=0, le=60_000)


@router.put("/api/resend/delay", status_code=204, summary="Answer every Resend request after this many milliseconds")
async def set_delay(body: Delay) -> None:
    delay["seconds"] = body.ms / 1000


async def _hang(request: Request) -> None:
    """Answer nothing until the client gives up (or two minutes pass)."""
    for _ in range(int(_HANG_SECONDS * 10)):
        if await request.is_disconnected():
            return
        await asyncio.sleep(0.1)


def _error(status: int, name: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"statusCode": status, "name": name, "message": message}, status_code=status, headers=headers)


@router.get("/api/resend/replays", summary="Requests answered from their Idempotency-Key instead of sending again")
async def replays() -> dict[str, Any]:
    return {"replays": sum(_replays.values()), "keys": dict(_replays)}


@router.post("/emails", summary="Send an email (the Resend API's shape)")
async def send_email(
    request: Request,
    authorization: Annotated[str | None, Header()] = None,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
) -> Any:
    if not authorization or not authorization.startswith("Bearer ") or len(authorization) <= len("Bearer "):
        return _error(401, "missing_api_key", "Missing API key in the authorization header.")
    fault = store.take_fault(PROVIDER)
    if fault is not None:
        if fault.status == 0:
            await _hang(request)
        headers = {"Retry-After": str(fault.retry_after)} if fault.retry_after is not None else None
        return _error(fault.status or 500, "injected_fault", fault.message or "Injected by the sandbox.", headers)
    try:
        body = await request.json()
    except ValueError:
        return _error(422, "validation_error", "The body is not JSON.")
    if delay["seconds"]:
        # A slow answer: the request is in, and it is taken even when the client stops waiting.
        await asyncio.sleep(delay["seconds"])
    if not isinstance(body, dict):
        return _error(422, "validation_error", "The body must be an object.")
    to = body.get("to")
    to = [to] if isinstance(to, str) else to
    missing = [f for f, ok in (("from", isinstance(body.get("from"), str)), ("to", isinstance(to, list) and to), ("subject", isinstance(body.get("subject"), str))) if not ok]
    if missing:
        return _error(422, "validation_error", f"Missing `{missing[0]}` field.")
    if idempotency_key and idempotency_key in _idempotent:
        _replays[idempotency_key] = _replays.get(idempotency_key, 0) + 1
        return {"id": _idempotent[idempotency_key]}
    message_id = str(uuid.uuid4())
    if idempotency_key:
        _idempotent[idempotency_key] = message_id
    store.add(
        Received(
            provider=PROVIDER,
            to=", ".join(map(str, to)),
            subject=body["subject"],
            text=body.get("text") or "",
            html=body.get("html") or "",
            meta={"id": message_id, "from": body["from"], "headers": body.get("headers") or {}, "idempotency_key": idempotency_key},
        )
    )
    return {"id": message_id}
