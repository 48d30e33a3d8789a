"""The router service: ``uvicorn --factory services.router.app:create_app``."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from datetime import timedelta

from fastapi import FastAPI

from shared import Purge, Resources, create_service, erasure_router, retention, utcnow
from shared._models import SENDAT_HORIZON

from .api import api
from .broadcasts import Broadcasts
from .catalogue import load_catalogue
from .directory import Recipients
from .handlers import build_router, erase
from .routing import BatchRouter, dispatch_producer_for
from .schedules import Clock, Schedules
from .settings import Settings

log = logging.getLogger(__name__)


def purges(settings: Settings) -> list[Purge]:
    """What the router deletes by age (docs/data.md): the decision trace and finished broadcasts."""
    trace = timedelta(days=settings.trace_retention_days)
    return [
        Purge(
            "router.decisions", "router.decisions",
            # a schedule's trace row stays while the schedule is pending (it can be months ahead)
            "decided_at < now() - $1::interval AND NOT (decision IN ('scheduled', 'held') AND EXISTS "
            "(SELECT 1 FROM router.schedules s WHERE s.trace_id = router.decisions.notification_id AND s.status = 'pending'))",
            trace,
        ),
        Purge("router.deliveries", "router.deliveries", "at < now() - $1::interval", trace),
        Purge("router.broadcasts", "router.broadcasts", "finished_at < now() - $1::interval", timedelta(days=settings.broadcast_retention_days)),
        Purge("router.schedules", "router.schedules", "finished_at < now() - $1::interval", timedelta(days=settings.schedule_retention_days)),
        # a cancellation matters to schedules of older events arriving late: no sendat is further ahead than this
        Purge("router.schedule_cancellations", "router.schedule_cancellations", "cancelled_at < now() - $1::interval", SENDAT_HORIZON * 2),
    ]


def create_app(settings: Settings | None = None, *, clock: Clock = utcnow) -> FastAPI:
    """The router app; ``clock``: the time schedules are planned and released by (tests move it)."""
    settings = settings or Settings.load()
    catalogue = load_catalogue(settings.catalogue_path)

    @contextlib.asynccontextmanager
    async def recipients(res: Resources) -> AsyncIterator[None]:
        res.extra["recipients"] = Recipients(res, ttl_seconds=settings.profile_cache_ttl_seconds)
        yield

    @contextlib.asynccontextmanager
    async def dispatch_producer(res: Resources) -> AsyncIterator[None]:
        async with dispatch_producer_for(settings) as producer:
            res.extra["producer"] = producer
            yield

    @contextlib.asynccontextmanager
    async def broadcasts(res: Resources) -> AsyncIterator[None]:
        walkers = Broadcasts(settings, catalogue, BatchRouter(settings, catalogue))
        res.extra["broadcasts"] = walkers
        walkers.run(res)
        try:
            yield
        finally:
            await walkers.stop()

    @contextlib.asynccontextmanager
    async def scheduler(res: Resources) -> AsyncIterator[None]:
        schedules = Schedules(settings, catalogue, clock=clock)
        res.extra["schedules"] = schedules
        schedules.run(res)
        try:
            yield
        finally:
            await schedules.stop()

    app = create_service(
        settings,
        title="Herald router",
        description="Turns domain events into one dispatch per recipient and channel; keeps recipients, preferences and the decision trace.",
        kafka_routers=[build_router(settings, catalogue), erasure_router(settings, "router", erase)],
        api=api,
        hooks=[recipients, dispatch_producer, scheduler, broadcasts, retention(lambda: purges(settings))],
    )
    app.state.catalogue = catalogue
    return app
