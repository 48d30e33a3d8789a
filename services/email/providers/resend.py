"""The Resend HTTP API (``POST /emails``) through httpx, with the notification id as ``Idempotency-Key``."""

from __future__ import annotations

import itertools
import math
from typing import Any

import httpx

from shared import PermanentError, TransientError

from ..compose import Email
from ..logic import http_failure
from ..settings import Settings

#: Connections per httpx client. httpcore's pool spends time per request that grows
#: with the number of requests it juggles, so many concurrent sends go through
#: several small clients rather than one big one (about 6x less CPU at 256 in flight).
CONNECTIONS_PER_CLIENT = 16

def payload(email: Email) -> dict[str, Any]:
    """The JSON body of ``POST /emails``; Resend adds the extra headers to the message as they are."""
    body: dict[str, Any] = {
        "from": str(email.sender),
        "to": [str(email.to)],
        "subject": email.subject,
        "html": email.html,
        "text": email.text,
        "headers": dict(email.headers),
    }
    if email.reply_to is not None:
        body["reply_to"] = [str(email.reply_to)]
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

    async def send(self, email: Email, *, idempotency_key: str) -> str:
        client = next(self._next)
        try:
            response = await client.post("/emails", json=payload(email), headers={"Idempotency-Key": idempotency_key})
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
