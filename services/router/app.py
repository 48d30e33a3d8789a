"""The router service: ``uvicorn --factory services.router.app:create_app``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from datetime import timedelta

from fastapi import FastAPI

from shared import Resources, create_service

from . import repo
from .api import api
from .broadcasts import Broadcasts
from .catalogue import load_catalogue
from .directory import Recipients
from .handlers import build_router
from .routing import BatchRouter, dispatch_producer_for
from .settings import Settings

log = logging.getLogger(__name__)


async def prune_trace_forever(res: Resources, settings: Settings) -> None:
    """Keep the decision trace to its retention period, a bounded slice at a time."""
    while True:
        try:
            async with res.pool.acquire() as conn:
                while await repo.prune_trace(conn=conn, older_than=timedelta(days=settings.trace_retention_days), limit=10_000):
                    await asyncio.sleep(0.1)
        except Exception:  # pruning is housekeeping: log it and try again next time
            log.exception("pruning the decision trace failed")
        await asyncio.sleep(settings.trace_prune_interval_seconds)


def create_app(settings: Settings | None = None) -> FastAPI:
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
    async def trace_retention(res: Resources) -> AsyncIterator[None]:
        task = asyncio.create_task(prune_trace_forever(res, settings))
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    app = create_service(
        settings,
        title="Herald router",
        description="Turns domain events into one dispatch per recipient and channel; keeps recipients, preferences and the decision trace.",
        kafka_routers=[build_router(settings, catalogue)],
        api=api,
        hooks=[recipients, dispatch_producer, broadcasts, trace_retention],
    )
    app.state.catalogue = catalogue
    return app
