"""The inbox API: every route answers for the authenticated user only.

Another user's notification answers 404 exactly like a missing one.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Annotated, Any
from uuid import UUID

import jwt
from fastapi import APIRouter, Depends, Header, HTTPException, Query, Request, Response, status
from pydantic import BaseModel, Field
from redis.exceptions import RedisError
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.background import BackgroundTask

from shared import AppResources, Category, Resources, UserId, decode_user_token, per_address, per_user

from . import logic, repo, stream
from .settings import Settings

log = logging.getLogger(__name__)
api = APIRouter(prefix="/v1/inbox", tags=["inbox"])

NOT_FOUND = "no such notification"
_404 = {404: {"description": "No such notification in this user's inbox"}}


class InboxItem(BaseModel):
    id: UUID
    category: Category
    type: str
    title: str
    body: str
    url: str | None
    data: dict[str, Any] = Field(description="Only the event fields the template declares for display (ids, the time)")
    created_at: datetime
    read: bool
    read_at: datetime | None


class InboxPage(BaseModel):
    items: list[InboxItem]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next (older) page; null on the last page")


class UnreadCount(BaseModel):
    count: int


class ItemChanged(BaseModel):
    item: InboxItem
    changed: bool
    unread_count: int


class BulkChanged(BaseModel):
    changed: int
    unread_count: int


class StreamToken(BaseModel):
    token: str
    expires_in: int = Field(description="Seconds the token may be used to open (or reopen) the stream")


def _settings(res: Resources) -> Settings:
    return res.settings  # type: ignore[return-value]


def _item(row: dict[str, Any]) -> InboxItem:
    return InboxItem.model_validate(logic.item_of(row))


async def _announce(res: Resources, user_id: str, op: str, ids: list[str]) -> int:
    """Publish a change to the user's open streams; the unread count after it."""
    async with res.pool.acquire() as conn:
        unread = await repo.unread_count(conn=conn, user_id=user_id)
    try:
        await stream.publish(res.redis, _settings(res).inbox_redis_prefix, user_id, logic.change_message(op, ids=ids, unread=unread))
    except (RedisError, OSError) as exc:  # the change is committed; open streams resync on their next event
        log.warning("could not announce %s to open streams: %s", op, exc)
    return unread


@api.get(
    "",
    summary="The authenticated user's notifications, newest first",
    responses={400: {"description": "The cursor is not one this service issued"}},
)
async def list_inbox(
    user_id: UserId,
    res: AppResources,
    limit: Annotated[int | None, Query(ge=1, description="Page size (at most the configured maximum)")] = None,
    cursor: Annotated[str | None, Query(description="`next_cursor` of the previous page")] = None,
    category: Annotated[list[Category] | None, Query(description="Only these categories (repeatable)")] = None,
    unread: Annotated[bool, Query(description="Only unread notifications")] = False,
) -> InboxPage:
    settings = _settings(res)
    size = min(limit or settings.inbox_page_default, settings.inbox_page_max)
    try:
        before = logic.decode_cursor(cursor) if cursor else None
    except logic.BadCursor as exc:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, detail=str(exc)) from None
    async with res.pool.acquire() as conn:
        rows = await repo.page(
            conn=conn,
            user_id=user_id,
            before_seq=before,
            categories=[c.value for c in category] if category else None,
            unread_only=unread,
            limit=size + 1,
        )
    return InboxPage(items=[_item(r) for r in rows[:size]], next_cursor=logic.next_cursor(rows, size))


@api.get("/unread-count", summary="How many of the user's notifications are unread")
async def unread_count(user_id: UserId, res: AppResources) -> UnreadCount:
    async with res.pool.acquire() as conn:
        return UnreadCount(count=await repo.unread_count(conn=conn, user_id=user_id))


async def _set_read(user_id: str, res: Resources, notification_id: UUID, *, read: bool) -> ItemChanged:
    async with res.pool.acquire() as conn:
        row, changed = await repo.set_read(conn=conn, user_id=user_id, id=notification_id, read=read)
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=NOT_FOUND)
    op = "read" if read else "unread"
    if changed:
        res.metrics.inbox_operations.labels(op).inc()
        unread = await _announce(res, user_id, op, [str(notification_id)])
    else:
        async with res.pool.acquire() as conn:
            unread = await repo.unread_count(conn=conn, user_id=user_id)
    return ItemChanged(item=_item(row), changed=changed, unread_count=unread)


