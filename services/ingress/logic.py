"""Pure decisions of the ingress: HTTP binding modes, envelope checks, key rules, webhook mappings."""

from __future__ import annotations

import datetime as dt
import fnmatch
import hashlib
import json
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any
from urllib.parse import unquote

from pydantic import ValidationError

from shared import CloudEvent
from shared.events import EVENT_MODELS, domain_areas

STRUCTURED = "application/cloudevents+json"
BATCH = "application/cloudevents-batch+json"
JSON = "application/json"
CE_PREFIX = "ce-"
#: Binary-mode headers that are envelope attributes; other ``ce-*`` headers are extensions.
CE_REQUIRED = ("specversion", "id", "source", "type")
KEY_PREFIX = "hk_"


class Refusal(Exception):
    """A request refused as a whole, with the HTTP status that says why."""

    def __init__(self, status: int, detail: str, *, retry_after: int | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.retry_after = retry_after


class Mode(StrEnum):
    structured = "structured"
    batch = "batch"
    binary = "binary"
    plain = "plain"  # application/json: one event, or a list of them


def media_type(content_type: str | None) -> tuple[str, dict[str, str]]:
    """``"Application/JSON; charset=UTF-8"`` → ``("application/json", {"charset": "utf-8"})``."""
    if not content_type:
        return "", {}
    kind, *params = content_type.split(";")
    parsed = {}
    for param in params:
        name, _, value = param.partition("=")
        parsed[name.strip().lower()] = value.strip().strip('"').lower()
    return kind.strip().lower(), parsed


def is_json(kind: str) -> bool:
    return kind == JSON or (kind.startswith("application/") and kind.endswith("+json"))


def mode_of(content_type: str | None, headers: Mapping[str, str]) -> Mode:
    """Which CloudEvents HTTP binding mode a request uses; refuses (415) what is none of them."""
    kind, params = media_type(content_type)
    if params.get("charset", "utf-8") not in {"utf-8", "utf8"}:
        raise Refusal(415, f"only UTF-8 bodies are accepted, not {params['charset']}")
    if kind == STRUCTURED:
        return Mode.structured
    if kind == BATCH:
        return Mode.batch
    if any(name.lower() == "ce-specversion" for name in headers):
        if kind and not is_json(kind):
            raise Refusal(415, f"binary mode accepts JSON data only (application/json or */*+json), not {kind}")
        return Mode.binary
    if kind == JSON:
        return Mode.plain
    raise Refusal(
        415,
        f"send {STRUCTURED}, {BATCH}, {JSON}, or binary mode (ce-* headers with JSON data); got {kind or 'no Content-Type'}",
    )


def parse_json(body: bytes) -> Any:
    """The JSON document in ``body``; refuses (400) what is not JSON."""
    try:
        return json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise Refusal(400, f"the body is not valid JSON: {exc}") from None


def items_of(mode: Mode, document: Any, *, max_batch: int) -> tuple[list[Any], bool]:
    """The raw events a structured/batch/plain body holds, and whether it is a batch."""
    if mode is Mode.batch or (mode is Mode.plain and isinstance(document, list)):
        if not isinstance(document, list):
            raise Refusal(400, f"a {BATCH} body is a JSON array of events")
        if not document:
            raise Refusal(422, "the batch is empty")
        if len(document) > max_batch:
            raise Refusal(413, f"at most {max_batch} events per batch")
        return document, True
    if not isinstance(document, dict):
        raise Refusal(422, "a structured-mode body is one JSON object (send a batch as a JSON array)")
    return [document], False


def from_binary(headers: Mapping[str, str], content_type: str | None, body: bytes) -> dict[str, Any]:
    """The event a binary-mode request carries: attributes from ``ce-*`` headers, data from the body."""
    event: dict[str, Any] = {}
    for name, value in headers.items():
        lowered = name.lower()
        if lowered.startswith(CE_PREFIX) and len(lowered) > len(CE_PREFIX):
            # CloudEvents HTTP binding: header values are percent-encoded.
            event[lowered[len(CE_PREFIX) :]] = unquote(value)
    missing = [f"ce-{attribute}" for attribute in CE_REQUIRED if attribute not in event]
    if missing:
        raise Refusal(422, f"binary mode needs the headers {', '.join(missing)}")
    if "data" in event or "datacontenttype" in event:
        raise Refusal(422, "ce-data and ce-datacontenttype are not headers of binary mode; data is the body and Content-Type its type")
    kind, _ = media_type(content_type)
    if kind:
        event["datacontenttype"] = kind
    if body:
        event["data"] = parse_json(body)
    return event


def known_areas(extra: Iterable[str] = ()) -> frozenset[str]:
    return frozenset(domain_areas()) | frozenset(extra)


def check_event(raw: Any, *, areas: frozenset[str]) -> CloudEvent:
    """The valid CloudEvent ``raw`` is; raises ``Refusal(422)`` saying what is wrong."""
    if not isinstance(raw, dict):
        raise Refusal(422, "an event is a JSON object")
    try:
        event = CloudEvent.model_validate(raw)
    except ValidationError as exc:
        raise Refusal(422, _describe(exc)) from None
    if event.area not in areas:
        raise Refusal(422, f"no domain topic for area {event.area!r} (type {event.type!r}); known areas: {', '.join(sorted(areas))}")
    problem = problems_of(event)
    if problem:
        raise Refusal(422, problem)
    return event


def _describe(exc: ValidationError, prefix: str = "") -> str:
    return "; ".join(f"{prefix}{'.'.join(map(str, e['loc'])) or 'event'}: {e['msg']}" for e in exc.errors()[:5])


def problems_of(event: CloudEvent) -> str | None:
    """Why a known type's ``data`` is invalid, or None when it is fine (unknown types pass)."""
    model = EVENT_MODELS.get(event.type)
    if model is None:
        return None
    try:
        model.model_validate(event.data)
    except ValidationError as exc:
        return _describe(exc, "data.")
    return None


def partition_key(event: CloudEvent) -> str:
    """Events about one subject stay in order: key by subject, else by id."""
    return event.subject or event.id


def dedupe_key(namespace: str, event: CloudEvent) -> str:
    """The Redis key remembering that ``source`` + ``id`` was accepted."""
    digest = hashlib.sha256(f"{event.source}\x00{event.id}".encode()).hexdigest()
    return f"{namespace}ingress:seen:{digest}"


# -- producer keys -------------------------------------------------------------


def new_key() -> str:
    """A fresh producer key (shown once; only its digest is stored)."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> bytes:
    """The stored digest of a key. Keys are 256-bit random, so a fast hash is enough: nothing to brute-force."""
    return hashlib.sha256(key.encode()).digest()


def key_prefix(key: str) -> str:
    """The part of a key shown in listings, to tell keys apart."""
    return key[: len(KEY_PREFIX) + 6]


def type_allowed(event_type: str, patterns: Iterable[str]) -> bool:
    """Whether a key with these glob patterns (``booking.*``, ``*``) may publish ``event_type``."""
    return any(fnmatch.fnmatchcase(event_type, pattern) for pattern in patterns)


def retry_after(milliseconds: int) -> int:
    """Whole seconds to wait, at least one."""
    return max(1, -(-milliseconds // 1000))


# -- Stripe --------------------------------------------------------------------

STRIPE_TYPES = {
    "payout.paid": "payout.paid",
    "payment_intent.payment_failed": "payment.failed",
    "invoice.payment_failed": "payment.failed",
}


@dataclass(frozen=True)
class Ignored:
    """A webhook that is fine but asks nothing of Herald."""

    reason: str


def _moment(timestamp: Any) -> dt.datetime | None:
    if not isinstance(timestamp, int) or isinstance(timestamp, bool):
        return None
    try:
        return dt.datetime.fromtimestamp(timestamp, dt.UTC)
    except (OverflowError, OSError, ValueError):
        return None


def _iso_date(timestamp: Any) -> str | None:
    moment = _moment(timestamp)
    return moment.date().isoformat() if moment else None


def _event_time(timestamp: Any) -> str | None:
    moment = _moment(timestamp)
    return moment.isoformat() if moment else None


def _field(obj: Any, *path: str) -> Any:
    """``obj[a][b]…``, or None where a step is missing or not an object."""
    for name in path:
        if not isinstance(obj, Mapping):
            return None
        obj = obj.get(name)
    return obj


def _dict(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def stripe_user(obj: Mapping[str, Any], key: str) -> str | None:
    """The user id in the object's ``metadata[key]`` (for invoices also the subscription's metadata)."""
    candidates = [
        _dict(obj.get("metadata")),
        _dict(_field(obj, "parent", "subscription_details", "metadata")),
        _dict(_field(obj, "subscription_details", "metadata")),
    ]
    for metadata in candidates:
        value = metadata.get(key)
        if isinstance(value, str) and value.strip():
            return value.strip()
    return None


def from_stripe(event: Mapping[str, Any], *, source: str, user_key: str) -> CloudEvent | Ignored:
    """The domain event a verified Stripe event stands for, or why it is ignored."""
    stripe_type = event.get("type")
    herald_type = STRIPE_TYPES.get(stripe_type) if isinstance(stripe_type, str) else None
    if herald_type is None:
        return Ignored(f"Stripe event type {stripe_type!r} is not one Herald acts on")
    obj = _dict(_field(event, "data", "object"))
    user_id = stripe_user(obj, user_key)
    if user_id is None:
        return Ignored(f"the {obj.get('object', 'object')} has no metadata[{user_key!r}] naming the user")
    currency = str(obj.get("currency") or "").upper()
    if herald_type == "payout.paid":
        data: dict[str, Any] = {
            "user_id": user_id,
            "payout_id": obj.get("id"),
            "amount": obj.get("amount"),
            "currency": currency,
            "arrival_date": _iso_date(obj.get("arrival_date")),
        }
    elif event["type"] == "payment_intent.payment_failed":
        error = _dict(obj.get("last_payment_error"))
        data = {
            "user_id": user_id,
            "amount": obj.get("amount"),
            "currency": currency,
            "reason": error.get("message") or error.get("decline_code") or error.get("code"),
            "booking_id": _dict(obj.get("metadata")).get("booking_id"),
        }
    else:
        data = {
            "user_id": user_id,
            "amount": obj.get("amount_due"),
            "currency": currency,
            "reason": "Invoice payment failed",
            "booking_id": _dict(obj.get("metadata")).get("booking_id"),
        }
    return check_event(
        {
            "specversion": "1.0",
            "id": str(event.get("id")),
            "source": source,
            "type": herald_type,
            "time": _event_time(event.get("created")),
            "subject": user_id,
            "data": {k: v for k, v in data.items() if v is not None},
            "stripeeventtype": stripe_type,
        },
        areas=known_areas(),
    )


# -- Standard Webhooks partners ------------------------------------------------


@dataclass(frozen=True)
class PartnerMapping:
    """How one partner's webhooks become domain events."""

    source: str
    types: Mapping[str, str]  # the partner's event type → Herald's
    subject: str | None = None  # the field of data naming the subject, if any


