"""Pure decisions of the push service: which endpoints are allowed, what a push carries, what an answer means."""

from __future__ import annotations

import base64
import binascii
import hashlib
import ipaddress
import json
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from urllib.parse import urljoin, urlsplit

from cryptography.hazmat.primitives.asymmetric import ec

from shared import parse_retry_after

MAX_ENDPOINT_LENGTH = 2048
P256DH_LENGTH = 65
AUTH_LENGTH = 16

_NAT64 = ipaddress.ip_network("64:ff9b::/96")
#: Cloud instance-metadata services (AWS, AWS ECS, Alibaba, AWS IPv6); most are also caught as link-local or private.
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a) for a in ("169.254.169.254", "169.254.170.2", "100.100.100.200", "fd00:ec2::254")
)


class EndpointRefused(ValueError):
    """A subscription endpoint Herald will not send to; the message says why."""


@dataclass(frozen=True)
class Endpoint:
    """A checked endpoint: where a push would go."""

    url: str
    scheme: str
    host: str
    port: int
    dev: bool  # admitted by HERALD_PUSH_DEV_HOSTS (plain http and loopback allowed)

    @property
    def is_ip_literal(self) -> bool:
        return _ip(self.host) is not None


def endpoint_hash(endpoint: str) -> str:
    """The ledger target of a subscription: SHA-256 of its endpoint, hex."""
    return hashlib.sha256(endpoint.encode()).hexdigest()


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
    except ValueError:
        return None


def forbidden_address(address: str) -> str | None:
    """Why Herald must not connect to ``address`` (private, loopback, link-local, metadata...), or None if it is public."""
    ip = _ip(address)
    if ip is None:
        return "not an IP address"
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if embedded is None and ip in _NAT64:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None:
            inner = forbidden_address(str(embedded))
            if inner:
                return inner
    if ip in METADATA_ADDRESSES:
        return "cloud metadata address"
    for flag in ("is_unspecified", "is_loopback", "is_link_local", "is_multicast", "is_private", "is_reserved"):
        if getattr(ip, flag):
            return flag.removeprefix("is_").replace("_", "-") + " address"
    if not ip.is_global:
        return "non-public address"
    return None


def host_allowed(host: str, patterns: Iterable[str]) -> bool:
    """True when ``host`` is one of ``patterns`` (``*.example.com`` matches any subdomain of example.com)."""
    host = host.lower().rstrip(".")
    for pattern in patterns:
        pattern = pattern.lower().rstrip(".")
        if pattern.startswith("*."):
            if host.endswith(pattern[1:]) and len(host) > len(pattern) - 1:
                return True
        elif host == pattern:
            return True
    return False


def check_endpoint(url: str, *, allowed_hosts: Sequence[str], dev_hosts: Sequence[str]) -> Endpoint:
    """Parse and check a subscription endpoint without touching the network; raises ``EndpointRefused``."""
    if len(url) > MAX_ENDPOINT_LENGTH:
        raise EndpointRefused(f"endpoint is longer than {MAX_ENDPOINT_LENGTH} characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise EndpointRefused(f"endpoint is not a valid URL: {exc}") from None
    host = (parts.hostname or "").lower()
    if parts.scheme not in ("https", "http") or not host:
        raise EndpointRefused("endpoint must be an absolute https URL")
    if parts.username is not None or parts.password is not None:
        raise EndpointRefused("endpoint must not carry credentials")
    if any(ch.isspace() for ch in url):
        raise EndpointRefused("endpoint must not contain whitespace")
    effective_port = port or (443 if parts.scheme == "https" else 80)
    if f"{host}:{effective_port}" in {h.lower() for h in dev_hosts}:
        return Endpoint(url, parts.scheme, host, effective_port, dev=True)
    if parts.scheme != "https":
        raise EndpointRefused("endpoint must use https")
    if _ip(host) is not None:
        reason = forbidden_address(host)
        if reason:
            raise EndpointRefused(f"endpoint points at a {reason}")
    if not host_allowed(host, allowed_hosts):
        raise EndpointRefused(f"endpoint host {host} is not an allowed push service")
    if effective_port != 443:
        raise EndpointRefused("endpoint must use the standard https port")
    return Endpoint(url, parts.scheme, host, effective_port, dev=False)


def check_addresses(endpoint: Endpoint, addresses: Iterable[str]) -> None:
    """Refuse an endpoint whose host resolves to any address Herald must not reach (dev hosts excepted)."""
    if endpoint.dev:
        return
    found = list(addresses)
    if not found:
        raise EndpointRefused(f"endpoint host {endpoint.host} does not resolve")
    for address in found:
        reason = forbidden_address(address)
        if reason:
            raise EndpointRefused(f"endpoint host {endpoint.host} resolves to a {reason}")


def _b64url(value: str) -> bytes:
    if not value or any(c not in "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_=" for c in value):
        raise ValueError("must be base64url")
    try:
        return base64.urlsafe_b64decode(value.rstrip("=") + "=" * (-len(value.rstrip("=")) % 4))
    except (binascii.Error, ValueError):
        raise ValueError("must be base64url") from None


def check_p256dh(value: str) -> str:
    """The browser's public key: base64url of an uncompressed P-256 point (65 bytes); returned unpadded."""
    raw = _b64url(value)
    if len(raw) != P256DH_LENGTH or raw[0] != 4:
        raise ValueError(f"must be a {P256DH_LENGTH}-byte uncompressed P-256 point")
    try:
        ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), raw)
    except ValueError:
        raise ValueError("is not a point on the P-256 curve") from None
    return value.rstrip("=")


def check_auth(value: str) -> str:
    """The browser's auth secret: base64url of 16 bytes; returned unpadded."""
    if len(_b64url(value)) != AUTH_LENGTH:
        raise ValueError(f"must be {AUTH_LENGTH} bytes")
    return value.rstrip("=")


