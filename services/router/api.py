"""The router's HTTP API: the recipients directory, preferences and the decision trace."""

from __future__ import annotations

import asyncio
import uuid
from urllib.parse import quote
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal
from uuid import UUID

import httpx
from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request, status
from fastapi.encoders import jsonable_encoder
from pydantic import BaseModel, ConfigDict, Field, StrictBool, field_validator

from shared import AdminService, AppResources, CloudEvent, Outgoing, PublishService, RecipientsService, TracesService, UserId, audit, publish_many

from . import logic, repo, schedules
from .catalogue import Catalogue
from .directory import recipients_of

api = APIRouter(prefix="/v1")

_PRINTABLE = r"^[^\x00-\x1f\x7f]+$"
UserPath = Annotated[str, Path(min_length=1, max_length=256, pattern=_PRINTABLE, description="A user id of the host application")]


def _own_user(user_id: UserId) -> str:
    if not logic.printable(user_id):
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, detail="invalid token: sub may not contain control characters", headers={"WWW-Authenticate": "Bearer"})
    return user_id


#: The authenticated end user (a JWT whose ``sub`` is a usable user id).
OwnUser = Annotated[str, Depends(_own_user)]


# ---------------------------------------------------------------------------- recipients


class RecipientIn(BaseModel):
    """A user's contact details; the PUT replaces them all."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"email": "ada@example.com", "phone": "+14155550100", "locale": "en", "timezone": "Europe/London"}]})

    email: str | None = None
    phone: str | None = Field(default=None, description="E.164, e.g. +14155550100")
    phone_verified_at: datetime | None = None
    locale: str = "en"
    timezone: str = "UTC"

    _email = field_validator("email")(lambda v: logic.normalize_email(v))
    _phone = field_validator("phone")(lambda v: logic.normalize_phone(v))
    _locale = field_validator("locale")(lambda v: logic.check_locale(v))
    _timezone = field_validator("timezone")(lambda v: logic.check_timezone(v))


class RecipientOut(RecipientIn):
    user_id: str


@api.put(
    "/recipients/{user_id}",
    tags=["recipients"],
    summary="Create or replace a user's contact details (service API key)",
    responses={409: {"description": "The user was deleted"}, 422: {"description": "An address is not valid"}},
)
async def put_recipient(user_id: UserPath, body: RecipientIn, caller: RecipientsService, res: AppResources) -> RecipientOut:
    row = logic.Directory(
        user_id=user_id,
        email=body.email,
        phone=body.phone,
        phone_verified_at=body.phone_verified_at if body.phone else None,
        locale=body.locale,
        timezone=body.timezone,
    )
    if not await recipients_of(res).put(row):
        raise HTTPException(status.HTTP_409_CONFLICT, detail=f"user {user_id!r} was deleted; a deleted user is not brought back")
    audit(res.metrics, actor=caller, action="recipient.put", target=user_id)
    return RecipientOut(user_id=user_id, **{k: getattr(row, k) for k in ("email", "phone", "phone_verified_at", "locale", "timezone")})


class ErasureAccepted(BaseModel):
    status: Literal["accepted"] = "accepted"
    event_id: str = Field(description="The user.deleted event published for the erasure")
    status_url: str = Field(description="Where each service's progress shows: GET /v1/erasures/{user_id}")


@api.delete(
    "/recipients/{user_id}",
    tags=["recipients"],
    status_code=status.HTTP_202_ACCEPTED,
    summary="Erase a user (admin API key): published as user.deleted, which every service applies",
)
async def erase_recipient(user_id: UserPath, caller: AdminService, res: AppResources) -> ErasureAccepted:
    event = CloudEvent(
        specversion="1.0", id=uuid.uuid4().hex, source="herald/router", type="user.deleted", time=datetime.now(UTC),
        subject=user_id, data={"user_id": user_id},
    )
    await publish_many(res.broker, [Outgoing(res.settings.domain_topic("user.deleted"), event, key=user_id)])
    audit(res.metrics, actor=caller, action="recipient.erase", target=user_id, event_id=event.id)
    return ErasureAccepted(event_id=event.id, status_url=f"/v1/erasures/{quote(user_id, safe='')}")


class UserExport(BaseModel):
    user_id: str
    exported_at: datetime
    services: dict[str, dict[str, Any]] = Field(description="Each service's part: what it holds about the user, by store")


@api.get(
    "/recipients/{user_id}/export",
    tags=["recipients"],
    summary="Everything Herald holds about a user, from every service (admin API key)",
    responses={502: {"description": "A service did not answer its part; nothing partial is returned"}},
)
async def export_recipient(user_id: UserPath, caller: AdminService, res: AppResources, request: Request) -> UserExport:
    settings = request.app.state.settings
    path = f"/v1/admin/users/{quote(user_id, safe='')}/export"
    headers = {"Authorization": request.headers["authorization"]}  # the caller's own key: each service checks it

    async def part(name: str, base: str) -> tuple[str, dict[str, Any]]:
        try:
            answer = await res.http.get(f"{base}{path}", headers=headers, timeout=settings.export_timeout_seconds)
        except httpx.HTTPError as exc:
            raise HTTPException(status.HTTP_502_BAD_GATEWAY, detail=f"the {name} service did not answer its part of the export ({type(exc).__name__})") from None
        if answer.status_code != 200:
            raise HTTPException(status.HTTP_502_BAD_GATEWAY, detail=f"the {name} service answered {answer.status_code} to its part of the export")
        return name, answer.json()

    async with res.pool.acquire() as conn:
        own = await repo.export(conn=conn, user_id=user_id)
    parts = dict(await asyncio.gather(*(part(name, base) for name, base in settings.export_urls().items())))
    audit(res.metrics, actor=caller, action="recipient.export", target=user_id)
    return UserExport(user_id=user_id, exported_at=datetime.now(UTC), services={"router": jsonable_encoder(own), **parts})


class ServiceErasure(BaseModel):
    state: Literal["pending", "erased"]
    at: datetime | None = Field(description="When the service reported it erased the user")
    erased: dict[str, int] = Field(default_factory=dict, description="What it removed or cleared, by store (rows or keys)")


class ErasureState(BaseModel):
    user_id: str
    erasure_id: UUID
    event_id: str = Field(description="The user.deleted event that asked for it")
    requested_at: datetime
    complete: bool = Field(description="Every service has reported")
    services: dict[str, ServiceErasure]


@api.get(
    "/erasures/{user_id}",
    tags=["recipients"],
    summary="A user's erasure, service by service (admin API key)",
    responses={404: {"description": "No erasure of this user was requested"}},
)
async def get_erasure(user_id: UserPath, caller: AdminService, res: AppResources, request: Request) -> ErasureState:
    async with res.pool.acquire() as conn:
        found = await repo.erasure(conn=conn, user_id=user_id)
    if found is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no erasure of user {user_id!r} was requested")
    asked, reports = found
    by_service = {r["service"]: r for r in reports}
    names = list(dict.fromkeys([*request.app.state.settings.erasure_services, *by_service]))
    services = {
        name: ServiceErasure(state="erased", at=by_service[name]["reported_at"], erased=by_service[name]["erased"])
        if name in by_service
        else ServiceErasure(state="pending", at=None)
        for name in names
    }
    return ErasureState(
        user_id=user_id, erasure_id=asked["erasure_id"], event_id=asked["event_id"], requested_at=asked["requested_at"],
        complete=all(v.state == "erased" for v in services.values()), services=services,
    )


# ---------------------------------------------------------------------------- preferences


class PreferenceChange(BaseModel):
    model_config = ConfigDict(extra="forbid")

    category: str
    channel: str
    enabled: StrictBool


class PreferencesPatch(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"preferences": [{"category": "promotional", "channel": "email", "enabled": False}]}]},
    )

    preferences: list[PreferenceChange] = Field(min_length=1, max_length=100)


class Preference(BaseModel):
    category: str
    channel: Literal["email", "sms", "push", "inapp"]
    enabled: bool
    default: bool = Field(description="What the catalogue gives when the user has not chosen")
    available: bool = Field(description="Whether any notification of the category uses the channel")
    locked: bool = Field(description="Security notifications cannot be switched off")


class Preferences(BaseModel):
    user_id: str
    preferences: list[Preference]


def _catalogue(request: Request) -> Catalogue:
    return request.app.state.catalogue


async def _matrix(res: Any, catalogue: Catalogue, user_id: str) -> Preferences:
    async with res.pool.acquire() as conn:
        choices = await repo.preferences(conn=conn, user_id=user_id)
    return Preferences(user_id=user_id, preferences=[Preference(**p) for p in logic.preference_matrix(catalogue, choices)])


async def _patch(res: Any, catalogue: Catalogue, user_id: str, body: PreferencesPatch) -> Preferences:
    changes, problems = logic.check_preference_changes(c.model_dump() for c in body.preferences)
    if problems:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail=problems)
    if not await recipients_of(res).set_preferences(user_id, changes):
        raise HTTPException(status.HTTP_410_GONE, detail="this user was deleted; nothing is recorded for it")
    return await _matrix(res, catalogue, user_id)


_PATCH_RESPONSES: dict[int | str, dict[str, Any]] = {
    410: {"description": "The user was deleted (erased): no preference is recorded"},
    422: {"description": "Unknown category or channel, or security"},
}


@api.get("/preferences", tags=["preferences"], summary="The authenticated user's preferences (every category × channel)")
async def get_my_preferences(user_id: OwnUser, request: Request, res: AppResources) -> Preferences:
    return await _matrix(res, _catalogue(request), user_id)


@api.patch("/preferences", tags=["preferences"], summary="Change the authenticated user's preferences", responses=_PATCH_RESPONSES)
async def patch_my_preferences(body: PreferencesPatch, user_id: OwnUser, request: Request, res: AppResources) -> Preferences:
    return await _patch(res, _catalogue(request), user_id, body)


@api.get("/users/{user_id}/preferences", tags=["preferences"], summary="A user's preferences (service API key)")
async def get_user_preferences(user_id: UserPath, caller: RecipientsService, request: Request, res: AppResources) -> Preferences:
    return await _matrix(res, _catalogue(request), user_id)


@api.patch(
    "/users/{user_id}/preferences", tags=["preferences"], summary="Change a user's preferences (service API key)", responses=_PATCH_RESPONSES
)
async def patch_user_preferences(body: PreferencesPatch, user_id: UserPath, caller: RecipientsService, request: Request, res: AppResources) -> Preferences:
    changed = await _patch(res, _catalogue(request), user_id, body)
    audit(res.metrics, actor=caller, action="preferences.patch", target=user_id)
    return changed


# ---------------------------------------------------------------------------- quiet hours

_CLOCK = r"^([01][0-9]|2[0-3]):[0-5][0-9]$"


class QuietHours(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"start": "22:00", "end": "07:00"}]})

    start: str = Field(pattern=_CLOCK, description="HH:MM on the user's wall clock (their time zone in the directory)")
    end: str = Field(pattern=_CLOCK, description="HH:MM; before start: the window spans midnight")

    @field_validator("end")
    @classmethod
    def _not_empty(cls, end: str, info: Any) -> str:
        if info.data.get("start") == end:
            raise ValueError("start and end are the same time: no window")
        return end

    def window(self) -> tuple[Any, Any]:
        from datetime import time as clock

        return clock.fromisoformat(self.start), clock.fromisoformat(self.end)


class QuietHoursState(BaseModel):
    user_id: str
    quiet_hours: QuietHours | None = Field(description="None: no quiet hours (the default)")
    timezone: str = Field(description="The zone the window is read in (the recipients directory; UTC when unknown)")


async def _quiet(res: Any, user_id: str) -> QuietHoursState:
    async with res.pool.acquire() as conn:
        window = await repo.quiet_hours(conn=conn, user_id=user_id)
        directory, _, _ = await repo.recipient(conn=conn, user_id=user_id)
    hours = QuietHours(start=window[0].strftime("%H:%M"), end=window[1].strftime("%H:%M")) if window else None
    return QuietHoursState(user_id=user_id, quiet_hours=hours, timezone=directory.timezone if directory else "UTC")


async def _set_quiet(res: Any, user_id: str, body: QuietHours | None) -> QuietHoursState:
    if not await recipients_of(res).set_quiet_hours(user_id, body.window() if body else None):
        raise HTTPException(status.HTTP_410_GONE, detail="this user was deleted; nothing is recorded for it")
    return await _quiet(res, user_id)


_QUIET = "Non-critical email, SMS and push in the window wait until it ends; in-app and security notifications never wait (docs/timing.md)"
_QUIET_RESPONSES: dict[int | str, dict[str, Any]] = {410: {"description": "The user was deleted (erased)"}}


@api.get("/quiet-hours", tags=["preferences"], summary="The authenticated user's quiet hours", description=_QUIET)
async def get_my_quiet_hours(user_id: OwnUser, res: AppResources) -> QuietHoursState:
    return await _quiet(res, user_id)


@api.put("/quiet-hours", tags=["preferences"], summary="Set the authenticated user's quiet hours", description=_QUIET, responses=_QUIET_RESPONSES)
async def put_my_quiet_hours(body: QuietHours, user_id: OwnUser, res: AppResources) -> QuietHoursState:
    return await _set_quiet(res, user_id, body)


@api.delete("/quiet-hours", tags=["preferences"], summary="Remove the authenticated user's quiet hours", responses=_QUIET_RESPONSES)
async def delete_my_quiet_hours(user_id: OwnUser, res: AppResources) -> QuietHoursState:
    return await _set_quiet(res, user_id, None)


@api.get("/users/{user_id}/quiet-hours", tags=["preferences"], summary="A user's quiet hours (service API key)", description=_QUIET)
async def get_user_quiet_hours(user_id: UserPath, caller: RecipientsService, res: AppResources) -> QuietHoursState:
    return await _quiet(res, user_id)


@api.put("/users/{user_id}/quiet-hours", tags=["preferences"], summary="Set a user's quiet hours (service API key)", description=_QUIET, responses=_QUIET_RESPONSES)
async def put_user_quiet_hours(body: QuietHours, user_id: UserPath, caller: RecipientsService, res: AppResources) -> QuietHoursState:
    changed = await _set_quiet(res, user_id, body)
    audit(res.metrics, actor=caller, action="quiet_hours.put", target=user_id)
    return changed


# ---------------------------------------------------------------------------- trace


class Delivery(BaseModel):
    status: str
    attempt: int
    reason: str | None
    provider_message_id: str | None
    at: datetime


class TraceItem(BaseModel):
    notification_id: UUID
    event_id: str
    event_source: str
    event_type: str
    user_id: str | None
    channel: str | None
    critical: bool
    template: str | None
    decided_at: datetime
    decision: Literal["routed", "suppressed", "dead_lettered", "scheduled", "held"]
    reason: str = Field(
        description="routed, or why not: preference_off, no_address, phone_unverified, user_deleted, schedule_cancelled, schedule_expired, "
        "or the dead-letter reason; for the event's own 'scheduled' row: sendat or reminder (its detail says when it is due and when it was released); "
        "for a 'held' one: quiet_hours (its detail says until when, and when it was released)"
    )
    detail: str | None
    deliveries: list[Delivery] = Field(description="What the channel's sender reported, in order")
    outcome: str = Field(description="The latest delivery status; pending while a routed notification has none; else the decision")
    attempts: int


class Trace(BaseModel):
    items: list[TraceItem]
    next: UUID | None = Field(default=None, description="More items follow: pass this as `after` for the next page")


_BAD_CURSOR: dict[str, Any] = {"description": "`after` is not an item of this trace (or was pruned)"}
Limit = Annotated[int, Query(ge=1, le=1000, description="Most items in this page (at most HERALD_TRACE_PAGE_MAX)")]
After = Annotated[UUID | None, Query(description="The `next` of the previous page")]


async def _cursor(res: Any, after: UUID | None, **belongs: Any) -> dict[str, Any] | None:
    """The decision a page resumes after; 400 when it is not one of this trace's (or has been pruned)."""
    if after is None:
        return None
    async with res.pool.acquire() as conn:
        row = await repo.decision(conn=conn, notification_id=after)
    if row is None or any(row[k] != v for k, v in belongs.items()):
        raise HTTPException(status.HTTP_400_BAD_REQUEST, detail=f"after={after} is not an item of this trace; start again without it")
    return row