@api.post("/read-all", summary="Mark every notification of the user read")
async def read_all(user_id: UserId, res: AppResources) -> BulkChanged:
    async with res.pool.acquire() as conn:
        changed = await repo.read_all(conn=conn, user_id=user_id)
    if changed:
        res.metrics.inbox_operations.labels("read").inc(changed)
    return BulkChanged(changed=changed, unread_count=await _announce(res, user_id, "read_all", []))


@api.post("/{notification_id}/read", summary="Mark one notification read", responses=_404)
async def mark_read(notification_id: UUID, user_id: UserId, res: AppResources) -> ItemChanged:
    return await _set_read(user_id, res, notification_id, read=True)


@api.post("/{notification_id}/unread", summary="Mark one notification unread", responses=_404)
async def mark_unread(notification_id: UUID, user_id: UserId, res: AppResources) -> ItemChanged:
    return await _set_read(user_id, res, notification_id, read=False)


@api.delete("/{notification_id}", status_code=status.HTTP_204_NO_CONTENT, summary="Delete one notification (kept, hidden)", responses=_404)
async def delete_one(notification_id: UUID, user_id: UserId, res: AppResources) -> Response:
    async with res.pool.acquire() as conn:
        deleted = await repo.soft_delete(conn=conn, user_id=user_id, id=notification_id)
    if not deleted:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=NOT_FOUND)
    res.metrics.inbox_operations.labels("deleted").inc()
    await _announce(res, user_id, "deleted", [str(notification_id)])
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@api.delete("", summary="Delete every notification of the user (kept, hidden)")
async def clear_all(user_id: UserId, res: AppResources) -> BulkChanged:
    async with res.pool.acquire() as conn:
        changed = await repo.clear(conn=conn, user_id=user_id)
    if changed:
        res.metrics.inbox_operations.labels("deleted").inc(changed)
    return BulkChanged(changed=changed, unread_count=await _announce(res, user_id, "cleared", []))


# --- real time ---------------------------------------------------------------


@api.post("/stream-token", summary="A short-lived token that opens this user's event stream (for EventSource)")
async def stream_token(user_id: UserId, res: AppResources) -> StreamToken:
    settings = _settings(res)
    token = secrets.token_urlsafe(32)
    await res.redis.set(logic.token_key(settings.inbox_redis_prefix, token), user_id.encode(), ex=settings.stream_token_ttl_seconds)
    return StreamToken(token=token, expires_in=settings.stream_token_ttl_seconds)


async def _stream_user(request: Request, res: Resources, token: str | None) -> str:
    """The user a stream is for: a stream token (query), or a bearer JWT (header)."""
    settings = _settings(res)
    if token:
        user = await res.redis.get(logic.token_key(settings.inbox_redis_prefix, token))
        if user is None:
            raise HTTPException(status.HTTP_401_UNAUTHORIZED, detail="the stream token is unknown or expired; ask for a new one")
        return user.decode()
    scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not credentials.strip():
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            detail="pass ?token= from POST /v1/inbox/stream-token, or 'Authorization: Bearer <JWT>'",
            headers={"WWW-Authenticate": "Bearer"},
        )
    try:
        return await asyncio.to_thread(decode_user_token, settings, credentials.strip())  # may fetch the JWKS
    except jwt.InvalidTokenError as exc:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, detail=f"invalid token: {exc}", headers={"WWW-Authenticate": "Bearer"}) from None


