"""The push service: ``uvicorn --factory services.push.app:create_app``."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path

from fastapi import FastAPI
from prometheus_client import CollectorRegistry, Counter

from shared import MessageTemplates, Resources, create_service, ledger_purge, retention

from .api import api
from .handlers import build_routers, export
from .providers import WebPushClient, load_vapid
from .settings import Settings

TEMPLATES = Path(__file__).with_name("templates")
log = logging.getLogger(__name__)


class PushMetrics:
    """The push service's own counters, on the app's registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.deliveries = Counter(
            "herald_push_subscription_deliveries_total",
            "Per-subscription push outcomes (sent, already, removed, failed, retry), by reason",
            ["outcome", "reason"],
            registry=registry,
        )
        self.removed = Counter(
            "herald_push_subscriptions_removed_total",
            "Subscriptions removed by the sender: gone (404/410) or too_many_failures",
            ["reason"],
            registry=registry,
        )
        self.shortened = Counter(
            "herald_push_payload_shortened_total", "Push payloads shortened to fit the size limit", registry=registry
        )


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings.load()
    key = settings.vapid_private_key.get_secret_value() if settings.vapid_private_key else None
    vapid, generated = load_vapid(key)

    @contextlib.asynccontextmanager
    async def push_client(res: Resources) -> AsyncIterator[None]:
        if generated:
            log.warning("HERALD_VAPID_PRIVATE_KEY is not set: using a key pair that lives only as long as this process")
        client = WebPushClient(
            vapid=vapid,
            subject=settings.vapid_subject,
            dev_hosts=settings.push_dev_hosts,
            timeout=settings.push_timeout_seconds,
            resolve_timeout=settings.push_resolve_timeout_seconds,
        )
        async with client:
            res.extra["push"] = client
            res.extra["provider"] = "webpush"
            yield

    app = create_service(
        settings,
        title="Herald push",
        description="Web push: browser subscriptions, and delivery of each notification to every subscription of its user.",
        kafka_routers=build_routers(settings, MessageTemplates(TEMPLATES)),
        api=api,
        export=export,
        hooks=[push_client, retention(lambda: [ledger_purge("push", days=settings.ledger_retention_days)])],
    )
    resources: Resources = app.state.resources
    resources.extra["push_metrics"] = PushMetrics(resources.metrics.registry)
    return app
