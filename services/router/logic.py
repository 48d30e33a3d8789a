"""Pure routing decisions: from one domain event to dispatches, no I/O."""

from __future__ import annotations

import functools
import json
import re
import string
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, time, timedelta
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import phonenumbers
from email_validator import EmailNotValidError, validate_email
from pydantic import ValidationError

from shared import Category, Channel, CloudEvent, Dispatch, InvalidMessage, Recipient, notification_id, utcnow
from shared.events import EVENT_MODELS

from .catalogue import Catalogue, Notification

#: Event types that keep the recipients directory current.
DIRECTORY_TYPES = frozenset({"user.created", "user.updated", "user.deleted"})

#: Why a recipient × channel got nothing (the ``reason`` of a suppressed decision).
REASONS = ("user_deleted", "preference_off", "no_address", "phone_unverified")

Preferences = Mapping[tuple[str, str], bool]

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_LOCALE = re.compile(r"^[a-z]{2,3}([_-][A-Za-z0-9]{2,8})*$")


@dataclass(frozen=True)
class Contact:
    """What the router knows of a recipient (from the recipients directory)."""

    user_id: str
    email: str | None = None
    phone: str | None = None
    phone_verified: bool = False
    locale: str = "en"
    timezone: str = "UTC"
    deleted: bool = False
    known: bool = True  # False: not in the recipients directory


@dataclass(frozen=True)
class Profile:
    """A recipient's contact, explicit preference choices ((category, channel) → enabled) and quiet hours."""

    contact: Contact
    preferences: Preferences = field(default_factory=dict)
    quiet: tuple[time, time] | None = None  # (start, end) in the user's time zone: non-critical email, SMS and push wait


    @classmethod
    def unknown(cls, user_id: str, preferences: Preferences | None = None) -> Profile:
        return cls(Contact(user_id=user_id, known=False), preferences or {})


@dataclass(frozen=True)
class Decision:
    """What the router decided for one recipient × channel of one notification, and why."""

    notification: Notification
    user_id: str
    channel: Channel
    dispatch: Dispatch | None
    reason: str  # "routed" when dispatched, else why not
    detail: str = ""

    @property
    def routed(self) -> bool:
        return self.dispatch is not None


@dataclass(frozen=True)
class Directory:
    """A recipients-directory row."""

    user_id: str
    email: str | None = None
    phone: str | None = None
    phone_verified_at: datetime | None = None
    locale: str = "en"
    timezone: str = "UTC"


# ---------------------------------------------------------------------------- events


def parse_event(raw: bytes | None) -> CloudEvent:
    """A CloudEvent from raw bytes; ``InvalidMessage`` naming what is wrong."""
    try:
        document = json.loads(raw or b"")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidMessage("invalid_json", str(exc)) from None
    if not isinstance(document, dict):
        raise InvalidMessage("not_cloudevent", "the event is not a JSON object")
    try:
        event = CloudEvent.model_validate(document)
    except ValidationError as exc:
        raise InvalidMessage("not_cloudevent", _summary(exc)) from None
    if any(not printable(v) for v in (event.id, event.source, event.type)):
        raise InvalidMessage("not_cloudevent", "id, source and type may not contain control characters")
    return event


def printable(value: str) -> bool:
    """No control characters (PostgreSQL text cannot even hold NUL)."""
    return not _CONTROL.search(value)


def validate_data(event: CloudEvent) -> dict[str, Any]:
    """The event's ``data`` checked against its type's model (known types only)."""
    model = EVENT_MODELS[event.type]
    try:
        return model.model_validate(event.data).model_dump(mode="json")
    except ValidationError as exc:
        raise InvalidMessage("invalid_data", _summary(exc)) from None


def recipients_of(notification: Notification, data: dict[str, Any]) -> list[str] | None:
    """The user ids a notification goes to; None means everyone (broadcast)."""
    value = data.get(notification.recipients)
    if value in (None, [], "") and notification.broadcast:
        return None
    if isinstance(value, str) and value:
        value = [value]
    if isinstance(value, list) and value and all(isinstance(v, str) and v for v in value):
        if not all(printable(v) for v in value):
            raise InvalidMessage("invalid_data", f"data.{notification.recipients}: a user id may not contain control characters")
        return list(dict.fromkeys(value))
    raise InvalidMessage("missing_recipients", f"data.{notification.recipients} must name the recipient(s)")


