"""A Web Push service stand-in that behaves like a browser and its push service together.

* ``POST /webpush/subscriptions`` creates a real subscription, as
  ``PushManager.subscribe()`` does: a P-256 key pair and a 16-byte auth secret
  kept here, an endpoint on this sandbox. Given Herald's push URL and a user's
  bearer token, it fetches Herald's VAPID key and registers the subscription
  through Herald's API, as a web page would.
* ``POST /webpush/push/{token}`` is the endpoint Herald pushes to. It checks
  the RFC 8030 headers, verifies the VAPID ``Authorization`` JWT (ES256, ``aud``,
  ``exp``, ``sub``) against the key in the header (and against the key the
  subscription was made with), decrypts the ``aes128gcm`` body with
  ``http_ece`` and shows the notification on the sandbox page.
* Faults: ``POST /api/faults {"provider": "webpush", ...}`` for every
  subscription, or ``"webpush:<token>"`` for one; a 3xx fault redirects to the
  same endpoint (Herald must not follow it). ``DELETE
  /webpush/subscriptions/{token}`` expires a subscription: later pushes get 410.
"""

from __future__ import annotations

import asyncio
import base64
import html
import json
import re
import secrets
import time
from dataclasses import dataclass
from typing import Any

import http_ece
import httpx
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from fastapi import APIRouter, HTTPException, Request, Response
from pydantic import BaseModel, Field

from .store import Received, store

router = APIRouter(prefix="/webpush", tags=["webpush"])
PROVIDER = "webpush"
MAX_BODY = 4096
_URGENCIES = {"very-low", "low", "normal", "high"}
_TOPIC = re.compile(r"^[A-Za-z0-9_-]{1,32}$")


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _unb64(value: str) -> bytes:
    return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))


@dataclass
class BrowserSubscription:
    """What a browser keeps for one push subscription."""

    token: str
    endpoint: str
    label: str
    private_key: ec.EllipticCurvePrivateKey
    auth: bytes
    application_server_key: str | None
    expired: bool = False

    @property
    def p256dh(self) -> str:
        return _b64(self.private_key.public_key().public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint))

    def as_json(self) -> dict[str, Any]:
        """What ``JSON.stringify(pushSubscription)`` gives in a browser."""
        return {"endpoint": self.endpoint, "expirationTime": None, "keys": {"p256dh": self.p256dh, "auth": _b64(self.auth)}}


subscriptions: dict[str, BrowserSubscription] = {}


class Registration(BaseModel):
    herald_url: str = Field(description="Herald's push service base URL, e.g. http://127.0.0.1:8105")
    authorization: str = Field(description="The user's 'Bearer <JWT>' header value")


class SubscribeIn(BaseModel):
    label: str = Field(default="browser", max_length=200)
    application_server_key: str | None = Field(default=None, description="The VAPID public key to bind to (fetched from Herald when registering)")
    herald: Registration | None = None


@router.post("/subscriptions", status_code=201, summary="Create a browser-like push subscription (and register it with Herald)")
async def subscribe(body: SubscribeIn, request: Request) -> dict[str, Any]:
    token = secrets.token_urlsafe(24)
    base = str(request.base_url).rstrip("/")
    key = body.application_server_key
    registered: dict[str, Any] | None = None
    async with httpx.AsyncClient(timeout=10) as client:
        if body.herald and key is None:
            answer = await client.get(f"{body.herald.herald_url.rstrip('/')}/v1/push/vapid-public-key")
            answer.raise_for_status()
            key = answer.json()["publicKey"]
        sub = BrowserSubscription(token, f"{base}/webpush/push/{token}", body.label, ec.generate_private_key(ec.SECP256R1()), secrets.token_bytes(16), key)
        if body.herald:
            answer = await client.post(
                f"{body.herald.herald_url.rstrip('/')}/v1/push/subscriptions",
                json=sub.as_json(),
                headers={"Authorization": body.herald.authorization, "User-Agent": "herald-sandbox-browser"},
            )
            is_json = answer.headers.get("content-type", "").startswith("application/json")
            registered = {"status": answer.status_code, "body": answer.json() if is_json else answer.text}
    if registered is None or registered["status"] < 300:
        subscriptions[token] = sub
    return {"token": token, "subscription": sub.as_json(), "registered": registered}


@router.get("/subscriptions", summary="The subscriptions this sandbox browser holds")
async def list_subscriptions() -> list[dict[str, Any]]:
    return [
        {"token": s.token, "label": s.label, "expired": s.expired, "application_server_key": s.application_server_key, **s.as_json()}
        for s in subscriptions.values()
    ]


@router.delete("/subscriptions/{token}", status_code=204, summary="Expire a subscription: pushes to it get 410 Gone")
async def expire(token: str) -> None:
    if token not in subscriptions:
        raise HTTPException(404, "no such subscription")
    subscriptions[token].expired = True


