"""Service keys (``HERALD_API_KEYS``): named, scoped, optionally bound to CloudEvents sources, plaintext or hashed.

An entry is ``name:scope+scope=key``. ``key`` is the key itself, or ``sha256:<64 hex digits>``, its SHA-256: a
service that only verifies keys holds nothing a thief could call it with. Several entries may share a name (the
old and the new key while one is rotated); each is valid until removed. ``HERALD_API_KEY_SOURCES`` binds a name
to the CloudEvents ``source`` values its keys may publish (``name=source source,…``).
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass, field
from enum import StrEnum


class Scope(StrEnum):
    """What a service key may do."""

    publish = "publish"  # POST /v1/events at ingress
    recipients = "recipients"  # the directory and any user's preferences at the router
    traces = "traces"  # the decision traces, SMS spend
    admin = "admin"  # everything above, and the administrative actions (audited)


ALL_SCOPES = frozenset(Scope)
_HASHED = re.compile(r"sha256:([0-9a-fA-F]{64})")
_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")


@dataclass(frozen=True)
class ServiceKey:
    """One entry of ``HERALD_API_KEYS``."""

    name: str
    scopes: frozenset[Scope]
    secret: str = field(repr=False)  # the key itself, or its SHA-256 as "sha256:<hex>"
    scoped: bool = True  # False: written without scopes (development and tests only), so every scope
    sources: tuple[str, ...] | None = None  # the CloudEvents sources it may publish; None: any

    @property
    def hashed(self) -> bool:
        return self.secret.startswith("sha256:")

    def matches(self, key: str) -> bool:
        """Whether ``key`` is this entry's, in constant time."""
        if self.hashed:
            return hmac.compare_digest(hashlib.sha256(key.encode()).hexdigest(), self.secret.removeprefix("sha256:").lower())
        return hmac.compare_digest(key.encode(), self.secret.encode())

    def allows(self, scope: Scope) -> bool:
        return scope in self.scopes or Scope.admin in self.scopes

    def may_publish_from(self, source: str) -> bool:
        return self.sources is None or source in self.sources


def hash_service_key(key: str) -> str:
    """The hashed form of a key for ``HERALD_API_KEYS`` (``herald keys hash``)."""
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


def parse_service_keys(raw: str, sources: str = "") -> list[ServiceKey]:
    """``HERALD_API_KEYS`` (and ``HERALD_API_KEY_SOURCES``) as entries; ValueError naming the entry that is wrong."""
    bound: dict[str, tuple[str, ...]] = {}
    for entry in (e.strip() for e in sources.split(",") if e.strip()):
        name, sep, values = entry.partition("=")
        if not sep or not values.split():
            raise ValueError(f"HERALD_API_KEY_SOURCES entry {entry!r} is not of the form name=source [source…]")
        bound[name.strip()] = tuple(values.split())
    keys: list[ServiceKey] = []
    for entry in (e.strip() for e in raw.split(",") if e.strip()):
        label, sep, secret = entry.partition("=")
        name, colon, scope_list = label.strip().partition(":")
        if not sep or not secret.strip():
            raise ValueError(f"HERALD_API_KEYS entry {name!r} is not of the form name:scope+scope=key")
        if not _NAME.fullmatch(name):
            raise ValueError(f"HERALD_API_KEYS entry {name!r}: a name is 1-64 letters, digits, '.', '_' or '-'")
        secret = secret.strip()
        if secret.lower().startswith("sha256:") and not _HASHED.fullmatch(secret):
            raise ValueError(f"HERALD_API_KEYS entry {name!r}: a hashed key is sha256: and 64 hexadecimal digits")
        if colon:
            wanted = [s.strip() for s in scope_list.split("+") if s.strip()]
            unknown = [s for s in wanted if s not in ALL_SCOPES]
            if unknown or not wanted:
                raise ValueError(f"HERALD_API_KEYS entry {name!r}: scopes are {', '.join(Scope)} joined by '+' (not {', '.join(unknown) or 'none'})")
            scopes = frozenset(Scope(s) for s in wanted)
        else:
            scopes = ALL_SCOPES
        keys.append(ServiceKey(name, scopes, secret, scoped=bool(colon), sources=bound.get(name)))
    unbound = set(bound) - {k.name for k in keys}
    if unbound:
        raise ValueError(f"HERALD_API_KEY_SOURCES names {', '.join(sorted(unbound))}, not in HERALD_API_KEYS")
    return keys


def find_service_key(keys: list[ServiceKey], key: str) -> ServiceKey | None:
    """The entry ``key`` belongs to; every entry is compared, so the time taken does not say which matched."""
    found = None
    for entry in keys:
        if entry.matches(key) and found is None:
            found = entry
    return found