def mappings_from(document: Mapping[str, Any]) -> dict[str, PartnerMapping]:
    """The partner table of a webhooks mapping document (see ``webhooks.yaml``)."""
    partners = document.get("partners") or {}
    table = {}
    for name, entry in partners.items():
        types = entry.get("types") or {}
        if not isinstance(types, dict) or not types:
            raise ValueError(f"partner {name!r} maps no types")
        table[str(name)] = PartnerMapping(source=entry.get("source") or f"partner:{name}", types=types, subject=entry.get("subject"))
    return table


def from_partner(payload: Any, mapping: PartnerMapping, *, webhook_id: str, timestamp: int) -> CloudEvent | Ignored:
    """The domain event a verified Standard Webhooks payload (``{"type", "data"}``) stands for."""
    if not isinstance(payload, dict) or not isinstance(payload.get("type"), str):
        raise Refusal(422, 'a Standard Webhooks payload is a JSON object with a "type" and a "data" field')
    herald_type = mapping.types.get(payload["type"])
    if herald_type is None:
        return Ignored(f"type {payload['type']!r} is not mapped")
    data = payload.get("data")
    subject = data.get(mapping.subject) if mapping.subject and isinstance(data, dict) else None
    raw = {
        "specversion": "1.0",
        "id": webhook_id,
        "source": mapping.source,
        "type": herald_type,
        "time": payload.get("timestamp") or _event_time(timestamp),
        "data": data,
    }
    if isinstance(subject, str) and subject:
        raw["subject"] = subject
    return check_event(raw, areas=known_areas())