def _error(status: int, message: str) -> Response:
    return Response(json.dumps({"error": message}), status_code=status, media_type="application/json")


def verify_vapid(authorization: str, *, audience: str, expected_key: str | None) -> dict[str, Any]:
    """The claims of a valid ``vapid t=<jwt>, k=<key>`` header; raises ``ValueError`` saying what is wrong."""
    scheme, _, params = authorization.partition(" ")
    if scheme.lower() != "vapid":
        raise ValueError("Authorization scheme must be vapid")
    fields = dict(part.strip().split("=", 1) for part in params.split(",") if "=" in part)
    token, key = fields.get("t"), fields.get("k")
    if not token or not key:
        raise ValueError("vapid Authorization needs t= and k=")
    if expected_key is not None and key.rstrip("=") != expected_key.rstrip("="):
        raise PermissionError("VAPID key differs from the applicationServerKey of the subscription")
    public = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), _unb64(key))
    claims = jwt.decode(token, public, algorithms=["ES256"], audience=audience, options={"require": ["aud", "exp", "sub"]})
    if claims["exp"] > time.time() + 24 * 3600:
        raise ValueError("VAPID exp is more than 24 hours ahead")
    if not str(claims["sub"]).startswith(("mailto:", "https:")):
        raise ValueError("VAPID sub must be a mailto: or https: URL")
    return claims


async def _apply(fault: Any, request: Request) -> Response:
    if fault.status == 0:  # hang until the sender gives up (or two minutes pass)
        for _ in range(600):
            if await request.is_disconnected():
                break
            await asyncio.sleep(0.2)
        return Response(status_code=504)
    headers = {"Retry-After": str(fault.retry_after)} if fault.retry_after is not None else {}
    if 300 <= fault.status < 400:
        headers["Location"] = str(request.url)
    return Response(status_code=fault.status, headers=headers)


@router.post("/push/{token}", summary="The push endpoint: verify, decrypt, show")
async def receive(token: str, request: Request) -> Response:
    fault = store.take_fault(f"{PROVIDER}:{token}") or store.take_fault(PROVIDER)
    if fault is not None:
        return await _apply(fault, request)
    sub = subscriptions.get(token)
    if sub is None:
        return _error(404, "no such subscription")
    if sub.expired:
        return _error(410, "subscription expired")
    h = request.headers
    if not (h.get("ttl") or "").isdigit():
        return _error(400, "TTL header required")
    if h.get("urgency", "normal") not in _URGENCIES:
        return _error(400, "bad Urgency header")
    if "topic" in h and not _TOPIC.match(h["topic"]):
        return _error(400, "bad Topic header")
    origin = f"{request.url.scheme}://{request.url.netloc}"
    try:
        claims = verify_vapid(h.get("authorization", ""), audience=origin, expected_key=sub.application_server_key)
    except PermissionError as exc:
        return _error(403, str(exc))
    except (ValueError, jwt.InvalidTokenError) as exc:
        return _error(401, f"VAPID: {exc}")
    body = await request.body()
    if len(body) > MAX_BODY:
        return _error(413, f"payload of {len(body)} bytes is over {MAX_BODY}")
    if h.get("content-encoding") != "aes128gcm":
        return _error(415, "Content-Encoding must be aes128gcm")
    try:
        plain = http_ece.decrypt(body, private_key=sub.private_key, auth_secret=sub.auth, version="aes128gcm")
        notification = json.loads(plain)
    except Exception as exc:  # any failure means the payload was not encrypted for this subscription
        return _error(400, f"cannot decrypt: {type(exc).__name__}")
    received = store.add(
        Received(
            provider=PROVIDER,
            to=sub.label,
            subject=str(notification.get("title", "")),
            text=str(notification.get("body", "")),
            html=_card(notification),
            meta={
                "token": token,
                "notification": notification,
                "payload_bytes": len(plain),
                "encrypted_bytes": len(body),
                "ttl": int(h["ttl"]),
                "urgency": h.get("urgency"),
                "topic": h.get("topic"),
                "vapid": {"verified": True, "aud": claims["aud"], "sub": claims["sub"], "exp": claims["exp"]},
            },
        )
    )
    return Response(status_code=201, headers={"Location": f"/webpush/messages/{received.id}"})


def _card(n: dict[str, Any]) -> str:
    url = str(n.get("url", ""))
    link = f'<a href="{html.escape(url)}" target="_blank">{html.escape(url)}</a>' if url.startswith(("http://", "https://")) else html.escape(url)
    return (
        '<div style="font-family:system-ui;border:1px solid #ccc;border-radius:8px;padding:.6rem;max-width:24rem">'
        f"<strong>{html.escape(str(n.get('title', '')))}</strong><p>{html.escape(str(n.get('body', '')))}</p>"
        f"<small>{link} · {html.escape(str(n.get('category', '')))}</small></div>"
    )