def absolute_url(url: str | None, frontend_url: str) -> str:
    """The link a push opens: absolute, made so from the front-end URL when it is a path or missing."""
    base = frontend_url.rstrip("/") + "/"
    if not url:
        return frontend_url
    if urlsplit(url).scheme in ("http", "https"):
        return url
    return urljoin(base, url.lstrip("/"))


def _encode(payload: dict[str, str]) -> bytes:
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()


def _cut(text: str, chars: int) -> str:
    return text if len(text) <= chars else text[: max(chars - 1, 0)].rstrip() + "…"


def _shrink(payload: dict[str, str], field: str, limit: int) -> bool:
    """Cut ``payload[field]`` to the longest prefix that fits; True when it fits."""
    text = payload[field]
    low, high = 0, len(text)
    while low < high:
        mid = (low + high + 1) // 2
        if len(_encode({**payload, field: _cut(text, mid)})) <= limit:
            low = mid
        else:
            high = mid - 1
    payload[field] = _cut(text, low)
    return len(_encode(payload)) <= limit


def build_payload(
    *, title: str, body: str, url: str, notification_id: uuid.UUID, category: str, limit: int
) -> tuple[bytes, bool]:
    """The JSON a push carries, at most ``limit`` bytes; True when the body (then the title) had to be shortened."""
    payload = {"title": title, "body": body, "url": url, "notification_id": str(notification_id), "category": category}
    if len(_encode(payload)) <= limit:
        return _encode(payload), False
    if not _shrink(payload, "body", limit) and not _shrink(payload, "title", limit):
        raise ValueError(f"push payload does not fit in {limit} bytes even without body and title")
    return _encode(payload), True


def urgency(*, critical: bool, category: str) -> str:
    """RFC 8030 Urgency: high for critical notifications, low for tips and promotions, normal otherwise."""
    if critical:
        return "high"
    return "low" if category in ("learning_tips", "promotional") else "normal"


def topic(notification_id: uuid.UUID) -> str:
    """RFC 8030 Topic (≤ 32 base64url characters): a re-sent notification replaces its undelivered copy."""
    return base64.urlsafe_b64encode(notification_id.bytes).decode().rstrip("=")


class Answer(StrEnum):
    """What a push service's HTTP status means for the subscription and the dispatch."""

    sent = "sent"
    gone = "gone"  # 404, 410: the subscription no longer exists
    permanent = "permanent"  # 413 and other 4xx, redirects: will fail the same way again
    throttled = "throttled"  # 429: transient, not the subscription's fault
    misconfigured = "misconfigured"  # 401/403: the push service refused Herald's VAPID signature: the channel pauses
    transient = "transient"  # 5xx: transient


VAPID_REJECTED = "vapid_rejected"


def classify(status: int) -> Answer:
    """The meaning of a push service's answer."""
    if 200 <= status < 300:
        return Answer.sent
    if status in (404, 410):
        return Answer.gone
    if status == 429:
        return Answer.throttled
    if status in (401, 403):
        return Answer.misconfigured
    if status >= 500:
        return Answer.transient
    return Answer.permanent



class Outcome(StrEnum):
    """What happened to one subscription's delivery of a dispatch."""

    sent = "sent"
    already = "already"  # sent (or finished) by an earlier attempt: not sent again
    removed = "removed"  # the endpoint is gone; the subscription was deleted
    failed = "failed"  # permanently
    retry = "retry"  # transiently; re-sent on the dispatch's next attempt


@dataclass(frozen=True)
class TargetResult:
    outcome: Outcome
    reason: str = ""
    retry_after: float | None = None
    message_id: str | None = None


@dataclass(frozen=True)
class Verdict:
    """The dispatch-level result of delivering to every subscription."""

    state: str  # "sent", "retry", "failed"
    reason: str
    retry_after: float | None = None
    summary: str = ""


def result_of(status: int, *, retry_after: str | None = None, location: str | None = None, now: datetime | None = None) -> TargetResult:
    """One subscription's result from the push service's answer."""
    answer = classify(status)
    reason = "redirect_refused" if 300 <= status < 400 else f"http_{status}"
    if answer is Answer.sent:
        return TargetResult(Outcome.sent, message_id=location)
    if answer is Answer.gone:
        return TargetResult(Outcome.removed, reason)
    if answer is Answer.permanent:
        return TargetResult(Outcome.failed, reason)
    if answer is Answer.misconfigured:
        return TargetResult(Outcome.retry, VAPID_REJECTED)
    return TargetResult(Outcome.retry, reason, retry_after=parse_retry_after(retry_after, now=now))


def verdict(results: Sequence[TargetResult]) -> Verdict:
    """Decide the dispatch's outcome from its subscriptions' results.

    Any transient failure makes the whole dispatch retry (the ones already sent are
    skipped next time); otherwise it is sent when at least one subscription has it,
    and failed when none does.
    """
    counts = {o: sum(1 for r in results if r.outcome is o) for o in Outcome}
    summary = " ".join(f"{o.value}={n}" for o, n in counts.items() if n)
    retries = [r for r in results if r.outcome is Outcome.retry]
    if retries:
        after = [r.retry_after for r in retries if r.retry_after is not None]
        return Verdict("retry", retries[0].reason, max(after) if after else None, summary)
    if counts[Outcome.sent] or counts[Outcome.already]:
        return Verdict("sent", "", None, summary)
    failures = [r for r in results if r.outcome in (Outcome.failed, Outcome.removed)]
    reasons = sorted({r.reason for r in failures})
    return Verdict("failed", reasons[0] if len(reasons) == 1 else "all_subscriptions_failed", None, summary)
