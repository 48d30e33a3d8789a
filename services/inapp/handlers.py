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
)

from . import logic, repo, stream
from .settings import Settings


def build_routers(settings: Settings, templates: MessageTemplates) -> list[KafkaRouter]:
    async def store(dispatch: Dispatch, res: Resources) -> str | None:
        try:
            text = templates.render(dispatch.template, dispatch.locale, dispatch.data)
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
                    data=dispatch.data,
                    created_at=dispatch.created_at,
                )
                unread = await repo.unread_count(conn=conn, user_id=user_id)
        except (asyncpg.PostgresConnectionStatusError, asyncpg.InterfaceError, OSError) as exc:
            raise TransientError("database_unavailable", str(exc)) from None
        if created:
            res.metrics.inbox_operations.labels("stored").inc()
        # Published after the commit, also for a row stored by an earlier attempt whose announcement failed.
        try:
            message = logic.notification_message(row, unread=unread, stored_at=time.time())
            await stream.publish(res.redis, settings.inbox_redis_prefix, user_id, message)
        except (RedisError, OSError) as exc:
            raise TransientError("realtime_unavailable", str(exc)) from None
        return str(dispatch.notification_id)

    pipeline = SenderPipeline(settings, Channel.inapp, store, ledger=Ledger("inapp"))
    return pipeline.routers()
