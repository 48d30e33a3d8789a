"""Kafka subscribers of the inapp service: each dispatch becomes one inbox row, announced to open streams."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

import asyncpg
from faststream.kafka import KafkaRouter
from redis.exceptions import RedisError

from shared import (
    Channel,
    Dispatch,
    Erasure,
    Ledger,
    MessageTemplates,
    PermanentError,
    Purge,
    Resources,
    SenderPipeline,
    TemplateError,
    TransientError,
    erasure_router,
    ledger_export,
    ledger_purge,
    local_times,
    public_user_key,
    rows,
)

from . import logic, repo, stream
from .settings import Settings


async def store_notification(dispatch: Dispatch, res: Resources, *, templates: MessageTemplates, settings: Settings) -> str:
    """Store a dispatch as one inbox row, then announce it to every instance's open streams."""
    try:
        text = templates.render(dispatch.template, dispatch.locale, local_times(dispatch.data, dispatch.timezone))
    except TemplateError as exc:
        raise PermanentError("template_error", str(exc)) from None
    user_id = dispatch.recipient.user_id
    try:
        async with res.pool.acquire() as conn:
            row, created = await repo.insert(
                conn=conn,
                id=dispatch.notification_id,
                user_id=user_id,
                category=dispatch.category.value,
                type=dispatch.event_type,
                title=text["title"],
                body=text["body"],
                url=dispatch.url,
                # what the template shows is stored rendered; of the rest only the fields it declares for display
                data={k: dispatch.data[k] for k in templates.display_fields(dispatch.template) if k in dispatch.data},
                created_at=dispatch.created_at,
            )
            # Counted after the insert commits: a count inside it would miss a row of the same user
            # committed while it waited for the user's counter.
            unread = await repo.unread_count(conn=conn, user_id=user_id)
    except (asyncpg.PostgresConnectionError, asyncpg.InterfaceError, OSError) as exc:
        raise TransientError("database_unavailable", str(exc)) from None
    if created:
        res.metrics.inbox_operations.labels("stored").inc()
    if row is None:  # stored before and deleted by the user since: nothing to announce
        return str(dispatch.notification_id)
    # Announced after the commit, also for a row an earlier attempt stored but could not announce.
    try:
        message = logic.notification_message(row, unread=unread, stored_at=time.time())
        await stream.publish(res.redis, settings.inbox_redis_prefix, user_id, message)
    except (RedisError, OSError) as exc:
        raise TransientError("realtime_unavailable", str(exc)) from None
    return str(dispatch.notification_id)


async def export(user_id: str, res: Resources) -> dict[str, Any]:
    """What the inapp service holds about a user: every notification (deleted ones too) and ledger rows."""
    async with res.pool.acquire() as conn:
        found = await ledger_export(conn, "inapp", user_id)
        found["notifications"] = await rows(conn, "SELECT * FROM inapp.notifications WHERE user_id = $1 ORDER BY seq", user_id)
    return found


def purges(settings: Settings) -> list[Purge]:
    """What the inapp service deletes by age (docs/data.md)."""
    return [
        ledger_purge("inapp", days=settings.ledger_retention_days),
        Purge("inapp.notifications", "inapp.notifications", "created_at < now() - $1::interval", timedelta(days=settings.inbox_retention_days)),
        Purge(
            "inapp.notifications.deleted", "inapp.notifications", "deleted_at < now() - $1::interval", timedelta(days=settings.inbox_deleted_retention_days)
        ),
    ]


def build_routers(settings: Settings, templates: MessageTemplates) -> list[KafkaRouter]:
    async def on_inapp_dispatch(dispatch: Dispatch, res: Resources) -> str | None:
        return await store_notification(dispatch, res, templates=templates, settings=settings)

    ledger = Ledger("inapp")
    pipeline = SenderPipeline(settings, Channel.inapp, on_inapp_dispatch, ledger=ledger)

    async def erase(erasure: Erasure, res: Resources) -> dict[str, int]:
        """The inapp service's part of an erasure: every notification of the user (read, unread or deleted)
        and their inbox counter go, the ledger keeps its rows without error texts, and open streams are told
        the inbox is empty."""
        user_id = erasure.user_id
        async with res.pool.acquire() as conn, conn.transaction():
            notifications = await repo.erase_user(conn=conn, user_id=user_id)
            scrubbed = await ledger.erase(conn=conn, user_id=user_id)
        removed = await res.redis_for("ratelimit").delete(public_user_key(res, "stream", user_id))
        await stream.publish(res.redis, settings.inbox_redis_prefix, user_id, logic.change_message("cleared", ids=[], unread=0))
        return {"notifications": notifications, "ledger_errors": scrubbed, "redis_keys": int(removed)}

    return [*pipeline.routers(), erasure_router(settings, "inapp", erase, tombstones="inapp")]