_WHOLE_FIELD = re.compile(r"\{(\w+)\}")


def host_allowed(host: str, frontend_url: str, link_hosts: Sequence[str]) -> bool:
    """Whether links may point at ``host``: the front end's, or one of ``HERALD_LINK_HOSTS`` (``*.example.com`` too)."""
    host = host.lower().rstrip(".")
    if host == (urlsplit(frontend_url).hostname or "").lower():
        return True
    for allowed in (h.lower() for h in link_hosts):
        if host == allowed or (allowed.startswith("*.") and host.endswith(allowed[1:])):
            return True
    return False


def link(notification: Notification, data: dict[str, Any], frontend_url: str, link_hosts: Sequence[str] = ()) -> str | None:
    """The absolute URL of a notification: ``HERALD_FRONTEND_URL`` and the catalogue's path, each data value in it
    percent-encoded. A catalogue path that is one whole field (``{path}``) takes a path, or an absolute URL on an
    allowed host (``host_allowed``); anything else is ``InvalidMessage("link_not_allowed")``: the event is
    dead-lettered rather than a foreign link sent."""
    if not notification.url:
        return None
    whole = _WHOLE_FIELD.fullmatch(notification.url)
    if whole:
        value = data.get(whole.group(1))
        return None if value is None or value == "" else _link_from_value(str(value), frontend_url, link_hosts, whole.group(1))
    try:
        path = notification.url.format(**{k: quote(str(v), safe="") for k, v in data.items() if v is not None})
    except (KeyError, IndexError, ValueError):
        return None
    return f"{frontend_url}/{path.lstrip('/')}"


def _link_from_value(value: str, frontend_url: str, link_hosts: Sequence[str], field: str) -> str:
    parts = urlsplit(value.strip())
    if parts.scheme or parts.netloc:  # absolute, or scheme-relative (//host/…): another site unless allowed
        if parts.scheme not in ("https", "http") or not parts.hostname:
            raise InvalidMessage("link_not_allowed", f"data.{field}: only http(s) links are sent, not {parts.scheme or 'scheme-relative'} ones")
        if not host_allowed(parts.hostname, frontend_url, link_hosts):
            raise InvalidMessage("link_not_allowed", f"data.{field}: links go to the front end or HERALD_LINK_HOSTS, not {parts.hostname}")
        base = f"{parts.scheme}://{parts.netloc}"
    else:
        base = frontend_url
    path = quote(parts.path, safe="/-._~!$&'()*+,;=:@%")
    query = urlencode(parse_qsl(parts.query, keep_blank_values=True))
    fragment = quote(parts.fragment, safe="/-._~!$&'()*+,;=:@%?")
    return f"{base}/{path.lstrip('/')}" + (f"?{query}" if query else "") + (f"#{fragment}" if fragment else "")


# ---------------------------------------------------------------------------- decisions


def decide(
    event: CloudEvent,
    data: dict[str, Any],
    notification: Notification,
    contact: Contact,
    channel: Channel,
    *,
    enabled: bool = True,
    frontend_url: str,
    link_hosts: Sequence[str] = (),
    now: datetime | None = None,
) -> Decision:
    """Whether ``contact`` gets ``notification`` on ``channel``, as a dispatch or a reason."""

    def skip(reason: str, detail: str = "") -> Decision:
        return Decision(notification, contact.user_id, channel, None, reason, detail)

    if contact.deleted:
        return skip("user_deleted", "the user was deleted")
    if not notification.critical and not enabled:
        return skip("preference_off", f"{notification.category.value} by {channel.value} is switched off")
    email = phone = None
    if channel is Channel.email:
        if not contact.email:
            return skip("no_address", "no email address" if contact.known else "user not in the recipients directory")
        email = contact.email
    elif channel is Channel.sms:
        if not contact.phone:
            return skip("no_address", "no phone number" if contact.known else "user not in the recipients directory")
        if not contact.phone_verified and not notification.critical:
            return skip("phone_unverified", "the phone number is not verified")
        phone = contact.phone
    # Every value below is already validated (the event, its data model, the directory), so the
    # dispatch is built without validating it again: this runs for every dispatch routed.
    # A unit test round-trips every catalogue dispatch through validation to keep this honest.
    dispatch = Dispatch.model_construct(
        notification_id=notification_id(source=event.source, event_id=identity(notification, event, data), user_id=contact.user_id, channel=channel.value),
        event_id=event.id,
        event_source=event.source,
        event_type=event.type,
        event_time=event.time,
        category=notification.category,
        critical=notification.critical,
        channel=channel,
        recipient=Recipient.model_construct(user_id=contact.user_id, email=email, phone=phone),
        locale=contact.locale,
        timezone=contact.timezone,
        template=notification.template,
        url=link(notification, data, frontend_url, link_hosts),
        data=data,
        created_at=now or utcnow(),
        attempt=1,
        not_before=None,
        expires_at=expiry(notification, data, now or utcnow()),
    )
    return Decision(notification, contact.user_id, channel, dispatch, "routed")