async def _page(res: Any, decisions: list[dict[str, Any]], limit: int) -> Trace:
    """``decisions`` holds one more than a page when another page follows."""
    trace = await _trace(res, decisions[:limit])
    trace.next = decisions[limit - 1]["notification_id"] if len(decisions) > limit else None
    return trace


async def _trace(res: Any, decisions: list[dict[str, Any]]) -> Trace:
    async with res.pool.acquire() as conn:
        deliveries = await repo.deliveries_of(conn=conn, notification_ids=[d["notification_id"] for d in decisions])
    items = []
    for d in decisions:
        history = deliveries.get(d["notification_id"], [])
        outcome = history[-1]["status"] if history else ("pending" if d["decision"] == "routed" else d["decision"])
        attempts = max((h["attempt"] for h in history), default=0)
        items.append(TraceItem(**d, deliveries=[Delivery(**h) for h in history], outcome=outcome, attempts=attempts))
    return Trace(items=items)


@api.get(
    "/events/{event_id}/trace",
    tags=["trace"],
    summary="What the router decided for every recipient × channel of an event, and what the senders did, in pages (service API key)",
    responses={404: {"description": "The router has no record of the event"}, 400: _BAD_CURSOR},
)
async def event_trace(
    event_id: Annotated[str, Path(min_length=1, max_length=256, pattern=_PRINTABLE)],
    caller: TracesService,
    res: AppResources,
    limit: Limit = 100,
    after: After = None,
) -> Trace:
    limit = min(limit, res.settings.trace_page_max)  # type: ignore[attr-defined]
    cursor = await _cursor(res, after, event_id=event_id)
    async with res.pool.acquire() as conn:
        decisions = await repo.event_decisions(conn=conn, event_id=event_id, limit=limit + 1, after=cursor)
    if not decisions and cursor is None:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND, detail=f"no trace for event {event_id!r}: not consumed yet, or its type is not in the catalogue"
        )
    return await _page(res, decisions, limit)


