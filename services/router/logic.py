"""Pure routing decisions: from one domain event to dispatches, no I/O."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from shared import Channel, CloudEvent, Dispatch, InvalidMessage, Recipient, notification_id
from shared.events import EVENT_MODELS

from .catalogue import Notification


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


@dataclass(frozen=True)
class Decision:
    """What the router decided for one recipient × channel of one notification, and why."""

    notification: Notification
    user_id: str
    channel: Channel
    dispatch: Dispatch | None
    reason: str  # "routed" when dispatched, else why not

    @property
    def routed(self) -> bool:
        return self.dispatch is not None


def parse_event(raw: bytes | None) -> CloudEvent:
    """A CloudEvent from raw bytes; ``InvalidMessage`` naming what is wrong."""
    try:
        document = json.loads(raw or b"")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidMessage("invalid_json", str(exc)) from None
    if not isinstance(document, dict):
        raise InvalidMessage("not_cloudevent", "the event is not a JSON object")
    try:
        return CloudEvent.model_validate(document)
    except ValidationError as exc:
        raise InvalidMessage("not_cloudevent", _summary(exc)) from None


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
        return [value]
    if isinstance(value, list) and value and all(isinstance(v, str) and v for v in value):
        return list(dict.fromkeys(value))
    raise InvalidMessage("missing_recipients", f"data.{notification.recipients} must name the recipient(s)")


def link(notification: Notification, data: dict[str, Any], frontend_url: str) -> str | None:
    """The absolute URL of a notification, from its catalogue path and the event's data."""
    if not notification.url:
        return None
    try:
        path = notification.url.format(**data)
    except (KeyError, IndexError, ValueError):
        return None
    if not path or path == "None":
        return None
    if path.startswith(("https://", "http://")):
        return path
    return f"{frontend_url}/{path.lstrip('/')}"


def decide(
    event: CloudEvent,
    data: dict[str, Any],
    notification: Notification,
    contact: Contact,
    channel: Channel,
    *,
    enabled: bool = True,
    frontend_url: str,
) -> Decision:
    """Whether ``contact`` gets ``notification`` on ``channel``, as a dispatch or a reason."""

    def skip(reason: str) -> Decision:
        return Decision(notification, contact.user_id, channel, None, reason)

    if contact.deleted:
        return skip("user_deleted")
    if not notification.critical and not enabled:
        return skip("preference_off")
    recipient = Recipient(user_id=contact.user_id)
    if channel is Channel.email:
        if not contact.email:
            return skip("no_address")
        recipient.email = contact.email
    elif channel is Channel.sms:
        if not contact.phone:
            return skip("no_address")
        if not contact.phone_verified and not notification.critical:
            return skip("phone_unverified")
        recipient.phone = contact.phone
    dispatch = Dispatch(
        notification_id=notification_id(source=event.source, event_id=event.id, user_id=contact.user_id, channel=channel.value),
        event_id=event.id,
        event_source=event.source,
        event_type=event.type,
        event_time=event.time,
        category=notification.category,
        critical=notification.critical,
        channel=channel,
        recipient=recipient,
        locale=contact.locale,
        timezone=contact.timezone,
        template=notification.template,
        url=link(notification, data, frontend_url),
        data=data,
    )
    return Decision(notification, contact.user_id, channel, dispatch, "routed")


def _summary(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or '(root)'}: {e['msg']}" for e in exc.errors()[:5])