_LOOKS_LIKE_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}")


def key_of(template: str, data: dict[str, Any]) -> str:
    """A catalogue key template (``"booking:{booking_id}"``) filled from ``data``; times as UTC ISO 8601, so one instant is one key."""
    values = {}
    for _, name, _, _ in string.Formatter().parse(template):
        if name is not None:
            value = data.get(name)
            if isinstance(value, str) and _LOOKS_LIKE_TIME.match(value):
                try:
                    value = datetime.fromisoformat(value)
                except ValueError:
                    pass
            if isinstance(value, datetime):
                try:
                    value = (value if value.tzinfo is not None else value.replace(tzinfo=UTC)).astimezone(UTC).isoformat().replace("+00:00", "Z")
                except (OverflowError, ValueError):  # a time UTC cannot hold (year 1 with an offset): kept as written
                    value = data.get(name)
            values[name] = "" if value is None else value
    return template.format_map(values)


def identity(notification: Notification, event: CloudEvent, data: dict[str, Any]) -> str:
    """What identifies a notification of ``event`` (with the source, user and channel): the event's id, or the catalogue's
    ``identity`` when the event itself names every field of it (a default filled in by the data model does not count:
    two reminders that both leave ``minutes_before`` out are not one). Prefixed so that no event id can equal it."""
    if notification.identity is None:
        return event.id
    raw = data_of(event)
    if any(name not in raw for _, name, _, _ in string.Formatter().parse(notification.identity) if name is not None):
        return event.id
    return f"identity|{event.type}|{key_of(notification.identity, data)}"


@functools.lru_cache(maxsize=256)
def _user_fields(event_type: str) -> tuple[str, ...]:
    """The fields of an event type's data that hold user ids (one, or a list)."""
    model = EVENT_MODELS.get(event_type)
    if model is None:
        return ()
    marker = "A user id of the host application"
    return tuple(name for name, f in model.model_fields.items() if f.description == marker or marker in str(f.annotation))


def user_ids_of(event_type: str, data: dict[str, Any]) -> tuple[str, ...]:
    """Every user an event's data names (recipients, senders, who cancelled): what an erasure finds it by."""
    found: set[str] = set()
    for name in _user_fields(event_type):
        value = data.get(name)
        for v in value if isinstance(value, list) else [value]:
            if isinstance(v, str) and v:
                found.add(v)
    return tuple(sorted(found))


def data_of(event: CloudEvent) -> dict[str, Any]:
    return event.data if isinstance(event.data, dict) else {}


def expiry(notification: Notification, data: dict[str, Any], now: datetime) -> datetime | None:
    """When ``notification`` becomes pointless: ``expires_after`` from now, or the time in its ``expires_at`` field, whichever is sooner."""
    ends: list[datetime] = []
    if notification.expires_after is not None:
        ends.append(now + notification.expires_after)
    if notification.expires_at is not None:
        value = data.get(notification.expires_at)
        when = value if isinstance(value, datetime) else datetime.fromisoformat(value) if isinstance(value, str) else None
        if when is not None:
            ends.append(when if when.tzinfo is not None else when.replace(tzinfo=UTC))
    return min(ends) if ends else None


def route(
    event: CloudEvent,
    data: dict[str, Any],
    notifications: Iterable[Notification],
    recipients: Mapping[Notification, list[str]],
    profiles: Mapping[str, Profile],
    *,
    frontend_url: str,
    link_hosts: Sequence[str] = (),
    now: datetime | None = None,
) -> list[Decision]:
    """Every decision of one event: each notification × its recipients × its channels.

    A recipient that receives the same channel twice from one event (named by two of
    its notifications) gets it once: the notification id is per event × user × channel.
    """
    decisions: list[Decision] = []
    seen: set[tuple[str, Channel]] = set()
    now = now or utcnow()
    for notification in notifications:
        for user_id in recipients[notification]:
            profile = profiles.get(user_id) or Profile.unknown(user_id)
            for channel in notification.channels:
                if (user_id, channel) in seen:
                    continue
                seen.add((user_id, channel))
                enabled = profile.preferences.get((notification.category.value, channel.value), True)
                decisions.append(
                    decide(event, data, notification, profile.contact, channel, enabled=enabled, frontend_url=frontend_url, link_hosts=link_hosts, now=now)
                )
    return decisions


