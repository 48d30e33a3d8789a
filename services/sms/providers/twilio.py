"""Twilio's Messages API through the official library's async client, at a configurable base URL."""

from __future__ import annotations

import asyncio
import contextvars
import logging
from dataclasses import dataclass
from typing import Any

import aiohttp
from twilio.base.exceptions import TwilioRestException, TwilioServiceException
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.rest import Client

from ..settings import Settings


@dataclass(frozen=True)
class Accepted:
    sid: str
    status: str
    num_segments: int | None


class ProviderError(Exception):
    """Twilio refused the message or could not be reached; ``status``/``code`` say how."""

    def __init__(self, message: str, *, status: int | None, code: int | None, retry_after: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.retry_after = retry_after  # the answer's Retry-After header, as sent


# The library's exceptions carry no response headers; the client notes Retry-After
# here, per task, so the send that failed can honour it.
_retry_after: contextvars.ContextVar[str | None] = contextvars.ContextVar("twilio_retry_after", default=None)


class _HttpClient(AsyncTwilioHttpClient):
    async def request(self, *args: Any, **kwargs: Any) -> Any:
        response = await super().request(*args, **kwargs)
        _retry_after.set((response.headers or {}).get("Retry-After"))
        return response


# The library logs every request and response at INFO; Herald logs each send itself, masked.
logging.getLogger("twilio").setLevel(logging.WARNING)


class TwilioProvider:
    """Sends one SMS; ``close()`` releases the HTTP session."""

    name = "twilio"

    def __init__(self, settings: Settings) -> None:
        self.http = _HttpClient(timeout=settings.twilio_timeout_seconds)
        self.client = Client(
            settings.twilio_account_sid,
            settings.twilio_auth_token.get_secret_value(),
            http_client=self.http,
        )
        # The base URL is a setting (Twilio or a stand-in); region/edge rewriting from the environment would undo it.
        self.client.edge = None
        self.client.region = None
        self.client.api.base_url = settings.twilio_api_base
        self.sender = settings.twilio_from
        self.callback = settings.status_callback_url
        self.timeout = settings.twilio_timeout_seconds

    async def send(self, *, to: str, body: str) -> Accepted:
        """Hand one message to Twilio; raises ``ProviderError``."""
        extra = {"status_callback": self.callback} if self.callback else {}
        message = await self._call(self.client.messages.create_async(to=to, from_=self.sender, body=body, **extra))
        segments = int(message.num_segments) if message.num_segments not in (None, "") else None
        return Accepted(sid=message.sid or "", status=str(message.status or ""), num_segments=segments)

    async def erase(self, sid: str, *, how: str) -> bool:
        """Erase one message's log at Twilio: ``delete`` it, or ``redact`` its body; False when Twilio has no such
        message (already gone). Raises ``ProviderError`` (a message still in progress cannot be deleted: code 20009)."""
        try:
            if how == "delete":
                return bool(await self._call(self.client.messages(sid).delete_async()))
            await self._call(self.client.messages(sid).update_async(body=""))
            return True
        except ProviderError as exc:
            if exc.status == 404:
                return False
            raise

    async def _call(self, request: Any) -> Any:
        """Await one library call within the timeout, its failures as ``ProviderError``."""
        _retry_after.set(None)
        try:
            async with asyncio.timeout(self.timeout):
                return await request
        except TwilioServiceException as exc:
            raise ProviderError(exc.detail or exc.title, status=exc.status, code=exc.code, retry_after=_retry_after.get()) from None
        except TwilioRestException as exc:
            code = exc.code if isinstance(exc.code, int) else None
            raise ProviderError(exc.msg, status=exc.status, code=code, retry_after=_retry_after.get()) from None
        except TimeoutError:
            raise ProviderError(f"no answer within {self.timeout}s", status=None, code=None) from None
        except aiohttp.ClientError as exc:
            raise ProviderError(f"{type(exc).__name__}: {exc}", status=None, code=None) from None

    async def close(self) -> None:
        await self.http.close()
