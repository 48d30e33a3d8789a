"""The Resend HTTP API (``POST /emails``) through httpx, with the notification id as ``Idempotency-Key``."""

from __future__ import annotations

from email.message import EmailMessage
from typing import Any

import httpx

from shared import PermanentError, TransientError

from ..logic import http_failure
from ..settings import Settings

#: Headers Resend is asked to add to the message as they are.
_PASSED_HEADERS = ("List-Unsubscribe", "List-Unsubscribe-Post", "X-Herald-Notification-Id")


def payload(message: EmailMessage) -> dict[str, Any]:
    """The JSON body of ``POST /emails`` for a message built by ``compose.build_message``."""
    html = message.get_body(("html",))
    text = message.get_body(("plain",))
    body: dict[str, Any] = {
        "from": str(message["From"]),
        "to": [str(message["To"])],
        "subject": str(message["Subject"]),
        "html": html.get_content() if html is not None else None,
        "text": text.get_content() if text is not None else None,
        "headers": {name: str(message[name]) for name in _PASSED_HEADERS if message[name] is not None},
    }
    if message["Reply-To"] is not None:
        body["reply_to"] = [str(message["Reply-To"])]
    return body


class ResendProvider:
    name = "resend"

    def __init__(self, settings: Settings) -> None:
        self.client = httpx.AsyncClient(
            base_url=settings.resend_api_base,
            headers={"Authorization": f"Bearer {settings.resend_api_key.get_secret_value()}", "User-Agent": "herald-email"},
            timeout=httpx.Timeout(settings.resend_timeout_seconds),
            limits=httpx.Limits(max_connections=settings.concurrency, max_keepalive_connections=settings.concurrency),
            follow_redirects=False,
        )

    async def send(self, message: EmailMessage, *, idempotency_key: str) -> str:
        try:
            response = await self.client.post("/emails", json=payload(message), headers={"Idempotency-Key": idempotency_key})
        except httpx.TimeoutException as exc:
            raise TransientError("timeout", type(exc).__name__) from None
        except httpx.TransportError as exc:
            raise TransientError("connection_error", f"{type(exc).__name__}: {exc}") from None
        if response.is_success:
            try:
                return str(response.json()["id"])
            except (ValueError, KeyError, TypeError):
                raise PermanentError("bad_provider_answer", response.text[:300]) from None
        raise http_failure(response.status_code, retry_after=response.headers.get("retry-after"), detail=response.text[:300])

    async def aclose(self) -> None:
        await self.client.aclose()
