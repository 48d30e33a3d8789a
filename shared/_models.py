"""The messages that cross service boundaries: CloudEvent, Dispatch, DeliveryStatus."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

#: Namespace of every notification id; never change it, ids would stop matching.
NOTIFICATION_NAMESPACE = uuid.UUID("6f1f3c2e-6a43-5d4e-9c61-8a3b2f0e7d11")


class Channel(StrEnum):
    email = "email"
    sms = "sms"
    push = "push"
    inapp = "inapp"


class Category(StrEnum):
    lesson_updates = "lesson_updates"
    messages = "messages"
    reviews = "reviews"
    learning_tips = "learning_tips"
    system_updates = "system_updates"
    promotional = "promotional"
    security = "security"


#: Categories a user may switch on and off (``security`` is always on).
SWITCHABLE_CATEGORIES = tuple(c for c in Category if c is not Category.security)


#: How far ahead ``sendat`` may be (a schedule holds a quota slot until then).
SENDAT_HORIZON = timedelta(days=366)

#: An RFC 3339 date-time (an offset or Z is required).
_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")


def utcnow() -> datetime:
    return datetime.now(UTC)


def notification_id(*, source: str, event_id: str, user_id: str, channel: str) -> uuid.UUID:
    """Deterministic id of one recipient × channel delivery of one event."""
    return uuid.uuid5(NOTIFICATION_NAMESPACE, f"{source}|{event_id}|{user_id}|{channel}")


#: The longest string an event may carry in any attribute or data field (characters).
MAX_TEXT_LENGTH = 65_536
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def unstorable(value: Any, path: str = "") -> str | None:
    """Why ``value`` (a JSON document) cannot be stored as text, naming where; None when it can.

    PostgreSQL's text refuses NUL, UTF-8 cannot encode a lone surrogate, and a string of more than
    ``MAX_TEXT_LENGTH`` characters is not a notification's business.
    """
    if isinstance(value, str):
        if len(value) > MAX_TEXT_LENGTH:
            return f"{path or 'value'}: text longer than {MAX_TEXT_LENGTH} characters"
        found = _UNSTORABLE.search(value)
        if found:
            what = "a NUL character" if found.group() == "\x00" else "a lone surrogate"
            return f"{path or 'value'}: contains {what}, which cannot be stored"
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            problem = unstorable(key, path) if isinstance(key, str) and _UNSTORABLE.search(key) else None
            problem = problem or unstorable(item, f"{path}.{key}" if path else str(key))
            if problem:
                return problem
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            problem = unstorable(item, f"{path}[{i}]")
            if problem:
                return problem
    return None


class CloudEvent(BaseModel):
    """A CloudEvents 1.0 event in structured JSON mode."""

    model_config = ConfigDict(extra="allow", json_schema_extra={"title": "CloudEvent"})

    specversion: Literal["1.0"]
    id: str = Field(min_length=1, max_length=256)
    source: str = Field(min_length=1, max_length=1024)
    type: str = Field(min_length=1, max_length=256)
    time: datetime | None = None
    subject: str | None = None
    datacontenttype: str | None = "application/json"
    dataschema: str | None = None
    data: Any = None

    @field_validator("time")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value

    @model_validator(mode="after")
    def _storable(self) -> CloudEvent:
        """Refuse attributes no store downstream can keep: NUL characters, lone surrogates, over-long strings.

        ``data`` is checked by its type's model (``shared.events.EventData``), so a bad field there
        is ``invalid_data``, while a bad attribute makes the whole event unreadable.
        """
        attributes = {k: v for k, v in self.__dict__.items() if k != "data"}
        problem = unstorable(attributes) or unstorable(self.__pydantic_extra__ or {})
        if problem:
            raise ValueError(problem)
        return self

    @model_validator(mode="after")
    def _send_at_readable(self) -> CloudEvent:
        """``sendat`` (an extension attribute: when to send, RFC 3339 with an offset) must be a time Herald can keep to."""
        self.send_at  # noqa: B018 - raises ValueError for one that is not
        return self

    @property
    def send_at(self) -> datetime | None:
        """When the producer wants the event's notifications sent (``sendat``); None: at once."""
        raw = (self.__pydantic_extra__ or {}).get("sendat")
        if raw is None:
            return None
        if not isinstance(raw, str) or not _RFC3339.match(raw):
            raise ValueError(f"sendat must be an RFC 3339 time with an offset, e.g. 2026-12-01T14:00:00Z (got {str(raw)[:64]!r})")
        try:
            when = datetime.fromisoformat(raw.replace("z", "Z"))
            utc = when.astimezone(UTC)
        except (ValueError, OverflowError) as exc:
            raise ValueError(f"sendat {raw[:64]!r} is not a time: {exc}") from None
        if utc > utcnow() + SENDAT_HORIZON:
            raise ValueError(f"sendat {raw[:64]!r} is more than {SENDAT_HORIZON.days} days ahead")
        return when

    @property
    def area(self) -> str:
        return self.type.split(".", 1)[0]


class Recipient(BaseModel):
    """Who a dispatch is for, with the one address its channel needs."""

    user_id: str = Field(min_length=1, max_length=256)
    email: str | None = None
    phone: str | None = None  # E.164


class Dispatch(BaseModel):
    """One notification for one recipient on one channel (router → sender)."""

    notification_id: uuid.UUID
    event_id: str
    event_source: str
    event_type: str
    event_time: datetime | None = None
    category: Category
    critical: bool = False
    channel: Channel
    recipient: Recipient
    locale: str = "en"
    timezone: str = "UTC"
    template: str
    url: str | None = Field(default=None, description="Absolute link to what the notification is about")
    data: dict[str, Any] = Field(default_factory=dict)
    created_at: datetime = Field(default_factory=utcnow)
    attempt: int = Field(default=1, ge=1)
    not_before: datetime | None = None
    expires_at: datetime | None = Field(default=None, description="After this the notification is pointless: finished as expired, never sent late")
    retry_from: datetime | None = Field(default=None, description="When its retry window started, if not at created_at (a replay from dlq starts a new one)")


class DeliveryState(StrEnum):
    sent = "sent"
    delivered = "delivered"
    failed = "failed"
    suppressed = "suppressed"
    duplicate = "duplicate"
    retrying = "retrying"
    dead_lettered = "dead_lettered"
    expired = "expired"


class DeliveryStatus(BaseModel):
    """What a sender did with a dispatch (sender → ``notify.status``)."""

    notification_id: uuid.UUID
    event_id: str
    event_type: str
    channel: Channel
    user_id: str
    status: DeliveryState
    reason: str | None = None
    attempt: int = 1
    provider_message_id: str | None = None
    critical: bool = False
    replayed: bool = Field(default=False, description="True when a redelivered copy repeats the outcome recorded for its first copy")
    at: datetime = Field(default_factory=utcnow)

    @classmethod
    def of(cls, dispatch: Dispatch, status: DeliveryState, **fields: Any) -> DeliveryStatus:
        """A status about ``dispatch``."""
        return cls(
            notification_id=dispatch.notification_id,
            event_id=dispatch.event_id,
            event_type=dispatch.event_type,
            channel=dispatch.channel,
            user_id=dispatch.recipient.user_id,
            attempt=dispatch.attempt,
            critical=dispatch.critical,
            status=status,
            **fields,
        )
