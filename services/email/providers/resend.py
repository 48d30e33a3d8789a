"""The Resend HTTP API (``POST /emails``) through httpx, with the notification id as ``Idempotency-Key``."""

from __future__ import annotations

import itertools
import math
from email.message import EmailMessage
from typing import Any

import httpx

from shared import PermanentError, TransientError

from ..logic import http_failure
from ..settings import Settings

#: Connections per httpx client. httpcore's pool spends time per request that grows
#: with the number of requests it juggles, so many concurrent sends go through
#: several small clients rather than one big one (about 6x less CPU at 256 in flight).
CONNECTIONS_PER_CLIENT = 16

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
        per_client = min(CONNECTIONS_PER_CLIENT, settings.resend_max_connections)
        self.clients = [
            httpx.AsyncClient(
                base_url=settings.resend_api_base,
                headers={"Authorization": f"Bearer {settings.resend_api_key.get_secret_value()}", "User-Agent": "herald-email"},
                timeout=httpx.Timeout(settings.resend_timeout_seconds),
                limits=httpx.Limits(max_connections=per_client, max_keepalive_connections=per_client),
                follow_redirects=False,
            )
            for _ in range(math.ceil(settings.resend_max_connections / per_client))
        ]
        self._next = itertools.cycle(self.clients)

    async def send(self, message: EmailMessage, *, idempotency_key: str) -> str:
        client = next(self._next)
        try:
            response = await client.post("/emails", json=payload(message), headers={"Idempotency-Key": idempotency_key})
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
        for client in self.clients:
            await client.aclose()