@api.get(
    "/users/{user_id}/trace",
    tags=["trace"],
    summary="A user's notifications since a time, decisions and deliveries, in pages (service API key)",
    responses={400: _BAD_CURSOR},
)
async def user_trace(
    user_id: UserPath,
    caller: TracesService,
    res: AppResources,
    since: Annotated[datetime | None, Query(description="ISO 8601; default: 24 hours ago")] = None,
    limit: Limit = 100,
    after: After = None,
) -> Trace:
    since = since or datetime.now(UTC) - timedelta(hours=24)
    if since.tzinfo is None:
        since = since.replace(tzinfo=UTC)
    limit = min(limit, res.settings.trace_page_max)  # type: ignore[attr-defined]
    cursor = await _cursor(res, after, user_id=user_id)
    async with res.pool.acquire() as conn:
        decisions = await repo.user_decisions(conn=conn, user_id=user_id, since=since, limit=limit + 1, after=cursor)
    return await _page(res, decisions, limit)


# ---------------------------------------------------------------------------- schedules

ScheduleKey = Annotated[str, Path(min_length=1, max_length=2048, pattern=_PRINTABLE, description="A cancellation key, e.g. booking:b_42 (it may contain /)")]
Source = Annotated[str, Query(min_length=1, max_length=1024, pattern=_PRINTABLE, description="The CloudEvents source the schedules came from")]


