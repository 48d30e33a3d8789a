"""The sms service: ``uvicorn --factory services.sms.app:create_app``.

Consumes ``notify.sms`` (and its priority lane and ``retry.sms``) through the
shared sender pipeline, sends through Twilio, takes Twilio's delivery receipts
and runs phone verification.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

from fastapi import FastAPI

from shared import MessageTemplates, RateLimiter, Resources, create_service, ledger_purge, retention

from . import redaction
from .api import api
from .delivery import SmsDelivery
from .handlers import build_routers, export
from .providers.twilio import TwilioProvider
from .repo import SmsLedger
from .settings import Settings
from .verification import PendingCodes

TEMPLATES = Path(__file__).with_name("templates")


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings.load()
    delivery = SmsDelivery(settings, MessageTemplates(TEMPLATES), SmsLedger())

    @contextlib.asynccontextmanager
    async def sms_resources(res: Resources) -> AsyncIterator[None]:
        provider = TwilioProvider(settings)
        res.extra.update(
            provider=provider.name,
            twilio=provider,
            delivery=delivery,
            limiter=RateLimiter(res.redis_for("ratelimit")),
            codes=PendingCodes(
                res.redis_for("codes"),
                prefix=settings.sms_redis_prefix,
                secret=settings.code_key(),
                ttl=settings.verify_code_ttl_seconds,
            ),
        )
        try:
            yield
        finally:
            await provider.close()

    return create_service(
        settings,
        title="Herald sms",
        description="Sends SMS through Twilio with exact per-user caps, takes delivery receipts, and verifies phone numbers.",
        kafka_routers=build_routers(settings, delivery),
        api=api,
        export=export,
        hooks=[
            sms_resources,
            retention(lambda: [ledger_purge("sms", days=settings.sms_ledger_retention_days)]),
            # also with HERALD_TWILIO_ERASURE=keep: what an earlier setting queued is still worked off (or given up)
            redaction.worker(interval=settings.twilio_erasure_retry_seconds, pause=settings.twilio_erasure_retry_seconds,
                             give_up=timedelta(days=settings.twilio_erasure_give_up_days)),
        ],
    )
