"""The notification catalogue: loaded from ``catalogue.yaml`` and checked at start-up."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from shared import Category, Channel
from shared.events import EVENT_MODELS

DEFAULT_PATH = Path(__file__).with_name("catalogue.yaml")


class CatalogueError(RuntimeError):
    """The catalogue file is not valid; the message names the entry and the problem."""


class Notification(BaseModel):
    """One notification an event type causes, for the recipients named in ``recipients``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    template: str = Field(pattern=r"^[a-z0-9_]+$")
    category: Category
    critical: bool = False
    channels: tuple[Channel, ...] = Field(min_length=1)
    recipients: str = Field(min_length=1)
    broadcast: bool = False
    url: str | None = None
    expires_after: timedelta | None = Field(default=None, gt=timedelta(0))  # pointless this long after it is routed (ISO 8601 or seconds)
    expires_at: str | None = None  # the field of `data` whose time ends it (a lesson reminder, at the lesson's start)

    @model_validator(mode="after")
    def _security_is_critical(self) -> Notification:
        if self.critical != (self.category is Category.security):
            raise ValueError("critical notifications are exactly those in the security category")
        return self


class Catalogue(BaseModel):
    """Event type → the notifications it causes."""

    entries: dict[str, tuple[Notification, ...]]

    def get(self, event_type: str) -> tuple[Notification, ...] | None:
        """The notifications of a type, or None when the type is not in the catalogue."""
        return self.entries.get(event_type)

    @property
    def templates(self) -> set[str]:
        return {n.template for notifications in self.entries.values() for n in notifications}

    def templates_for(self, channel: Channel) -> set[str]:
        """Every template a channel must be able to render."""
        return {n.template for ns in self.entries.values() for n in ns if channel in n.channels}


def load_catalogue(path: Path = DEFAULT_PATH) -> Catalogue:
    """Read and validate the catalogue; raise ``CatalogueError`` with a clear message if it is wrong."""
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise CatalogueError(f"cannot read the catalogue {path}: {exc}") from None
    if not isinstance(raw, dict):
        raise CatalogueError(f"{path}: the catalogue is a mapping of event type to notifications")
    entries: dict[str, tuple[Notification, ...]] = {}
    for event_type, notifications in raw.items():
        if event_type not in EVENT_MODELS:
            raise CatalogueError(f"{path}: {event_type!r} has no data model in shared.events")
        try:
            entries[event_type] = tuple(Notification.model_validate(n) for n in notifications or [])
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(map(str, e['loc']))}: {e['msg']}" + (f", not {e['input']!r}" if isinstance(e.get("input"), str | int | bool) else "")
                for e in exc.errors()
            )
            raise CatalogueError(f"{path}: entry {event_type!r} is invalid: {problems}") from None
        fields = EVENT_MODELS[event_type].model_fields
        for n in entries[event_type]:
            if n.expires_at is not None and (n.expires_at not in fields or "datetime" not in str(fields[n.expires_at].annotation)):
                raise CatalogueError(f"{path}: entry {event_type!r}: expires_at {n.expires_at!r} is not a time field of its data")
    return Catalogue(entries=entries)
