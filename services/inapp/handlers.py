"""Kafka subscribers of the inapp service: each dispatch becomes one inbox row, announced to open streams."""

from __future__ import annotations

import time

import asyncpg
from faststream.kafka import KafkaRouter
from redis.exceptions import RedisError

from shared import (
    Channel,
    Dispatch,
    Ledger,
    MessageTemplates,
    PermanentError,
    Resources,
    SenderPipeline,
    TemplateError,
    TransientError,
    local_times,
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


def build_routers(settings: Settings, templates: MessageTemplates) -> list[KafkaRouter]:
    async def on_inapp_dispatch(dispatch: Dispatch, res: Resources) -> str | None:
        return await store_notification(dispatch, res, templates=templates, settings=settings)

    pipeline = SenderPipeline(settings, Channel.inapp, on_inapp_dispatch, ledger=Ledger("inapp"))
    return pipeline.routers()