@api.get(
    "/stream",
    summary="Server-sent events: the user's new notifications and unread-count changes",
    response_class=EventSourceResponse,
    responses={
        200: {"content": {"text/event-stream": {}}},
        400: {"description": "Bad Last-Event-ID"},
        401: {"description": "No valid token"},
        429: {"description": "Too many open streams for this user, or too many connects from this address or for this user"},
        503: {"description": "Real-time delivery unavailable (Redis)"},
    },
    dependencies=[Depends(per_address("stream"))],
)
async def stream_inbox(
    request: Request,
    res: AppResources,
    token: Annotated[str | None, Query(max_length=200, description="A stream token (POST /v1/inbox/stream-token); never the JWT")] = None,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID", include_in_schema=False)] = None,
    resume_after: Annotated[str | None, Query(alias="last_event_id", description="Resume after this event id (for a new EventSource)")] = None,
) -> EventSourceResponse:
    user_id = await _stream_user(request, res, token)
    await per_user(res, "stream", user_id)
    try:
        resume = logic.parse_event_id(last_event_id or resume_after)
    except logic.BadCursor as exc:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, detail=str(exc)) from None
    settings = _settings(res)
    hub: stream.StreamHub = res.extra["hub"]
    if not hub.connected:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, detail="real-time delivery is unavailable; retry later", headers={"Retry-After": "5"})
    try:
        slot = await hub.reserve(user_id)
    except stream.TooManyStreams as exc:
        raise HTTPException(status.HTTP_429_TOO_MANY_REQUESTS, detail=f"too many open streams for this user {exc.where}; close one") from None
    except RedisError:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, detail="real-time delivery is unavailable; retry later", headers={"Retry-After": "5"}) from None
    return EventSourceResponse(
        _holding(slot, _events(res, user_id, resume)),
        ping=settings.stream_ping_seconds,
        send_timeout=settings.stream_send_timeout_seconds,
        headers={"Cache-Control": "no-store"},
        background=BackgroundTask(slot.release),  # also when the stream never started
    )


def _unread(count: int) -> ServerSentEvent:
    return ServerSentEvent(event="unread", data=json.dumps({"count": count}))


def _notification(row: dict[str, Any]) -> ServerSentEvent:
    return ServerSentEvent(event="notification", id=str(row["seq"]), data=json.dumps(logic.item_of(row)))


async def _backfill(res: Resources, user_id: str, last: int) -> AsyncIterator[tuple[ServerSentEvent, int]]:
    """The user's notifications numbered after ``last``, from the table."""
    batch = _settings(res).stream_replay_batch
    while True:
        async with res.pool.acquire() as conn:
            rows = await repo.since(conn=conn, user_id=user_id, after_seq=last, limit=batch)
        for row in rows:
            last = row["seq"]
            yield _notification(row), last
        if len(rows) < batch:
            return


async def _holding(slot: stream.Slot, events: AsyncIterator[ServerSentEvent]) -> AsyncIterator[ServerSentEvent]:
    """``events``, giving the stream's place back however they end."""
    try:
        async for event in events:
            yield event
    finally:
        await slot.release()


async def _events(res: Resources, user_id: str, resume: int | None) -> AsyncIterator[ServerSentEvent]:
    settings, metrics = _settings(res), res.metrics
    hub: stream.StreamHub = res.extra["hub"]
    async with hub.subscribe(user_id) as subscriber:
        metrics.sse_streams.inc()
        try:
            async with res.pool.acquire() as conn:
                current = await repo.last_seq(conn=conn, user_id=user_id)
                unread = await repo.unread_count(conn=conn, user_id=user_id)
            last = logic.resume_point(resume, current)
            # The id makes a reconnecting EventSource send Last-Event-ID even before its first notification.
            ready = {"unread": unread, "last_event_id": last}
            yield ServerSentEvent(event="ready", id=str(last), retry=settings.stream_retry_ms, data=json.dumps(ready))
            async for event, last in _backfill(res, user_id, last):
                yield event
            ends = time.monotonic() + settings.stream_max_seconds if settings.stream_max_seconds else None
            while ends is None or time.monotonic() < ends:
                message = await subscriber.get(None if ends is None else max(ends - time.monotonic(), 0))
                if subscriber.take_overflow():  # messages were dropped: catch up from the table
                    async for event, last in _backfill(res, user_id, last):
                        yield event
                    yield ServerSentEvent(event="change", data=json.dumps({"op": "resync", "ids": []}))
                    async with res.pool.acquire() as conn:
                        unread = await repo.unread_count(conn=conn, user_id=user_id)
                    yield _unread(unread)
                    continue
                if message is None or message.get("kind") == "resync":
                    continue
                if message["kind"] == "notification":
                    step = logic.on_notification(last, message["seq"])
                    if step.send:
                        last = message["seq"]
                        yield ServerSentEvent(event="notification", id=str(last), data=json.dumps(message["item"]))
                        metrics.sse_fanout.observe(max(time.time() - message["stored_at"], 0.0))
                    elif step.backfill:
                        async for event, last in _backfill(res, user_id, last):
                            yield event
                    if step.send or step.backfill:
                        yield _unread(message["unread"])
                elif message["kind"] == "change":
                    yield ServerSentEvent(event="change", data=json.dumps({"op": message["op"], "ids": message["ids"]}))
                    yield _unread(message["unread"])
        finally:
            metrics.sse_streams.dec()