def trace_rows(event: CloudEvent, decisions: Iterable[Decision], data: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The decision-trace rows of an event's decisions (``data``: the event's validated data)."""
    data = data_of(event) if data is None else data
    return [
        {
            "notification_id": d.dispatch.notification_id
            if d.dispatch is not None
            else notification_id(source=event.source, event_id=identity(d.notification, event, data), user_id=d.user_id, channel=d.channel.value),
            "event_id": event.id,
            "event_source": event.source,
            "event_type": event.type,
            "user_id": d.user_id,
            "channel": d.channel.value,
            "critical": d.notification.critical,
            "template": d.notification.template,
            "decision": "routed" if d.routed else "suppressed",
            "reason": d.reason,
            "detail": d.detail or None,
        }
        for d in decisions
    ]


def dead_letter_row(event: CloudEvent, reason: str, detail: str) -> dict[str, Any]:
    """The trace row of an event the router could not route at all."""
    return {
        "notification_id": notification_id(source=event.source, event_id=event.id, user_id="", channel=""),
        "event_id": event.id,
        "event_source": event.source,
        "event_type": event.type,
        "user_id": None,
        "channel": None,
        "critical": False,
        "template": None,
        "decision": "dead_lettered",
        "reason": reason,
        "detail": detail[:2000] or None,
    }


# ---------------------------------------------------------------------------- preferences


def preference_defaults(catalogue: Catalogue) -> dict[tuple[str, str], bool]:
    """The category × channel matrix with the catalogue's defaults: on where the category uses the channel."""
    used = {(n.category.value, c.value) for ns in catalogue.entries.values() for n in ns for c in n.channels}
    return {(cat.value, ch.value): (cat.value, ch.value) in used for cat in Category for ch in Channel}


def preference_matrix(catalogue: Catalogue, choices: Preferences) -> list[dict[str, Any]]:
    """The full matrix a user sees: every category × channel, explicit choices over defaults."""
    defaults = preference_defaults(catalogue)
    matrix = []
    for (category, channel), default in defaults.items():
        locked = category == Category.security.value
        enabled = default if locked else choices.get((category, channel), default)
        matrix.append(
            {"category": category, "channel": channel, "enabled": enabled, "default": default, "available": default, "locked": locked}
        )
    return matrix


def check_preference_changes(changes: Iterable[Mapping[str, Any]]) -> tuple[dict[tuple[str, str], bool], list[str]]:
    """The valid changes as {(category, channel): enabled}, and a message for every invalid one."""
    categories = {c.value for c in Category}
    channels = {c.value for c in Channel}
    valid: dict[tuple[str, str], bool] = {}
    problems: list[str] = []
    for i, change in enumerate(changes):
        category, channel = change.get("category"), change.get("channel")
        found = []
        if category not in categories:
            found.append(f"preferences[{i}]: unknown category {category!r}; one of {', '.join(sorted(categories))}")
        elif category == Category.security.value:
            found.append(f"preferences[{i}]: security notifications cannot be switched on or off")
        if channel not in channels:
            found.append(f"preferences[{i}]: unknown channel {channel!r}; one of {', '.join(sorted(channels))}")
        if found:
            problems += found
        else:
            valid[(category, channel)] = bool(change["enabled"])
    return valid, problems


# ---------------------------------------------------------------------------- directory


def normalize_phone(value: str | None) -> str | None:
    """An E.164 number, or None for no number; ``ValueError`` when it is not a valid number."""
    if value is None or value == "":
        return None
    try:
        parsed = phonenumbers.parse(value, None)
    except phonenumbers.NumberParseException as exc:
        raise ValueError(f"not a phone number in international format (+country…): {exc}") from None
    if not phonenumbers.is_valid_number(parsed):
        raise ValueError("not a valid phone number")
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


