"""Web Push through pywebpush's async API, over an aiohttp session that never reaches a private address.

Three guards stand between a stored endpoint and the network:

* ``resolve`` + ``logic.check_addresses`` before each send (and at subscribe time);
* ``GuardedResolver``, the session's DNS resolver, which refuses a name that
  resolves to a forbidden address at connect time, so a DNS answer that changes
  between the check and the connection is refused too;
* redirects are never followed (``allow_redirects=False`` on every request).

Endpoints named in ``HERALD_PUSH_DEV_HOSTS`` (the sandbox) are exempt from the
address checks, and only they.
"""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver
from cryptography.hazmat.primitives import serialization
from py_vapid import Vapid
from py_vapid.utils import b64urlencode
from pywebpush import WebPushException, webpush_async

from ..logic import Endpoint, EndpointRefused, forbidden_address



class ForbiddenAddress(OSError):
    """The push endpoint's host resolved to an address Herald must not connect to."""


class PushConnectionError(Exception):
    """The push service could not be reached (timeout, refused connection, DNS failure)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class PushResponse:
    """The push service's answer."""

    status: int
    retry_after: str | None = None
    location: str | None = None
    text: str = ""


class GuardedResolver(AbstractResolver):
    """Resolves like aiohttp's default resolver, but refuses names that resolve to a forbidden address."""

    def __init__(self, dev_hosts: set[str]) -> None:
        self.inner = DefaultResolver()
        self.dev_hosts = dev_hosts

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        results = await self.inner.resolve(host, port, family)
        if f"{host.lower()}:{port}" in self.dev_hosts:
            return results
        for result in results:
            reason = forbidden_address(result["host"])
            if reason:
                raise ForbiddenAddress(f"{host} resolves to a {reason}")
        return results

    async def close(self) -> None:
        await self.inner.close()


class _NoRedirects:
    """What pywebpush calls ``aiohttp_session``: posts with redirects off and Herald's timeout."""

    def __init__(self, session: aiohttp.ClientSession, timeout: aiohttp.ClientTimeout) -> None:
        self.session = session
        self.timeout = timeout

    async def post(self, url: str, *, timeout: Any = None, **params: Any) -> aiohttp.ClientResponse:
        return await self.session.post(url, allow_redirects=False, timeout=self.timeout, **params)


def load_vapid(private_key: str | None) -> tuple[Vapid, bool]:
    """The VAPID signer from a base64url private key; a fresh key pair (and True) when none is given."""
    if private_key:
        return Vapid.from_string(private_key=private_key), False
    vapid = Vapid()
    vapid.generate_keys()
    return vapid, True


def public_key(vapid: Vapid) -> str:
    """The applicationServerKey browsers subscribe with: base64url of the uncompressed public point."""
    raw = vapid.public_key.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    return b64urlencode(raw)


async def resolve(host: str, port: int, *, timeout: float) -> list[str]:
    """Every address ``host`` resolves to; empty when it does not resolve."""
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(timeout):
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, TimeoutError):
        return []
    return sorted({info[4][0] for info in infos})


class WebPushClient:
    """Sends encrypted, VAPID-signed pushes; one per service instance, opened in the app's lifespan."""

    def __init__(self, *, vapid: Vapid, subject: str, dev_hosts: list[str], timeout: float, resolve_timeout: float) -> None:
        self.vapid = vapid
        self.subject = subject
        self.dev_hosts = {h.lower() for h in dev_hosts}
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self.resolve_timeout = resolve_timeout
        self.public_key = public_key(vapid)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> WebPushClient:
        connector = aiohttp.TCPConnector(resolver=GuardedResolver(self.dev_hosts), limit=100, ttl_dns_cache=10)
        self._session = aiohttp.ClientSession(connector=connector, trust_env=False)
        return self

    async def __aexit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def addresses(self, endpoint: Endpoint) -> list[str]:
        """The addresses an endpoint's host resolves to now (the literal itself for an IP)."""
        if endpoint.is_ip_literal:
            return [endpoint.host.strip("[]")]
        return await resolve(endpoint.host, endpoint.port, timeout=self.resolve_timeout)

    async def send(
        self, *, endpoint: str, p256dh: str, auth: str, payload: bytes, ttl: int, urgency: str, topic: str
    ) -> PushResponse:
        """POST one encrypted push; raises ``EndpointRefused`` or ``PushConnectionError`` when it cannot be delivered."""
        assert self._session is not None, "WebPushClient used outside its context"
        subscription = {"endpoint": endpoint, "keys": {"p256dh": p256dh, "auth": auth}}
        try:
            response = await webpush_async(
                subscription,
                payload,  # type: ignore[arg-type]  # bytes are sent as they are
                vapid_private_key=self.vapid,
                vapid_claims={"sub": self.subject},  # a fresh dict: pywebpush adds aud and exp to it
                ttl=ttl,
                headers={"Urgency": urgency, "Topic": topic},
                aiohttp_session=_NoRedirects(self._session, self.timeout),  # type: ignore[arg-type]
            )
        except WebPushException as exc:
            if exc.response is None:
                raise PushConnectionError("push_error", exc.message) from None
            text = await exc.response.text() if hasattr(exc.response, "text") else ""
            return PushResponse(exc.status_code or 0, exc.retry_after, None, text[:300])
        except aiohttp.ClientConnectorError as exc:
            if isinstance(exc.os_error, ForbiddenAddress):
                raise EndpointRefused(str(exc.os_error)) from None
            raise PushConnectionError("connection_error", str(exc)) from None
        except TimeoutError as exc:
            raise PushConnectionError("timeout", str(exc) or "no answer in time") from None
        except aiohttp.ClientError as exc:
            raise PushConnectionError("connection_error", str(exc)) from None
        assert not isinstance(response, str)
        return PushResponse(response.status, response.headers.get("Retry-After"), response.headers.get("Location"))
