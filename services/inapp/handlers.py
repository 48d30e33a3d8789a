"""Kafka subscribers of the inapp service: each dispatch becomes one inbox row."""

from __future__ import annotations

from faststream.kafka import KafkaRouter

from shared import Channel, Dispatch, Ledger, MessageTemplates, PermanentError, Resources, SenderPipeline, TemplateError

from . import repo
from .settings import Settings


def build_routers(settings: Settings, templates: MessageTemplates) -> list[KafkaRouter]:
    async def store(dispatch: Dispatch, res: Resources) -> str | None:
        try:
            text = templates.render(dispatch.template, dispatch.locale, dispatch.data)
        except TemplateError as exc:
            raise PermanentError("template_error", str(exc)) from None
        async with res.pool.acquire() as conn:
            await repo.insert(
                conn=conn,
                id=dispatch.notification_id,
                user_id=dispatch.recipient.user_id,
                category=dispatch.category.value,
                type=dispatch.event_type,
                title=text["title"],
                body=text["body"],
                url=dispatch.url,
                data=dispatch.data,
                created_at=dispatch.created_at,
            )
        return str(dispatch.notification_id)

    pipeline = SenderPipeline(settings, Channel.inapp, store, ledger=Ledger("inapp"))
    return pipeline.routers()
