"""An SMTP server (aiosmtpd) standing in for the mail relay.

Listens on ``HERALD_SANDBOX_SMTP_PORT`` (default 2525) on loopback, keeps every
message it accepts in the store (provider ``smtp``) and answers faults injected
with ``POST /api/faults {"provider": "smtp", "status": 451}``: the status is the
SMTP reply code (4xx temporary, 5xx permanent), 0 hangs until the client gives
up; ``"message"`` sets the reply text (``535`` answers ``5.7.8 Authentication
credentials invalid`` unless told otherwise, as a relay refusing Herald's login
does). The ``X-Herald-Notification-Id`` header of each message is kept in its
``meta`` as it arrives (``notification_id``), so counting per notification
needs no parsing. ``HERALD_SANDBOX_SMTP_DELAY_MS`` (or ``PUT /api/smtp/delay``) makes every
answer slow, like a busy relay.
"""

from __future__ import annotations

import asyncio
import contextlib
import email
import email.policy
import logging
import os
import re
import socket
from collections.abc import AsyncIterator
from typing import Any

from aiosmtpd.controller import Controller
from fastapi import APIRouter
from pydantic import BaseModel, Field

from .store import Received, Store

PROVIDER = "smtp"
_HANG_SECONDS = 120.0
_REASONS = {421: "Service not available", 450: "Mailbox busy", 451: "Local error in processing", 452: "Insufficient storage",
            550: "Mailbox unavailable", 552: "Exceeded storage allocation", 553: "Mailbox name not allowed", 554: "Transaction failed",
            530: "5.7.0 Authentication required", 535: "5.7.8 Authentication credentials invalid"}
_NOTIFICATION_ID = re.compile(rb"^X-Herald-Notification-Id:[ \t]*([0-9A-Fa-f-]{36})", re.MULTILINE | re.IGNORECASE)

# aiosmtpd logs every SMTP command, addresses included, at INFO.
logging.getLogger("mail.log").setLevel(logging.WARNING)

delay = {"seconds": float(os.environ.get("HERALD_SANDBOX_SMTP_DELAY_MS", "0")) / 1000}
router = APIRouter(tags=["smtp"])


class Delay(BaseModel):
    ms: int = Field(ge=0, le=60_000)


@router.put("/api/smtp/delay", status_code=204, summary="Answer every SMTP message after this many milliseconds")
async def set_delay(body: Delay) -> None:
    delay["seconds"] = body.ms / 1000


def received(envelope: Any) -> Received:
    """One accepted message; parsed (subject, parts, headers) when it is first shown."""
    raw = envelope.original_content or envelope.content
    rcpt_tos = list(envelope.rcpt_tos)
    head = raw.split(b"\r\n\r\n", 1)[0]
    found = _NOTIFICATION_ID.search(head)
    meta: dict[str, Any] = {"mail_from": envelope.mail_from, "rcpt_tos": rcpt_tos}
    if found:
        meta["notification_id"] = found.group(1).decode().lower()

    def settle(message: Received) -> None:
        try:
            parsed = email.message_from_bytes(raw, policy=email.policy.default)
            text = parsed.get_body(("plain",))
            html = parsed.get_body(("html",))
            message.subject = str(parsed.get("Subject", ""))
            message.text = text.get_content() if text is not None else ""
            message.html = html.get_content() if html is not None else ""
            message.meta["headers"] = [[name, str(value)] for name, value in parsed.items()]
        except Exception as exc:  # shown on the page rather than failing every later listing
            message.meta["parse_error"] = f"{type(exc).__name__}: {exc}"
            message.text = raw.decode("utf-8", errors="replace")

    return Received(provider=PROVIDER, to=", ".join(rcpt_tos), meta=meta, settle=settle)


async def _hang(server: Any) -> None:
    """Answer nothing until the client gives up (or two minutes pass)."""
    for _ in range(int(_HANG_SECONDS * 10)):
        transport = getattr(server, "transport", None)
        if transport is None or transport.is_closing():
            return
        await asyncio.sleep(0.1)


class Handler:
    def __init__(self, store: Store) -> None:
        self.store = store

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802 - aiosmtpd's hook name
        if delay["seconds"]:
            await asyncio.sleep(delay["seconds"])
        fault = self.store.take_fault(PROVIDER)
        if fault is not None:
            if fault.status == 0:
                await _hang(server)
            code = fault.status if 400 <= fault.status < 600 else 451
            return f"{code} {fault.message or _REASONS.get(code, 'Injected fault')}"
        self.store.add(received(envelope))
        return "250 Message accepted for delivery"


def port() -> int:
    """``HERALD_SANDBOX_SMTP_PORT`` (default 2525); 0 takes any free port (tests that send no mail)."""
    wanted = int(os.environ.get("HERALD_SANDBOX_SMTP_PORT", "2525"))
    if wanted:
        return wanted
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.asynccontextmanager
async def lifespan(store: Store) -> AsyncIterator[None]:
    controller = Controller(Handler(store), hostname="127.0.0.1", port=port(), server_hostname="herald-sandbox", enable_SMTPUTF8=True)
    await asyncio.to_thread(controller.start)
    try:
        yield
    finally:
        await asyncio.to_thread(controller.stop)
