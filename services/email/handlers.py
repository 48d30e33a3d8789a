"""Kafka side of the email service: the shared sender pipeline with this channel's ``deliver``."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

from faststream.kafka import KafkaRouter

from shared import (
    Channel, Clock, Dispatch, Erasure, Ledger, PermanentError, Resources, SenderPipeline, Suppressed, TemplateError, erasure_router, ledger_export, mask_email, utcnow,
)

from .compose import EmailTemplates, compose
from .logic import event_data, unsubscribable, unsubscribe_link, unsubscribe_token
from .providers import EmailProvider, make_provider
from .settings import Settings

log = logging.getLogger(__name__)


def unsubscribe_url_for(settings: Settings, dispatch: Dispatch, *, clock: Clock = utcnow) -> str | None:
    """The signed one-click unsubscribe link of a dispatch whose category allows it, valid from ``clock()``."""
    if not unsubscribable(dispatch.category):
        return None
    token = unsubscribe_token(
        secret=settings.unsubscribe_secret.get_secret_value(),
        user_id=dispatch.recipient.user_id,
        category=dispatch.category,
        now=clock(),
        ttl=timedelta(days=settings.unsubscribe_ttl_days),
    )
    return unsubscribe_link(settings.unsubscribe_url, token)


def build_pipeline(settings: Settings, templates: EmailTemplates, *, clock: Clock = utcnow) -> SenderPipeline:
    async def deliver(dispatch: Dispatch, res: Resources) -> str:
        provider: EmailProvider = res.extra["email_provider"]
        if not dispatch.recipient.email:
            raise Suppressed("no_address", "the recipient has no email address")
        unsubscribe = unsubscribe_url_for(settings, dispatch, clock=clock)
        try:
            rendered = templates.render(
                dispatch.template, locale=dispatch.locale, data=event_data(dispatch.event_type, dispatch.data), url=dispatch.url,
                frontend_url=settings.frontend_url, brand=settings.email_brand, timezone=dispatch.timezone, unsubscribe_url=unsubscribe,
            )
        except TemplateError as exc:
            raise PermanentError("template_error", str(exc)) from None
        try:
            email = compose(
                rendered, to=dispatch.recipient.email, sender=settings.email_from, sender_name=settings.email_from_name,
                reply_to=settings.email_reply_to, notification_id=dispatch.notification_id, unsubscribe_url=unsubscribe,
            )
        except ValueError as exc:
            raise PermanentError("invalid_address", f"{mask_email(dispatch.recipient.email)}: {type(exc).__name__}") from None
        return await provider.send(email, idempotency_key=str(dispatch.notification_id))

    return SenderPipeline(
        settings, Channel.email, deliver, ledger=Ledger("email"), max_attempts=settings.email_max_attempts,
        retry_base_seconds=settings.email_retry_base_seconds, retry_cap_seconds=settings.email_retry_cap_seconds, clock=clock,
    )


def build_routers(settings: Settings, templates: EmailTemplates) -> list[KafkaRouter]:
    return [*build_pipeline(settings, templates).routers(), erasure_router(settings, "email", erase, tombstones="email")]


async def export(user_id: str, res: Resources) -> dict[str, Any]:
    """What the email service holds about a user: ledger rows (no address is stored)."""
    async with res.pool.acquire() as conn:
        return await ledger_export(conn, "email", user_id)


async def erase(erasure: Erasure, res: Resources) -> dict[str, int]:
    """The email service keeps no address: only its ledger's error texts (which may quote one) go."""
    async with res.pool.acquire() as conn:
        return {"ledger_errors": await Ledger("email").erase(conn=conn, user_id=erasure.user_id)}


def provider_hook(settings: Settings):  # noqa: ANN201 - a hook factory for create_service
    @contextlib.asynccontextmanager
    async def hook(res: Resources) -> AsyncIterator[None]:
        provider = make_provider(settings)
        res.extra["email_provider"] = provider
        res.extra["provider"] = provider.name
        try:
            yield
        finally:
            await provider.aclose()

    return hook
