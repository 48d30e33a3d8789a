"""The notification catalogue: loaded from ``catalogue.yaml`` and checked at start-up."""

from __future__ import annotations

import string
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
    # what identifies the notification instead of the event's id, from `data` fields, e.g. "reminder:{booking_id}:{starts_at}:{minutes_before}":
    # two events with the same identity (and source) are one notification per user and channel, sent once
    identity: str | None = None

    @model_validator(mode="after")
    def _security_is_critical(self) -> Notification:
        if self.critical != (self.category is Category.security):
            raise ValueError("critical notifications are exactly those in the security category")
        return self


class Reminder(BaseModel):
    """An event Herald sends on its own some time before a time of another event's data (docs/timing.md)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: str  # the event type sent, e.g. lesson.reminder; its data is the planning event's, with minutes_before
    before: timedelta = Field(gt=timedelta(0))  # how long before `at` (ISO 8601: PT24H)
    at: str  # the time field of the planning event's data, e.g. starts_at


class ScheduleRule(BaseModel):
    """How an event type takes part in schedules: its cancellation key, what it cancels, which reminders it plans."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    key: str = Field(min_length=1)  # the cancellation key of its schedules, from data fields, e.g. "booking:{booking_id}"
    cancels: bool = False  # it cancels every pending schedule with its key (same source) first
    reminders: tuple[Reminder, ...] = ()


class Catalogue(BaseModel):
    """Event type → the notifications it causes; event type → its schedule rule."""

    entries: dict[str, tuple[Notification, ...]]
    schedules: dict[str, ScheduleRule] = Field(default_factory=dict)

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
    rules = raw.pop("schedules", None) or {}
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
            if n.identity is not None:
                _check_fields(path, event_type, "identity", n.identity, fields)
    return Catalogue(entries=entries, schedules=_schedule_rules(path, rules, entries))


def _time_field(fields: dict, name: str) -> bool:
    return name in fields and "datetime" in str(fields[name].annotation)


def _check_fields(path: Path, event_type: str, what: str, template: str, fields: dict) -> None:
    """Every ``{field}`` of ``template`` is a field of the event type's data."""
    try:
        names = [n for _, n, _, _ in string.Formatter().parse(template) if n is not None]
    except ValueError as exc:
        raise CatalogueError(f"{path}: entry {event_type!r}: {what} {template!r}: {exc}") from None
    unknown = [n for n in names if n not in fields]
    if unknown:
        raise CatalogueError(f"{path}: entry {event_type!r}: {what} {template!r} names {', '.join(unknown)}, not fields of its data")


def _schedule_rules(path: Path, raw: object, entries: dict[str, tuple[Notification, ...]]) -> dict[str, ScheduleRule]:
    if not isinstance(raw, dict):
        raise CatalogueError(f"{path}: schedules is a mapping of event type to its schedule rule")
    rules: dict[str, ScheduleRule] = {}
    for event_type, rule in raw.items():
        if event_type not in entries:
            raise CatalogueError(f"{path}: schedules: {event_type!r} is not an event type of the catalogue")
        try:
            rules[event_type] = parsed = ScheduleRule.model_validate(rule)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            raise CatalogueError(f"{path}: schedules: {event_type!r} is invalid: {problems}") from None
        fields = EVENT_MODELS[event_type].model_fields
        _check_fields(path, f"schedules: {event_type}", "key", parsed.key, fields)
        for reminder in parsed.reminders:
            if reminder.type not in entries:
                raise CatalogueError(f"{path}: schedules: {event_type!r}: reminder type {reminder.type!r} is not in the catalogue")
            if not _time_field(fields, reminder.at):
                raise CatalogueError(f"{path}: schedules: {event_type!r}: reminder at {reminder.at!r} is not a time field of its data")
            if "minutes_before" not in EVENT_MODELS[reminder.type].model_fields:
                raise CatalogueError(f"{path}: schedules: {event_type!r}: reminder type {reminder.type!r} has no minutes_before field")
    return rules
