"""Pure checks on incoming events."""

from __future__ import annotations

from pydantic import ValidationError

from shared import CloudEvent
from shared.events import EVENT_MODELS


def problems_of(event: CloudEvent) -> str | None:
    """Why a known type's ``data`` is invalid, or None when it is fine (unknown types pass)."""
    model = EVENT_MODELS.get(event.type)
    if model is None:
        return None
    try:
        model.model_validate(event.data)
    except ValidationError as exc:
        return "; ".join(f"data.{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:5])
    return None


def partition_key(event: CloudEvent) -> str:
    """Events about one subject stay in order: key by subject, else by id."""
    return event.subject or event.id