def normalize_email(value: str | None) -> str | None:
    """A syntactically valid address, or None; ``ValueError`` otherwise."""
    if value is None or value == "":
        return None
    try:
        return validate_email(value, check_deliverability=False).normalized
    except EmailNotValidError as exc:
        raise ValueError(str(exc)) from None


def check_timezone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {value!r}") from None
    return value


def check_locale(value: str) -> str:
    if not _LOCALE.match(value):
        raise ValueError(f"not a locale tag: {value!r}")
    return value


def directory_update(current: Directory | None, user_id: str, fields: Mapping[str, Any]) -> Directory:
    """The directory row after ``user.created`` / ``user.updated`` carrying ``fields`` (only those present change).

    A changed phone number is unverified unless the same event carries its
    ``phone_verified_at``; no number means no verification.
    """
    row = current or Directory(user_id=user_id)
    try:
        changes: dict[str, Any] = {}
        if "email" in fields:
            changes["email"] = normalize_email(fields["email"])
        for name, check in (("locale", check_locale), ("timezone", check_timezone)):
            if fields.get(name) is not None:
                changes[name] = check(fields[name])
        verified_at = _datetime(fields.get("phone_verified_at"))
        if "phone" in fields:
            phone = normalize_phone(fields["phone"])
            if phone != row.phone:
                changes["phone"] = phone
                changes["phone_verified_at"] = verified_at
            elif "phone_verified_at" in fields:
                changes["phone_verified_at"] = verified_at
        elif "phone_verified_at" in fields:
            changes["phone_verified_at"] = verified_at
    except ValueError as exc:
        raise InvalidMessage("invalid_data", str(exc)) from None
    row = replace(row, **changes)
    if row.phone is None:
        row = replace(row, phone_verified_at=None)
    return row


def contact_of(row: Directory | None, user_id: str, *, deleted: bool = False) -> Contact:
    """The routing view of a directory row (None: an unknown user)."""
    if deleted:
        return Contact(user_id=user_id, deleted=True)
    if row is None:
        return Contact(user_id=user_id, known=False)
    return Contact(
        user_id=user_id,
        email=row.email,
        phone=row.phone,
        phone_verified=row.phone is not None and row.phone_verified_at is not None,
        locale=row.locale,
        timezone=row.timezone,
    )


def _datetime(value: Any) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value
    return datetime.fromisoformat(str(value).replace("Z", "+00:00"))


def _summary(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or '(root)'}: {e['msg']}" for e in exc.errors()[:5])


# ---------------------------------------------------------------------------- quiet hours

#: Channels quiet hours hold (in-app is never held: it makes no sound).
QUIET_CHANNELS = frozenset({Channel.email, Channel.sms, Channel.push})


def quiet_until(now: datetime, timezone: str, window: tuple[time, time]) -> datetime | None:
    """When the user's quiet hours end, if ``now`` is inside them (else None): the next ``end`` on the wall clock
    of ``timezone``. A window whose start is after its end spans midnight (22:00-07:00). An end a DST change
    skips (spring forward) is the first instant after the gap; one it repeats (fall back) is its next occurrence."""
    start, end = window
    try:
        zone = ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        zone = ZoneInfo("UTC")
    local = now.astimezone(zone)
    t = local.time().replace(tzinfo=None)
    inside = start <= t < end if start < end else (t >= start or t < end)
    if not inside:
        return None
    day = local.date() if t < end else local.date() + timedelta(days=1)
    for _ in range(3):  # the end's first instant after now: its first occurrence, its repeat (fall back), else the next day's
        for instant in _wall_clock(day, end, zone):
            if instant > now:
                return instant
        day += timedelta(days=1)
    return now


def _wall_clock(day: Any, at: time, zone: ZoneInfo) -> list[datetime]:
    """The instants (UTC) the wall clock of ``zone`` shows ``at`` on ``day``: one, two when a DST change repeats
    it, or the first instant after the gap when one skips it."""
    candidate = datetime.combine(day, at)
    for _ in range(24 * 60):
        found = []
        for fold in (0, 1):
            local = candidate.replace(tzinfo=zone, fold=fold)
            instant = local.astimezone(UTC)
            if instant.astimezone(zone).replace(tzinfo=None) == candidate and instant not in found:
                found.append(instant)
        if found:
            return sorted(found)
        candidate += timedelta(minutes=1)  # skipped by a DST change: the first minute that exists
    return [candidate.replace(tzinfo=zone).astimezone(UTC)]
