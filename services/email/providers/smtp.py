"""SMTP relay through aiosmtplib, with a small pool of open connections."""

from __future__ import annotations

import asyncio
import logging
import ssl
from email.message import EmailMessage

import aiosmtplib

from shared import Misconfigured, TransientError

from ..compose import Email
from ..logic import smtp_failure
from ..settings import Settings

log = logging.getLogger(__name__)

#: aiosmtplib's start_tls for each HERALD_SMTP_STARTTLS: None upgrades whenever the relay offers STARTTLS.
_START_TLS = {"off": False, "opportunistic": None, "required": True}


class SmtpProvider:
    """Sends over up to ``smtp_pool_size`` connections, reusing idle ones (one transaction at a time each)."""

    name = "smtp"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._idle: list[aiosmtplib.SMTP] = []
        self._slots = asyncio.Semaphore(settings.smtp_pool_size)

    def _client(self) -> aiosmtplib.SMTP:
        s = self.settings
        return aiosmtplib.SMTP(
            hostname=s.smtp_host,
            port=s.smtp_port,
            timeout=s.smtp_timeout_seconds,
            use_tls=s.smtp_use_tls,
            start_tls=False if s.smtp_use_tls else _START_TLS[s.smtp_starttls],
            validate_certs=True,
            cert_bundle=s.smtp_ca_file,
            username=s.smtp_username,
            password=s.smtp_password.get_secret_value() if s.smtp_password else None,
        )

    async def send(self, email: Email, *, idempotency_key: str) -> str:
        message = email.message()
        async with self._slots:
            reused = bool(self._idle)
            client = self._idle.pop() if reused else self._client()
            try:
                await self._send(client, message)
            except aiosmtplib.SMTPServerDisconnected:
                client.close()
                if not reused:
                    raise TransientError("smtp_disconnected") from None
                # An idle connection the relay had closed: nothing was sent on it, try a fresh one once.
                client = self._client()
                try:
                    await self._send(client, message)
                except BaseException:
                    client.close()
                    raise
            except BaseException:
                client.close()
                raise
            self._idle.append(client)
        return email.message_id

    async def _send(self, client: aiosmtplib.SMTP, message: EmailMessage) -> None:
        try:
            if not client.is_connected:
                await client.connect()
            await client.send_message(message)
        except aiosmtplib.SMTPServerDisconnected:
            raise
        except aiosmtplib.SMTPRecipientsRefused as exc:
            refused = exc.recipients[0] if exc.recipients else None
            raise smtp_failure(refused.code if refused else 550, detail=refused.message if refused else str(exc)) from None
        except aiosmtplib.SMTPResponseException as exc:
            raise smtp_failure(exc.code, detail=exc.message) from None
        except aiosmtplib.SMTPTimeoutError as exc:
            raise TransientError("timeout", str(exc)) from None
        except (aiosmtplib.SMTPException, OSError) as exc:
            text = f"{type(exc).__name__}: {exc}"
            if isinstance(exc, ssl.SSLCertVerificationError) or "CERTIFICATE_VERIFY_FAILED" in text:
                # Never a fall back to plain text: the relay's certificate (or HERALD_SMTP_CA_FILE) is Herald's to fix.
                raise Misconfigured("smtp_tls_certificate", text) from None
            if "STARTTLS extension not supported" in text:
                raise Misconfigured("smtp_starttls_unavailable", f"HERALD_SMTP_STARTTLS=required, but the relay offers no STARTTLS: {text}") from None
            raise TransientError("smtp_connection", text) from None

    async def aclose(self) -> None:
        idle, self._idle = self._idle, []
        for client in idle:
            try:
                await asyncio.wait_for(client.quit(), timeout=2)
            except Exception:  # closing anyway
                client.close()
