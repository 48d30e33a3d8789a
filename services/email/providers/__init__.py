"""Where email leaves Herald: one small interface, an SMTP relay or the Resend HTTP API.

    EmailProvider.send(email, idempotency_key=) -> provider message id
        raises TransientError (timeout, connection lost, 4xx SMTP reply, HTTP 408/429/5xx)
            or PermanentError (5xx SMTP reply, other HTTP 4xx)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from ..settings import Settings

if TYPE_CHECKING:
    from ..compose import Email


class EmailProvider(Protocol):
    name: str

    async def send(self, email: Email, *, idempotency_key: str) -> str:
        """Hand one message over; the provider's id for it."""
        ...

    async def aclose(self) -> None:
        """Close connections."""
        ...


def make_provider(settings: Settings) -> EmailProvider:
    """The provider ``HERALD_EMAIL_PROVIDER`` names."""
    if settings.email_provider == "resend":
        from .resend import ResendProvider

        return ResendProvider(settings)
    from .smtp import SmtpProvider

    return SmtpProvider(settings)


__all__ = ["EmailProvider", "make_provider"]
