"""The ``data`` of every known domain event type, as pydantic models.

The router validates each event's ``data`` against the model of its ``type``;
ingress does the same before accepting an event over HTTP. ``schemas/events/``
holds the JSON Schema generated from these models (``herald schemas``), and a
test fails when the two disagree.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ._models import unstorable

UserId = Annotated[str, Field(min_length=1, max_length=256, description="A user id of the host application")]
Money = Annotated[int, Field(ge=0, description="Amount in the currency's minor unit (cents)")]
Currency = Annotated[str, Field(min_length=3, max_length=3, pattern="^[A-Za-z]{3}$")]


class EventData(BaseModel):
    model_config = ConfigDict(extra="allow")

    @model_validator(mode="before")
    @classmethod
    def _storable(cls, value: Any) -> Any:
        """No field, known or extra, may hold text that cannot be stored (NUL, a lone surrogate, over-long)."""
        problem = unstorable(value)
        if problem:
            raise ValueError(problem)
        return value


def _example(**values: Any) -> ConfigDict:
    return ConfigDict(extra="allow", json_schema_extra={"examples": [values]})


class UserCreated(EventData):
    model_config = _example(user_id="u_123", email="ada@example.com", phone="+14155550100", name="Ada", locale="en", timezone="Europe/London")
    user_id: UserId
    email: str | None = None
    phone: str | None = None
    phone_verified_at: datetime | None = None
    name: str | None = None
    locale: str = "en"
    timezone: str = "UTC"


class UserUpdated(EventData):
    model_config = _example(user_id="u_123", email="ada@example.org", locale="de")
    user_id: UserId
    email: str | None = None
    phone: str | None = None
    phone_verified_at: datetime | None = None
    name: str | None = None
    locale: str | None = None
    timezone: str | None = None


class UserDeleted(EventData):
    model_config = _example(user_id="u_123")
    user_id: UserId


class BookingEvent(EventData):
    booking_id: str = Field(min_length=1)
    student_id: UserId
    instructor_id: UserId
    title: str = Field(min_length=1, max_length=200, description="What was booked, e.g. the lesson or hall name")
    starts_at: datetime
    ends_at: datetime | None = None
    location: str | None = None


class BookingCreated(BookingEvent):
    model_config = _example(booking_id="b_42", student_id="u_1", instructor_id="u_2", title="Piano lesson", starts_at="2026-12-01T15:00:00Z")


class BookingConfirmed(BookingEvent):
    model_config = _example(booking_id="b_42", student_id="u_1", instructor_id="u_2", title="Piano lesson", starts_at="2026-12-01T15:00:00Z")


class BookingCancelled(BookingEvent):
    model_config = _example(booking_id="b_42", student_id="u_1", instructor_id="u_2", title="Piano lesson", starts_at="2026-12-01T15:00:00Z", reason="Instructor unwell")
    reason: str | None = None
    cancelled_by: UserId | None = None


class BookingRescheduled(BookingEvent):
    model_config = _example(
        booking_id="b_42", student_id="u_1", instructor_id="u_2", title="Piano lesson", starts_at="2026-12-02T16:00:00Z", previous_starts_at="2026-12-01T15:00:00Z"
    )
    previous_starts_at: datetime | None = Field(default=None, description="When it was to start before")


class LessonReminder(BookingEvent):
    model_config = _example(booking_id="b_42", student_id="u_1", instructor_id="u_2", title="Piano lesson", starts_at="2026-12-01T15:00:00Z", minutes_before=60)
    minutes_before: int = Field(default=60, ge=0)


class MessageReceived(EventData):
    model_config = _example(message_id="m_9", conversation_id="c_3", sender_id="u_2", sender_name="Grace", recipient_id="u_1", preview="See you at three!")
    message_id: str
    conversation_id: str
    sender_id: UserId
    sender_name: str
    recipient_id: UserId
    preview: str = Field(max_length=500)


class ReviewReceived(EventData):
    model_config = _example(review_id="r_5", instructor_id="u_2", reviewer_id="u_1", reviewer_name="Ada", rating=5, comment="Wonderful lesson")
    review_id: str
    instructor_id: UserId
    reviewer_id: UserId
    reviewer_name: str
    rating: int = Field(ge=1, le=5)
    comment: str | None = Field(default=None, max_length=2000)


class ReviewResponded(EventData):
    model_config = _example(review_id="r_5", instructor_id="u_2", instructor_name="Grace", reviewer_id="u_1", response="Thank you!")
    review_id: str
    instructor_id: UserId
    instructor_name: str
    reviewer_id: UserId
    response: str = Field(max_length=2000)


class HallAlert(EventData):
    model_config = _example(hall_id="h_1", hall_name="Main Hall", admin_ids=["u_7", "u_8"], alert="New booking request for Friday 18:00", booking_id="b_43")
    hall_id: str
    hall_name: str
    admin_ids: list[UserId] = Field(min_length=1, max_length=1000)
    alert: str = Field(max_length=1000)
    booking_id: str | None = None


class SecurityEvent(EventData):
    user_id: UserId
    at: datetime | None = None


class NewDeviceLogin(SecurityEvent):
    model_config = _example(user_id="u_1", device="Firefox on Linux", ip="203.0.113.9", location="Berlin, DE", at="2026-11-25T10:00:00Z")
    device: str = Field(max_length=300)
    ip: str | None = None
    location: str | None = None


class PasswordChanged(SecurityEvent):
    model_config = _example(user_id="u_1", at="2026-11-25T10:00:00Z")


class TwoFactorEnabled(SecurityEvent):
    model_config = _example(user_id="u_1", at="2026-11-25T10:00:00Z")


class TwoFactorDisabled(SecurityEvent):
    model_config = _example(user_id="u_1", at="2026-11-25T10:00:00Z")


class PaymentFailed(EventData):
    model_config = _example(user_id="u_1", amount=4500, currency="USD", reason="Card declined", booking_id="b_42")
    user_id: UserId
    amount: Money
    currency: Currency
    reason: str | None = None
    booking_id: str | None = None


class PayoutPaid(EventData):
    model_config = _example(user_id="u_2", payout_id="po_1", amount=12000, currency="USD", arrival_date="2026-11-27")
    user_id: UserId
    payout_id: str
    amount: Money
    currency: Currency
    arrival_date: str | None = None


class LearningTip(EventData):
    model_config = _example(user_id="u_1", title="Practise scales daily", body="Ten minutes of scales a day builds finger independence.", path="/tips/scales")
    user_id: UserId
    title: str = Field(max_length=200)
    body: str = Field(max_length=2000)
    path: str | None = None


class Promotion(EventData):
    model_config = _example(user_id="u_1", campaign_id="winter26", title="20% off winter lessons", body="Book before December 15.", path="/offers/winter")
    user_id: UserId
    campaign_id: str
    title: str = Field(max_length=200)
    body: str = Field(max_length=2000)
    path: str | None = None


class SystemUpdate(EventData):
    model_config = _example(user_ids=["u_1", "u_2"], title="Scheduled maintenance", body="Herald will be read-only on Sunday 02:00-03:00 UTC.")
    user_ids: list[UserId] | None = Field(default=None, description="The users to tell; absent or empty means everyone")
    title: str = Field(max_length=200)
    body: str = Field(max_length=2000)
    path: str | None = None


EVENT_MODELS: dict[str, type[EventData]] = {
    "user.created": UserCreated,
    "user.updated": UserUpdated,
    "user.deleted": UserDeleted,
    "booking.created": BookingCreated,
    "booking.confirmed": BookingConfirmed,
    "booking.cancelled": BookingCancelled,
    "booking.rescheduled": BookingRescheduled,
    "lesson.reminder": LessonReminder,
    "message.received": MessageReceived,
    "review.received": ReviewReceived,
    "review.responded": ReviewResponded,
    "hall.alert": HallAlert,
    "auth.new_device_login": NewDeviceLogin,
    "auth.password_changed": PasswordChanged,
    "auth.2fa_enabled": TwoFactorEnabled,
    "auth.2fa_disabled": TwoFactorDisabled,
    "payment.failed": PaymentFailed,
    "payout.paid": PayoutPaid,
    "content.learning_tip": LearningTip,
    "marketing.promotion": Promotion,
    "system.update": SystemUpdate,
}


def domain_areas() -> list[str]:
    """Every area (``domain.<area>`` topic) a known event type lives in."""
    return sorted({event_type.split(".", 1)[0] for event_type in EVENT_MODELS})
