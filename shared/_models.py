"""The messages that cross service boundaries: CloudEvent, Dispatch, DeliveryStatus."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

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


def utcnow() -> datetime:
    return datetime.now(UTC)


def notification_id(*, source: str, event_id: str, user_id: str, channel: str) -> uuid.UUID:
    """Deterministic id of one recipient × channel delivery of one event."""
    return uuid.uuid5(NOTIFICATION_NAMESPACE, f"{source}|{event_id}|{user_id}|{channel}")


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


class DeliveryState(StrEnum):
    sent = "sent"
    delivered = "delivered"
    failed = "failed"
    suppressed = "suppressed"
    duplicate = "duplicate"
    retrying = "retrying"
    dead_lettered = "dead_lettered"


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
