"""A stand-in for Twilio's Messages API that keeps what it receives and sends signed status callbacks.

``POST /2010-04-01/Accounts/{sid}/Messages.json`` takes the same form fields
(``To``, ``From``, ``Body``, ``StatusCallback``) with HTTP basic auth
(account sid : auth token) and answers with Twilio-shaped JSON and error
codes. When a ``StatusCallback`` is given, it posts ``sent`` and then the final
status to it, signed with ``X-Twilio-Signature`` using the auth token the
message was sent with, as Twilio does.

The final status is ``delivered`` unless told otherwise for a number:
``POST /api/twilio/receipts {"to": "+1...", "status": "undelivered", "error_code": 30003}``.
Faults for the API itself come from the shared fault queue (provider ``twilio``).

A message's log is erased as at Twilio: ``POST …/Messages/{MessageSid}.json`` with an empty
``Body`` redacts it (its text is emptied, ``redacted`` set in its meta), ``DELETE`` on the
same path deletes it (answered 204, then 404 for that SID).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import email.utils
import logging
import re
import secrets
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qsl

import httpx
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field
from twilio.request_validator import RequestValidator

from .store import Received, Store, store

log = logging.getLogger(__name__)

PROVIDER = "twilio"
API = "/2010-04-01/Accounts/{account_sid}/Messages.json"
CALLBACK_DELAY_SECONDS = 0.05

_GSM7 = set(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà\f^{}\\[~]|€"
)
_E164 = re.compile(r"^\+[1-9]\d{6,14}$")
# Twilio's magic test numbers and what they answer with.
_MAGIC_TO = {
    "+15005550001": (21211, "The 'To' number is not a valid phone number."),
    "+15005550002": (21612, "The 'To' phone number is not currently reachable via SMS."),
    "+15005550003": (21408, "Permission to send an SMS has not been enabled for the region indicated by the 'To' number."),
    "+15005550004": (21610, "Attempt to send to unsubscribed recipient"),
    "+15005550009": (21614, "'To' number is not a valid mobile number"),
}

router = APIRouter(tags=["sandbox: twilio"])
_receipts: dict[str, tuple[str, int | None]] = {}
_state: dict[str, Any] = {"http": None, "tasks": set()}


class ReceiptRule(BaseModel):
    to: str
    status: str = Field(pattern="^(delivered|undelivered|failed)$")
    error_code: int | None = None


def _error(status: int, code: int, message: str, *, headers: dict[str, str] | None = None) -> JSONResponse:
    body = {"code": code, "message": message, "more_info": f"https://www.twilio.com/docs/errors/{code}", "status": status}
    return JSONResponse(body, status_code=status, headers=headers)


def _credentials(request: Request) -> tuple[str, str] | None:
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        user, sep, password = base64.b64decode(value).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return (user, password) if sep else None


def _segments(body: str) -> int:
    gsm = all(ch in _GSM7 for ch in body)
    units = sum(2 if (gsm and ch in "\f^{}\\[~]|€") or (not gsm and ord(ch) > 0xFFFF) else 1 for ch in body)
    single, part = (160, 153) if gsm else (70, 67)
    return 1 if units <= single else -(-units // part)


async def _injected(request: Request) -> JSONResponse | None:
    """The answer of an injected fault, if one hits this request (creating, redacting or deleting a message)."""
    fault = store.take_fault(PROVIDER)
    if fault is None:
        return None
    if fault.status == 0:  # hang until the client gives up (or two minutes pass)
        for _ in range(600):
            if await request.is_disconnected():
                break
            await asyncio.sleep(0.2)
        return _error(504, 20500, "Injected hang")
    headers = {"Retry-After": str(fault.retry_after)} if fault.retry_after else None
    code = {429: 20429, 401: 20003, 404: 20404}.get(fault.status, 20500 if fault.status >= 500 else 21211)
    return _error(fault.status, code, fault.message or f"Injected fault {fault.status}", headers=headers)


@router.post(API, summary="Create a Message (Twilio-compatible)")
async def create_message(account_sid: str, request: Request) -> JSONResponse:
    creds = _credentials(request)
    if creds is None or creds[0] != account_sid or not creds[1]:
        return _error(401, 20003, "Authenticate", headers={"WWW-Authenticate": 'Basic realm="Twilio API"'})
    injected = await _injected(request)
    if injected is not None:
        return injected
    form = dict(parse_qsl((await request.body()).decode(), keep_blank_values=True))
    to, sender, body = form.get("To", ""), form.get("From", ""), form.get("Body", "")
    if not to:
        return _error(400, 21604, "A 'To' phone number is required.")
    if not _E164.match(to):
        return _error(400, 21211, f"The 'To' number {to} is not a valid phone number.")
    if to in _MAGIC_TO:
        code, message = _MAGIC_TO[to]
        return _error(400, code, message)
    if not sender:
        return _error(400, 21603, "A 'From' phone number is required.")
    if not body:
        return _error(400, 21602, "Message body is required.")
    if len(body) > 1600:
        return _error(400, 21617, "The concatenated message body exceeds the 1600 character limit.")
    sid = "SM" + secrets.token_hex(16)
    segments = _segments(body)
    now = email.utils.formatdate(usegmt=True)
    callback = form.get("StatusCallback")
    store.add(Received(provider=PROVIDER, to=to, subject=f"SMS from {sender} ({segments} segment{'s' if segments != 1 else ''})", text=body, meta={"sid": sid, "from": sender, "segments": segments, "status_callback": callback}))
    if callback:
        task = asyncio.create_task(_callbacks(callback, creds[1], account_sid=account_sid, sid=sid, to=to, sender=sender))
        _state["tasks"].add(task)
        task.add_done_callback(_state["tasks"].discard)
    message = {
        "account_sid": account_sid, "api_version": "2010-04-01", "body": body, "date_created": now, "date_sent": None,
        "date_updated": now, "direction": "outbound-api", "error_code": None, "error_message": None, "from": sender,
        "messaging_service_sid": None, "num_media": "0", "num_segments": str(segments), "price": None, "price_unit": "USD",
        "sid": sid, "status": "queued", "subresource_uris": {"media": f"/2010-04-01/Accounts/{account_sid}/Messages/{sid}/Media.json"},
        "to": to, "uri": f"/2010-04-01/Accounts/{account_sid}/Messages/{sid}.json",
    }
    return JSONResponse(message, status_code=201)


MESSAGE = "/2010-04-01/Accounts/{account_sid}/Messages/{message_sid}.json"


def _message(message_sid: str) -> Received | None:
    return next((m for m in store.messages if m.provider == PROVIDER and m.meta.get("sid") == message_sid), None)


@router.post(MESSAGE, summary="Redact a Message: update its Body to empty (Twilio-compatible)")
async def redact_message(account_sid: str, message_sid: str, request: Request) -> JSONResponse:
    creds = _credentials(request)
    if creds is None or creds[0] != account_sid or not creds[1]:
        return _error(401, 20003, "Authenticate", headers={"WWW-Authenticate": 'Basic realm="Twilio API"'})
    injected = await _injected(request)
    if injected is not None:
        return injected
    form = dict(parse_qsl((await request.body()).decode(), keep_blank_values=True))
    if form.get("Body", None) != "":
        return _error(400, 21602, "Only an empty Body (redaction) is supported here.")
    found = _message(message_sid)
    if found is None:
        return _error(404, 20404, f"The requested resource /Messages/{message_sid}.json was not found")
    found.as_dict()  # settled before it is changed
    found.text, found.meta["redacted"] = "", True
    return JSONResponse({"sid": message_sid, "account_sid": account_sid, "body": "", "status": "delivered", "to": found.to}, status_code=200)


@router.delete(MESSAGE, status_code=204, summary="Delete a Message (Twilio-compatible)", response_model=None)
async def delete_message(account_sid: str, message_sid: str, request: Request) -> Response | JSONResponse:
    creds = _credentials(request)
    if creds is None or creds[0] != account_sid or not creds[1]:
        return _error(401, 20003, "Authenticate", headers={"WWW-Authenticate": 'Basic realm="Twilio API"'})
    injected = await _injected(request)
    if injected is not None:
        return injected
    found = _message(message_sid)
    if found is None:
        return _error(404, 20404, f"The requested resource /Messages/{message_sid}.json was not found")
    store.messages.remove(found)
    return Response(status_code=204)


async def _callbacks(url: str, token: str, *, account_sid: str, sid: str, to: str, sender: str) -> None:
    final, error_code = _receipts.get(to, ("delivered", None))
    validator = RequestValidator(token)
    for status in ("sent", final):
        await asyncio.sleep(CALLBACK_DELAY_SECONDS)
        params = {"AccountSid": account_sid, "ApiVersion": "2010-04-01", "From": sender, "MessageSid": sid, "MessageStatus": status, "SmsSid": sid, "SmsStatus": status, "To": to}
        if status != "delivered" and status != "sent" and error_code is not None:
            params["ErrorCode"] = str(error_code)
        headers = {"X-Twilio-Signature": validator.compute_signature(url, params)}
        try:
            response = await _state["http"].post(url, data=params, headers=headers)
            store_status = f"callback {status}: {response.status_code}"
        except httpx.HTTPError as exc:
            store_status = f"callback {status}: {type(exc).__name__}"
        for message in store.messages:
            if message.meta.get("sid") == sid:
                message.meta.setdefault("callbacks", []).append(store_status)


@router.post("/api/twilio/receipts", status_code=204, summary="Set the final status callbacks will report for a number")
async def set_receipt(rule: ReceiptRule) -> None:
    _receipts[rule.to] = (rule.status, rule.error_code)


@router.delete("/api/twilio/receipts", status_code=204, summary="Report 'delivered' for every number again")
async def clear_receipts() -> None:
    _receipts.clear()


@contextlib.asynccontextmanager
async def lifespan(_: Store) -> AsyncIterator[None]:
    async with httpx.AsyncClient(timeout=10.0) as http:
        _state["http"] = http
        try:
            yield
        finally:
            for task in list(_state["tasks"]):
                task.cancel()
            _state["http"] = None