class ScheduleItem(BaseModel):
    id: UUID
    event_id: str
    event_type: str
    kind: Literal["sendat", "reminder"]
    due_at: datetime
    expires_at: datetime | None
    created_at: datetime


class ScheduleList(BaseModel):
    source: str
    key: str
    items: list[ScheduleItem]


class Cancelled(BaseModel):
    source: str
    key: str
    cancelled: int = Field(description="How many pending schedules were cancelled (0: none was pending)")


def _own_source(request: Request, source: str) -> None:
    entry = request.state.service_key
    if not entry.may_publish_from(source):
        raise HTTPException(status.HTTP_403_FORBIDDEN, detail=f"the key {entry.name!r} may not act for source {source!r}")


_SOURCE_RESPONSES: dict[int | str, dict[str, Any]] = {403: {"description": "The key lacks the publish scope, or may not publish from this source"}}


@api.get("/schedules/{key:path}", tags=["schedules"], summary="The pending schedules of a cancellation key (a key that may publish from the source)", responses=_SOURCE_RESPONSES)
async def list_schedules(key: ScheduleKey, source: Source, caller: PublishService, request: Request, res: AppResources) -> ScheduleList:
    _own_source(request, source)
    async with res.pool.acquire() as conn:
        found = await schedules.pending(conn, source=source, key=key)
    return ScheduleList(source=source, key=key, items=[ScheduleItem(**r) for r in found])


@api.delete("/schedules/{key:path}", tags=["schedules"], summary="Cancel every pending schedule of a cancellation key (a key that may publish from the source)", responses=_SOURCE_RESPONSES)
async def cancel_schedules(key: ScheduleKey, source: Source, caller: PublishService, request: Request, res: AppResources) -> Cancelled:
    _own_source(request, source)
    clock = res.extra["schedules"].clock
    async with res.pool.acquire() as conn, conn.transaction():
        count = await schedules.cancel(conn, source=source, key=key, at=clock(), reason=f"cancelled through the API by {caller}", res=res, now=clock())
    audit(res.metrics, actor=caller, action="schedules.cancel", target=f"{source} {key}")
    return Cancelled(source=source, key=key, cancelled=count)
