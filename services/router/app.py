"""The router service: ``uvicorn --factory services.router.app:create_app``."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from fastapi import FastAPI

from shared import Resources, create_service

from .api import api
from .catalogue import load_catalogue
from .directory import Recipients
from .handlers import build_router
from .routing import dispatch_producer_for
from .settings import Settings


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
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

    app = create_service(
        settings,
        title="Herald router",
        description="Turns domain events into one dispatch per recipient and channel; keeps recipients, preferences and the decision trace.",
        kafka_routers=[build_router(settings, catalogue)],
        api=api,
        hooks=[recipients, dispatch_producer],
    )
    app.state.catalogue = catalogue
    return app
